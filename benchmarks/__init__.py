"""Scripts outside the library, run from the repo root as ``python -m benchmarks.PART.SCRIPT``: speed and paper."""
