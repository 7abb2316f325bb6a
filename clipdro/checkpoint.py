"""Atomic checkpoints of everything that defines a run, and finding the one to resume.

A checkpoint is one ``torch.save`` file ``checkpoints/step_000123.pt`` in the run folder.
It is written to a temporary file in the same folder and renamed into place, so a crash
or preemption mid-write never leaves a truncated checkpoint under a real name; the last
``keep_last`` are kept. Only rank 0 writes (the model, TempNets and per-sample tables are
identical on every rank); every rank's RNG state is gathered into it.

The file gets the permissions of any file the user creates (``0o666 & ~umask``, e.g. 0644), not
the 0600 of the temporary file, so a shared group can read a run. A crash mid-write can leave a
temporary ``checkpoints/.step_*.pt.*.tmp`` behind: :func:`remove_stale_temporaries` deletes them.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipdro.errors import UsageError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pt$")
_TEMPORARY = ".step_*.pt.*.tmp"  # save_atomic's mkstemp names for checkpoint files
# What torch.load raises for a file that is not a torch checkpoint (or a damaged one): pickle's
# errors, the zip reader's RuntimeError, truncation, and unpickling classes that do not exist.
_NOT_A_CHECKPOINT = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError,
                     TypeError, AttributeError, ImportError, zipfile.BadZipFile, struct.error)


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
        # mkstemp creates the file 0600; give it the mode open() would have (0666 minus the umask).
        os.fchmod(descriptor, 0o666 & ~_current_umask())
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    """The process umask (reading it means setting it: set 0 and restore at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary checkpoint files (``checkpoints/.step_*.pt.*.tmp``) a crash left in
    ``run_dir`` and return them. Call it only while no process writes checkpoints to the run."""
    removed = []
    for path in sorted((Path(run_dir) / CHECKPOINT_DIR).glob(_TEMPORARY)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    """The payload of a clipdro checkpoint file (a dict with a ``format``). Anything else (a
    text file, a truncated or foreign file) is a :class:`UsageError` naming the file and why."""
    try:
        # Checkpoints hold numpy RNG state and plain Python objects: not weights-only loadable.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except IsADirectoryError:
        raise UsageError(f"{path}: a folder, not a checkpoint file") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read the checkpoint ({error.strerror or error})") from None
    except _NOT_A_CHECKPOINT as error:
        raise UsageError(f"{path}: not a clipdro checkpoint ({_short_reason(error)})") from None
    if not isinstance(state, dict):
        raise UsageError(f"{path}: not a clipdro checkpoint (it holds a {type(state).__name__}, not a dict)")
    if "format" not in state:
        raise UsageError(f"{path}: not a clipdro checkpoint (no 'format' field: weights saved by another tool?)")
    return state


def _short_reason(error: BaseException) -> str:
    """The first line of ``error``'s message, at most 120 characters, with its type."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


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
