"""Checkpoints of everything that defines a run: sharded folders, atomic, and finding the one to resume.

A run checkpoint is a folder ``checkpoints/step_000000123/`` written with
``torch.distributed.checkpoint`` (DCP) by every rank together:

* each per-sample table column (clipdro.state) is one DCP tensor of N rows, every rank writing
  the rows it owns (``__R_0.distcp``), so a checkpoint costs N / W table bytes per rank and a
  restore reads each rank's rows only, at whatever world size it runs: DCP reshards them;
* everything else (model, TempNets, optimizers, the data position, every rank's RNG state, the
  step, the resolved config, ...) is identical on every rank under DDP or gathered, so rank 0
  writes it once, as one ``torch.save`` file in the folder (:data:`RUN_STATE`), read by every rank.

Atomic: the ranks write into ``checkpoints/.step_000000123.tmp`` and rank 0 renames it once DCP
has written its ``.metadata`` (which it does after every rank's files are done), so a crash or a
preemption mid-write never leaves a partial checkpoint under a real name;
:func:`remove_stale_temporaries` deletes what such a crash left. The last ``keep_last`` are kept.
Files and folders get the permissions the user's umask gives (a shared group can read a run).

Single-file checkpoints (``checkpoints/step_000000123.pt``, one ``torch.save`` of the whole
payload, tables whole: what clipdro wrote before) still load everywhere, at any world size.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipdro.errors import UsageError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)(\.pt)?$")
# What crashes leave: save_atomic's mkstemp names (single files), the folders sharded checkpoints are written
# into and the one a rewritten step's previous checkpoint is moved to before it is deleted.
_TEMPORARIES = (".step_*.pt.*.tmp", ".step_*.tmp", ".step_*.old")
RUN_STATE = "run_state.pt"  # rank 0's file in a checkpoint folder: everything but the per-sample tables
_DCP_METADATA = ".metadata"
# What torch.load raises for a file that is not a torch checkpoint (or a damaged one): pickle's
# errors, the zip reader's RuntimeError, truncation, and unpickling classes that do not exist.
_NOT_A_CHECKPOINT = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError,
                     TypeError, AttributeError, ImportError, zipfile.BadZipFile, struct.error)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """The (sharded, folder) checkpoint of ``step`` in ``run_dir``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:09d}"


def is_sharded_checkpoint(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / _DCP_METADATA).is_file()


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, sharded folders and single files alike, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = [(int(match.group(1)), path) for path in folder.glob("step_*") if (match := _NAME.fullmatch(path.name))
             and (is_sharded_checkpoint(path) if match.group(2) is None else path.is_file())]
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
    """Delete the temporary checkpoint files and folders a crash left in ``run_dir``
    (:data:`_TEMPORARIES`) and return them. Call it only while no process writes checkpoints to the run."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    removed = sorted({path for pattern in _TEMPORARIES for path in folder.glob(pattern)})
    for path in removed:
        _remove(path)
    return removed


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """Silences DCP's warning that it saves or loads "in a single process": that is what one process means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def save_sharded_checkpoint(run_state: dict[str, Any] | None, tables: dict[str, torch.Tensor], path: Path) -> None:
    """Write checkpoint folder ``path``: every rank calls this with its ``tables`` (DCP key -> this rank's
    rows with their place in the whole column: clipdro.state.table_shards); ``run_state`` is rank 0's
    (None elsewhere)."""
    import torch.distributed.checkpoint as dcp

    from clipdro.distributed import barrier, get_rank, is_distributed

    temporary = path.parent / f".{path.name}.tmp"
    if get_rank() == 0:
        _remove(temporary)  # a crashed write of the same step
        temporary.mkdir(parents=True)
        save_atomic(run_state, temporary / RUN_STATE)
    barrier()
    with _single_process_quiet():
        dcp.save(tables, storage_writer=dcp.FileSystemWriter(temporary),
                 planner=dcp.DefaultSavePlanner(flatten_state_dict=False), no_dist=not is_distributed())
    if get_rank() == 0:  # DCP returns on rank 0 after its .metadata, which follows every rank's files
        previous = path.parent / f".{path.name}.old"
        if path.exists():  # the same step written again (a run resumed from an earlier checkpoint)
            os.replace(path, previous)
        os.replace(temporary, path)
        _remove(previous)


def resolve_checkpoint(spec: str | Path, run_dir: Path | None = None) -> Path:
    """``latest`` (this run's newest), a run folder (its newest) or a checkpoint (folder or file)."""
    if str(spec) == "latest":
        if run_dir is None:
            raise UsageError("--resume latest needs the run folder (set output_dir and name)")
        spec = run_dir
    path = Path(spec)
    if is_sharded_checkpoint(path):
        return path
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise UsageError(f"no checkpoint in {path / CHECKPOINT_DIR}")
        return found[-1]
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    tables: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The payload of a clipdro checkpoint (a dict with a ``format``), per-sample tables included
    as ``payload[part][key]``. Anything else (a text file, a truncated or foreign file) is a
    :class:`UsageError` naming the path and why.

    For a sharded checkpoint, ``tables`` (DCP key ``part/key`` -> tensor, e.g.
    :func:`clipdro.state.table_shards` of the live parts) are filled in place with the rows they
    hold (a collective: every rank calls it); by default every column is read whole."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        return _load_sharded(path, map_location, tables)
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


def _load_sharded(path: Path, map_location: str | torch.device,
                  tables: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    from clipdro.distributed import is_distributed

    reader = dcp.FileSystemReader(path)
    try:
        entries = reader.read_metadata().state_dict_metadata
    except Exception as error:  # noqa: BLE001 - DCP raises whatever unpickling a damaged file raises
        raise UsageError(f"{path}: not a clipdro checkpoint ({_short_reason(error)})") from None
    if not (path / RUN_STATE).is_file():
        raise UsageError(f"{path}: not a clipdro checkpoint (a torch.distributed.checkpoint without {RUN_STATE})")
    payload = load_checkpoint(path / RUN_STATE, map_location)
    if tables is None:
        tables = {key: torch.empty(entry.size, dtype=entry.properties.dtype) for key, entry in entries.items()
                  if isinstance(entry, dcp.TensorStorageMetadata)}
    missing = sorted(set(tables) - set(entries))
    if missing:
        raise UsageError(f"{path}: the checkpoint has no table {missing[0]!r} (a run of another loss?)")
    if tables:
        with _single_process_quiet():
            dcp.load(tables, storage_reader=reader, planner=dcp.DefaultLoadPlanner(flatten_state_dict=False),
                     no_dist=not is_distributed())
    for key, table in tables.items():
        part, name = key.split("/", 1)
        payload[part][name] = table.to(map_location)
    return payload


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


def save_run_checkpoint(state: dict[str, Any], tables: dict[str, torch.Tensor], *, run_dir: Path, step: int,
                        keep_last: int, config: dict, nonfinite_steps: int) -> Path | None:
    """Every rank calls this (the RNG states are gathered, each rank writes its table rows); rank 0
    adds the fields every run checkpoint has (step, RNG states of all ranks, skipped steps, resolved
    config, package versions) to ``state`` and deletes all but the newest ``keep_last`` (0: none).
    Returns the path on rank 0, None elsewhere."""
    from clipdro.distributed import gather_objects, get_rank
    from clipdro.info import environment_info

    rng_states = gather_objects(rng_state())
    payload = None
    if get_rank() == 0:
        payload = {**state, "step": step, "rng": rng_states, "nonfinite_steps": nonfinite_steps, "config": config,
                   "versions": environment_info()["packages"]}
    path = checkpoint_path(run_dir, step)
    save_sharded_checkpoint(payload, tables, path)
    if get_rank() != 0:
        return None
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            _remove(old)
    return path
