"""Atomic checkpoints of everything that defines a run, and finding the one to resume.

A checkpoint is one ``torch.save`` file ``checkpoints/step_000123.pt`` in the run folder.
It is written to a temporary file in the same folder and renamed into place, so a crash
or preemption mid-write never leaves a truncated checkpoint under a real name; the last
``keep_last`` are kept. Only rank 0 writes (the model, TempNets and per-sample tables are
identical on every rank); every rank's RNG state is gathered into it.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipdro.errors import UsageError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [(int(match.group(1)), path) for path in folder.glob("step_*.pt") if (match := _NAME.search(path.name))]
    return [path for _, path in sorted(found)]


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_checkpoint(payload: dict[str, Any], run_dir: Path, step: int, keep_last: int) -> Path:
    path = checkpoint_path(run_dir, step)
    save_atomic(payload, path)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(spec: str | Path, run_dir: Path | None = None) -> Path:
    """``latest`` (this run's newest), a run folder (its newest) or a checkpoint file."""
    if str(spec) == "latest":
        if run_dir is None:
            raise UsageError("--resume latest needs the run folder (set output_dir and name)")
        spec = run_dir
    path = Path(spec)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UsageError(f"no checkpoint in {path / CHECKPOINT_DIR}")
        return found[-1]
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # Checkpoints hold numpy RNG state and plain Python objects: not weights-only loadable.
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_run_checkpoint(state: dict[str, Any], *, run_dir: Path, step: int, keep_last: int, config: dict,
                        nonfinite_steps: int) -> Path | None:
    """Every rank calls this (the RNG states are gathered); rank 0 adds the fields every run
    checkpoint has (step, RNG states of all ranks, skipped steps, resolved config, package
    versions) to ``state`` and writes it. Returns the path on rank 0, None elsewhere."""
    from clipdro.distributed import gather_objects, get_rank
    from clipdro.info import environment_info

    rng_states = gather_objects(rng_state())
    if get_rank() != 0:
        return None
    payload = {**state, "step": step, "rng": rng_states, "nonfinite_steps": nonfinite_steps, "config": config,
               "versions": environment_info()["packages"]}
    return save_checkpoint(payload, run_dir, step, keep_last)
