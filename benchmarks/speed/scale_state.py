"""Per-sample state at scale: memory, checkpoint and collective traffic of W gloo ranks on keys that reach N.

    python -m benchmarks.speed.scale_state --num-ids 1e6 1e7 1e8 --world-sizes 1 2 4 \
        --output runs/scale_state.json --markdown runs/scale_state.md

For each N, :mod:`benchmarks.speed.scale_shards` writes (once; reused from ``--work-dir``) img2dataset shards
of ``--samples`` real samples whose keys are spread over [0, N), so ``clipdro train`` sizes its per-sample
tables to N rows. For each (N, W) two launches of ``torchrun --standalone --nproc_per_node=...`` run
``clipdro.train.main`` inside this module's worker (``--worker LAUNCH TRAIN_ARGS...``, below):

1. ``train``: W ranks train the tempnet loss for 2 steps and checkpoint at step 2;
2. ``resume``: ``--resume latest`` at ``--resume-world-size`` (``same``: W, ``half``: W // 2, at least 1)
   ranks, then 2 more steps (and the checkpoint of step 4).

The training run (:func:`train_overrides`): the tiny model (``clipdro-tiny-vit``) on the CPU over gloo, fp32,
the tempnet loss with rho 1 (it must stay below log(B - 1)), batch 8 per rank, finite mode in shard order
(``data.shuffle_buffer=1``: no buffer of samples in memory), no loader processes (``data.num_workers=0``, so
each rank's RSS is all of its data path), 8 TempNet prototypes (initialised from the first global batch, which
needs at least that many rows), no random augmentation, one log line per step. Every rank runs with
``OMP_NUM_THREADS=1``.

Measured per (N, W), each rank reporting its own figures in ``RUN/scale_state_{launch}_rank{r}.json``:

* peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the rank process at the end of each launch
  (the resume launch's includes the checkpoint read);
* table bytes: the summed ``nbytes`` of the buffers of every :class:`clipdro.state.SampleTable` in the loss
  (the worker keeps the loss that ``clipdro.train.build_loss`` returns);
* checkpoint bytes per rank: the files of the newest checkpoint after the train launch. A single file
  (``checkpoints/step_N.pt``) counts as written by rank 0; in a checkpoint folder (torch.distributed.checkpoint)
  files named ``__{rank}_*`` are that rank's and every other file is reported as common;
* checkpoint write time: each rank's time in ``RunEngine._checkpoint`` at step 2 (every rank writes its table
  write their own table rows too), and restore time: each rank's time in ``RunEngine._restore``;
* collective bytes per step: every call of torch.distributed's collectives (``PAYLOAD_ARGUMENT``) is counted
  with the bytes of the tensors (pickled size for objects) the calling rank passes in, which is what it
  contributes to the exchange. DDP's gradient all-reduce is routed through its standard all-reduce comm hook so
  that it is seen too. Calls are sorted by the Python stack: ``table`` (made from ``TABLE_FILES``), ``ddp``
  (DDP's gradient buckets and buffer broadcasts) and ``other`` (gathered features, their backward, the loss
  and step flags). A step spans the trainer's step function and the engine's update (backward, optimizer);
  logging, checkpoints and restore are counted apart (``outside_step_bytes``). The table reports the train
  launch's last step (step 1 also gathers the first batch's features for the TempNet prototypes), the
  largest over ranks. One process (W = 1) has no process group and so no collectives.

Computed rows, for N = 3.3 M and 413 M ids at W = 8 and 256, are arithmetic on the measured rows, not
measurements: table bytes per rank ~ N (a + b / W), with a (bytes per id held on every rank) and b (bytes per
id split over the ranks) fitted by least squares to the train launches (this needs two or more world sizes);
collective bytes per step per rank ~ p + q W per category, fitted to the rows with W >= 2 (q = 0 with one such
W), at this benchmark's batch of 8 per rank.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.speed.scale_shards import count_arg, write_scaled_shards
from clipdro.data.manifest import FILENAME

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_STEPS, RESUME_STEPS = 2, 2  # steps of the train launch (checkpoint at its last) and of the resume launch
BATCH_PER_RANK = 8
LAUNCH_TIMEOUT_S = 3600
CATEGORIES = ("table", "ddp", "other")
# Collective -> (position, keyword) of the argument whose bytes the calling rank contributes.
PAYLOAD_ARGUMENT = {
    "all_reduce": (0, "tensor"), "broadcast": (0, "tensor"), "all_gather": (1, "tensor"),
    "all_gather_into_tensor": (1, "input_tensor"), "reduce_scatter_tensor": (1, "input"),
    "reduce_scatter": (1, "input_list"), "all_to_all_single": (1, "input"),
    "all_gather_object": (1, "obj"), "broadcast_object_list": (0, "object_list"), "gather_object": (0, "obj"),
    "_broadcast_coalesced": (1, "tensors"),  # DDP's parameter and buffer broadcasts
}
TABLE_FILES = ("clipdro/state.py",)  # collectives called from (under) these files are table traffic
DDP_FILES = ("torch/nn/parallel/distributed.py", "torch/distributed/algorithms/ddp_comm_hooks/")
COMPUTED_AT = [(3_300_000, 8), (3_300_000, 256), (413_000_000, 8), (413_000_000, 256)]
RESUME_WORLD_SIZES = {"same": lambda world_size: world_size, "half": lambda world_size: max(1, world_size // 2)}


# ----------------------------------------------------------------------------- inside each rank


@dataclass
class Recorder:
    """What the worker's hooks see in one rank during one launch."""

    phase: str = "setup"  # setup, step, between (log, evaluation), checkpoint, restore
    steps: list[Counter] = field(default_factory=list)  # per training step: category -> bytes
    outside_steps: Counter = field(default_factory=Counter)  # "phase/category" -> bytes
    checkpoint_s: dict[str, float] = field(default_factory=dict)  # step -> seconds in RunEngine._checkpoint
    restore_s: float | None = None
    loss: torch.nn.Module | None = None
    run_dir: Path | None = None

    def count(self, nbytes: int) -> None:
        category = collective_category(sys._getframe())
        if self.phase == "step":
            self.steps[-1][category] += nbytes
        else:
            self.outside_steps[f"{self.phase}/{category}"] += nbytes


def collective_category(frame) -> str:
    """``table``, ``ddp`` or ``other``: who, up the Python stack from ``frame``, called the collective."""
    files = []
    while frame is not None:
        files.append(frame.f_code.co_filename.replace(os.sep, "/"))
        frame = frame.f_back
    if any(name.endswith(TABLE_FILES) for name in files):
        return "table"
    if any(marker in name for name in files for marker in DDP_FILES):
        return "ddp"
    return "other"


def payload_bytes(value: Any) -> int:
    """Bytes of a tensor, of a list of tensors, or of any other object pickled."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple) and value and all(isinstance(item, torch.Tensor) for item in value):
        return sum(payload_bytes(item) for item in value)
    return len(pickle.dumps(value))


def _counting(function, argument: tuple[int, str], recorder: Recorder):
    position, keyword = argument

    @functools.wraps(function)
    def counted(*args, **kwargs):
        recorder.count(payload_bytes(kwargs[keyword] if keyword in kwargs else args[position]))
        return function(*args, **kwargs)
    return counted


def _in_phase(method, phase: str, recorder: Recorder, record=None):
    """``method`` run in ``phase`` (then back to "between"); ``record(args, seconds)`` gets its time."""
    @functools.wraps(method)
    def timed(*args, **kwargs):
        recorder.phase, start = phase, time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            if record is not None:
                record(args, time.perf_counter() - start)
            recorder.phase = "between"
    return timed


def install_hooks(recorder: Recorder) -> None:
    """Count collectives, keep the loss, and time checkpoint and restore (see the module docstring)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    import clipdro.train
    from clipdro.engine import RunEngine

    for name, argument in PAYLOAD_ARGUMENT.items():
        setattr(dist, name, _counting(getattr(dist, name), argument, recorder))
    build_loss = clipdro.train.build_loss

    def keep_loss(*args, **kwargs):
        recorder.loss = build_loss(*args, **kwargs)
        return recorder.loss
    clipdro.train.build_loss = keep_loss

    fit, update, wrap = RunEngine.fit, RunEngine._update, RunEngine.wrap

    def counted_fit(engine, job):
        recorder.run_dir, step = engine.run_dir, job.step

        def counted_step(*args):  # a step starts here and ends after the engine's update
            recorder.steps.append(Counter())
            recorder.phase = "step"
            return step(*args)
        job.step = counted_step
        return fit(engine, job)

    def ddp_through_python(engine, module):  # the comm hook's dist.all_reduce is one the counter sees
        wrapped = wrap(engine, module)
        if isinstance(wrapped, DistributedDataParallel):
            wrapped.register_comm_hook(None, allreduce_hook)
        return wrapped

    def record_checkpoint(args, seconds):
        step = str(args[2])
        recorder.checkpoint_s[step] = max(seconds, recorder.checkpoint_s.get(step, 0.0))

    RunEngine.fit, RunEngine.wrap = counted_fit, ddp_through_python
    RunEngine._update = _in_phase(update, "step", recorder)  # the step's backward and optimizer, then its end
    RunEngine._checkpoint = _in_phase(RunEngine._checkpoint, "checkpoint", recorder, record_checkpoint)
    RunEngine._restore = _in_phase(RunEngine._restore, "restore", recorder,
                                   lambda args, seconds: setattr(recorder, "restore_s", seconds))


def table_summary(loss: torch.nn.Module) -> dict[str, dict[str, int]]:
    """{module name: {"rows", "bytes"}} of every SampleTable in ``loss`` (rows: its longest buffer)."""
    from clipdro.state import SampleTable

    return {name: {"rows": max((len(buffer) for buffer in module.buffers() if buffer.dim()), default=0),
                   "bytes": sum(buffer.nbytes for buffer in module.buffers())}
            for name, module in loss.named_modules() if isinstance(module, SampleTable)}


def run_worker(launch: str, train_argv: list[str]) -> int:
    """One rank: ``clipdro train TRAIN_ARGV`` under the hooks, then ``RUN/scale_state_{launch}_rank{r}.json``."""
    import clipdro.train

    recorder = Recorder()
    install_hooks(recorder)
    status = clipdro.train.main(train_argv)
    tables = table_summary(recorder.loss)
    rank = int(os.environ.get("RANK", "0"))
    report = {"launch": launch, "rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")), "status": status,
              "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
              "tables": tables, "table_bytes": sum(table["bytes"] for table in tables.values()),
              "checkpoint_s": recorder.checkpoint_s, "restore_s": recorder.restore_s,
              "steps": [dict(step) for step in recorder.steps], "outside_step_bytes": dict(recorder.outside_steps)}
    (recorder.run_dir / f"scale_state_{launch}_rank{rank}.json").write_text(json.dumps(report, indent=1))
    return status


# ----------------------------------------------------------------------------- the driver


def train_overrides(shards: Path, run_dir: Path, stop_after: int) -> list[str]:
    """The tiny training run of the module docstring, stopping after step ``stop_after``."""
    return ["model.name=clipdro-tiny-vit", "model.train_transform=eval", "run.device=cpu", "run.precision=fp32",
            f"data.sources=[{{shards: {shards}}}]", f"data.batch_size={BATCH_PER_RANK}", "data.num_workers=0",
            "data.resampled=false", "data.shuffle_buffer=1", "loss.name=tempnet", "loss.rho=1.0",
            "tempnet.num_prototypes=8", "run.epochs=1", "run.log_every=1", f"run.checkpoint_every={TRAIN_STEPS}",
            f"run.stop_after={stop_after}", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}"]


def launch(world_size: int, name: str, train_argv: list[str], log_path: Path) -> None:
    """``torchrun`` of ``world_size`` workers running ``clipdro train TRAIN_ARGV``; output in ``log_path``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
               "-m", "benchmarks.speed.scale_state", "--worker", name, *train_argv]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        completed = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   timeout=LAUNCH_TIMEOUT_S)
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} launch of {world_size} rank(s) failed ({completed.returncode}); "
                           f"{log_path} ends:\n{tail}")


def newest_checkpoint(run_dir: Path) -> Path:
    """The newest ``checkpoints/step_N.pt`` file or ``checkpoints/step_N/`` folder of a run."""
    steps = [(int(match.group(1)), path) for path in (run_dir / "checkpoints").iterdir()
             if (match := re.fullmatch(r"step_(\d+)(\.pt)?", path.name))]
    if not steps:
        raise RuntimeError(f"no checkpoint in {run_dir / 'checkpoints'}")
    return max(steps)[1]


def checkpoint_sizes(path: Path, world_size: int) -> dict[str, Any]:
    """Bytes each rank wrote to the checkpoint at ``path``, and those of its common files."""
    if path.is_file():
        size = path.stat().st_size
        return {"path": str(path), "layout": "one file, written by rank 0", "total_bytes": size,
                "per_rank_bytes": [size] + [0] * (world_size - 1), "common_bytes": 0}
    sizes = {file.name: file.stat().st_size for file in path.rglob("*") if file.is_file()}
    per_rank = [sum(size for name, size in sizes.items() if name.startswith(f"__{rank}_"))
                for rank in range(world_size)]
    total = sum(sizes.values())
    return {"path": str(path), "layout": "folder: __RANK_* files per rank, the rest common", "total_bytes": total,
            "per_rank_bytes": per_rank, "common_bytes": total - sum(per_rank)}


def rank_reports(run_dir: Path, name: str, world_size: int) -> list[dict[str, Any]]:
    return [json.loads((run_dir / f"scale_state_{name}_rank{rank}.json").read_text()) for rank in range(world_size)]


def measure(num_ids: int, world_size: int, resume_world_size: int, shards: Path, work_dir: Path) -> dict[str, Any]:
    """The train and resume launches of one (N, W) and what they measured (one row of the JSON)."""
    label = f"n{num_ids}_w{world_size}"
    run_dir = work_dir / "runs" / label
    launch(world_size, "train", [*train_overrides(shards, run_dir, TRAIN_STEPS), "--overwrite"],
           work_dir / "logs" / f"{label}_train.log")
    checkpoint = checkpoint_sizes(newest_checkpoint(run_dir), world_size)
    launch(resume_world_size, "resume", [*train_overrides(shards, run_dir, TRAIN_STEPS + RESUME_STEPS),
                                         "--resume", "latest"], work_dir / "logs" / f"{label}_resume.log")
    train, resume = rank_reports(run_dir, "train", world_size), rank_reports(run_dir, "resume", resume_world_size)
    if len(train[0]["steps"]) != TRAIN_STEPS or len(resume[0]["steps"]) != RESUME_STEPS:
        raise RuntimeError(f"{run_dir}: expected {TRAIN_STEPS} + {RESUME_STEPS} steps, got "
                           f"{len(train[0]['steps'])} + {len(resume[0]['steps'])}")
    return {"num_ids": num_ids, "world_size": world_size, "resume_world_size": resume_world_size,
            "run_dir": str(run_dir),
            "peak_rss_bytes": {"train": [r["peak_rss_bytes"] for r in train],
                               "resume": [r["peak_rss_bytes"] for r in resume]},
            "table_bytes": {"train": [r["table_bytes"] for r in train], "resume": [r["table_bytes"] for r in resume]},
            "tables": {"train": [r["tables"] for r in train], "resume": [r["tables"] for r in resume]},
            "checkpoint": checkpoint,
            "checkpoint_write_s": [r["checkpoint_s"][str(TRAIN_STEPS)] for r in train],
            "restore_s": [r["restore_s"] for r in resume],
            "collective_bytes_per_step": {category: max(r["steps"][-1].get(category, 0) for r in train)
                                          for category in CATEGORIES},
            "step_bytes": {"train": [r["steps"] for r in train], "resume": [r["steps"] for r in resume]},
            "outside_step_bytes": {"train": [r["outside_step_bytes"] for r in train],
                                   "resume": [r["outside_step_bytes"] for r in resume]}}


# ----------------------------------------------------------------------------- computed rows and the table


def fit_table_bytes(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(a, b): table bytes per rank ~ N (a + b / W) over the train launches; None with one world size."""
    if len({row["world_size"] for row in rows}) < 2:
        return None
    design = np.array([[1.0, 1.0 / row["world_size"]] for row in rows])
    per_id = np.array([max(row["table_bytes"]["train"]) / row["num_ids"] for row in rows])
    a, b = np.linalg.lstsq(design, per_id, rcond=None)[0]
    return float(a), float(b)


def fit_step_bytes(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]] | None:
    """{category: (p, q)}: collective bytes per step per rank ~ p + q W over the rows with W >= 2."""
    multi = [row for row in rows if row["world_size"] > 1]
    if not multi:
        return None
    several = len({row["world_size"] for row in multi}) > 1
    design = np.array([[1.0, row["world_size"] if several else 0.0] for row in multi])
    fits = {}
    for category in CATEGORIES:
        measured = np.array([row["collective_bytes_per_step"][category] for row in multi], dtype=float)
        p, q = np.linalg.lstsq(design, measured, rcond=None)[0]
        fits[category] = (float(p), float(q))
    return fits


def computed_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows at ``COMPUTED_AT`` from the fits above, and the fits themselves (computed, not measured)."""
    table, steps = fit_table_bytes(rows), fit_step_bytes(rows)
    computed = [{"num_ids": num_ids, "world_size": world_size, "computed": True,
                 "table_bytes_per_rank": None if table is None else round(num_ids * (table[0] + table[1] / world_size)),
                 "collective_bytes_per_step": None if steps is None else
                 {category: round(p + q * world_size) for category, (p, q) in steps.items()}}
                for num_ids, world_size in COMPUTED_AT]
    basis = {"table_bytes_per_id": None if table is None else {"on_every_rank": table[0], "split_over_ranks": table[1]},
             "collective_bytes_per_step": None if steps is None else
             {category: {"constant": p, "per_rank_in_world": q} for category, (p, q) in steps.items()},
             "batch_per_rank": BATCH_PER_RANK}
    return {"rows": computed, "basis": basis}


def _number(value: float) -> str:
    """4 significant digits below 1000, whole numbers with thousands separators above."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"


def _mib(nbytes: float) -> str:
    return _number(nbytes / 2**20)


def _ids(count: int) -> str:
    """1e+04 -> 1e4, 4.13e+08 -> 4.13e8."""
    mantissa, _, exponent = f"{count:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def _per_step(bytes_by_category: dict[str, float] | None) -> str:
    if bytes_by_category is None:
        return "n/a"
    return " / ".join(_number(bytes_by_category[category] / 2**10) for category in CATEGORIES)


def _measured_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"## Measured (gloo on the CPU, clipdro-tiny-vit, tempnet loss, batch {BATCH_PER_RANK} per rank)", "",
             "| N ids | W | peak RSS per rank, MiB (train / resume at W') | W' | tables per rank, MiB | checkpoint "
             "per rank, MiB (max; common) | checkpoint write, s | restore, s | collectives per step per rank, "
             "KiB (table / DDP / other) |", "|" + "---|" * 9]
    for row in rows:
        checkpoint = row["checkpoint"]
        lines.append(f"| {_ids(row['num_ids'])} | {row['world_size']} | {_mib(max(row['peak_rss_bytes']['train']))} / "
                     f"{_mib(max(row['peak_rss_bytes']['resume']))} | {row['resume_world_size']} | "
                     f"{_mib(max(row['table_bytes']['train']))} | {_mib(max(checkpoint['per_rank_bytes']))}; "
                     f"{_mib(checkpoint['common_bytes'])} | {max(row['checkpoint_write_s']):.2f} | "
                     f"{max(row['restore_s']):.2f} | {_per_step(row['collective_bytes_per_step'])} |")
    layouts = sorted({row["checkpoint"]["layout"] for row in rows if "layout" in row["checkpoint"]})
    lines += ["", "Each figure is the largest over ranks. Peak RSS includes what every rank holds whatever N is "
              "(torch, open_clip, the model and its optimizer): compare rows of one W across N for the tables' share. "
              "W = 1 runs one process, without collectives. Checkpoint layout: " + ("; ".join(layouts) or "n/a") + "."]
    return lines


def _computed_lines(computed: dict[str, Any]) -> list[str]:
    lines = ["## Computed, not measured (arithmetic on the measured rows)", "",
             "| N ids | W | tables per rank, MiB | collectives per step per rank, KiB (table / DDP / other) |",
             "|---|---|---|---|"]
    for row in computed["rows"]:
        table = "n/a" if row["table_bytes_per_rank"] is None else _mib(row["table_bytes_per_rank"])
        lines.append(f"| {_ids(row['num_ids'])} | {row['world_size']} | {table} | "
                     f"{_per_step(row['collective_bytes_per_step'])} |")
    basis = computed["basis"]
    lines.append("")
    if basis["table_bytes_per_id"] is None:
        lines.append("Tables: not computed (the fit needs measurements at two or more world sizes).")
    else:
        lines.append(f"Tables per rank = N x ({basis['table_bytes_per_id']['on_every_rank']:.3f} bytes per id on every "
                     f"rank + {basis['table_bytes_per_id']['split_over_ranks']:.3f} bytes per id / W), fitted to the "
                     "train launches.")
    if basis["collective_bytes_per_step"] is None:
        lines.append("Collectives: not computed (no measurement with W >= 2).")
    else:
        terms = "; ".join(f"{category} {fit['constant']:.0f} + {fit['per_rank_in_world']:.0f} W bytes"
                          for category, fit in basis["collective_bytes_per_step"].items())
        lines.append(f"Collectives per step per rank: {terms} (fitted to the rows with W >= 2, batch "
                     f"{basis['batch_per_rank']} per rank).")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The measured table, the computed one and how the latter was computed."""
    return "\n".join([*_measured_lines(result["measured"]), "", *_computed_lines(result["computed"])]) + "\n"


def shards_for(num_ids: int, args: argparse.Namespace) -> Path:
    """The generated shards for ``num_ids`` in the work folder, written on first use."""
    folder = args.work_dir / "shards" / f"n{num_ids}_s{args.samples}_k{args.shards}"
    if not (folder / FILENAME).exists():  # the manifest comes last: without it, an interrupted write
        shutil.rmtree(folder, ignore_errors=True)
        write_scaled_shards(args.source, folder, num_ids, args.samples, args.shards)
    return folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-ids", type=count_arg, nargs="+", required=True, help="N values, e.g. 1e6 1e7 1e8")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2, 4], help="W values (gloo ranks)")
    parser.add_argument("--resume-world-size", choices=sorted(RESUME_WORLD_SIZES), default="same",
                        help="ranks of the resume launch: same (W) or half (W // 2, at least 1)")
    parser.add_argument("--output", type=Path, required=True, help="JSON of every measurement")
    parser.add_argument("--markdown", type=Path, help="also write the tables as markdown here")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/scale_state_work"),
                        help="generated shards (kept and reused), run folders and launch logs")
    parser.add_argument("--source", type=Path, default=Path("data/openclipart/train"),
                        help="shards whose samples are copied (default: %(default)s)")
    parser.add_argument("--samples", type=count_arg, default=2048, help="samples in the generated shards")
    parser.add_argument("--shards", type=count_arg, default=4, help="tar files of the generated shards")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # inside torchrun: --worker LAUNCH TRAIN_ARGS...
        return run_worker(argv[1], argv[2:])
    args = _parser().parse_args(argv)
    args.work_dir, args.source = args.work_dir.resolve(), args.source.resolve()
    result = {"settings": {"command": " ".join(["python -m benchmarks.speed.scale_state", *argv]),
                           "samples": args.samples, "shards": args.shards, "train_steps": TRAIN_STEPS,
                           "resume_steps": RESUME_STEPS, "batch_per_rank": BATCH_PER_RANK,
                           "train_overrides": train_overrides(Path("SHARDS"), Path("RUN"), TRAIN_STEPS)},
              "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()},
              "measured": []}
    for num_ids in args.num_ids:
        shards = shards_for(num_ids, args)
        for world_size in args.world_sizes:
            resume_world_size = RESUME_WORLD_SIZES[args.resume_world_size](world_size)
            row = measure(num_ids, world_size, resume_world_size, shards, args.work_dir)
            result["measured"].append(row)
            result["computed"] = computed_rows(result["measured"])
            print(f"N {num_ids} W {world_size} -> {resume_world_size}: peak RSS per rank "
                  f"{_mib(max(row['peak_rss_bytes']['train']))} MiB, tables per rank "
                  f"{_mib(max(row['table_bytes']['train']))} MiB, checkpoint write "
                  f"{max(row['checkpoint_write_s']):.2f} s, restore {max(row['restore_s']):.2f} s", flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(result, indent=1) + "\n")  # after every row: partial results stay
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
