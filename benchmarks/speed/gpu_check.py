"""The GPU check: one command that measures and verifies, on a CUDA machine, what the CPU suite cannot.

    make gpu-check GPU_CHECK_OUT=runs/gpu-check                  # = the line below
    python -m benchmarks.speed.gpu_check --wheels wheels/py312 --out runs/gpu-check [--parts nccl precision]
    python -m benchmarks.speed.gpu_check --help

GPU time comes rarely and for minutes, so everything is prepared here and the whole check is bounded
by ``--time-budget`` (default 420 s, installs included). Order of events:

1. CUDA first: without a usable CUDA device the script prints one line on stderr and exits 2, before
   it installs or writes anything (the CPU suite tests this).
2. Installs (``--wheels DIR``, made by ``make gpu-wheels``): every wheel in DIR whose distribution this
   Python lacks is installed with ``pip install --no-deps --no-index --target SITE`` (or unpacked when
   pip is absent) into a private folder on PYTHONPATH, over the machine's own torch; distributions the
   machine has (its torch, timm, transformers and what they need) are never replaced. clipdro runs
   from this source tree (PYTHONPATH), so nothing is built offline.
3. The parts (``--parts``, default all), each a function returning a dict, run cheapest first (nccl,
   precision, faiss, throughput) so a part that overruns cannot cost the others; a part that would
   start with too little of the budget left is skipped with that reason. ``gpu_check.json`` and
   ``gpu_check.md`` in ``--out`` are rewritten after every part, so a killed run leaves what it had.

The parts:

* ``throughput``: benchmarks/speed/train_throughput.py's three trainers (``clipdro train`` with the
  tempnet loss and with the clip loss, open_clip's own trainer) at ViT-B-32, batch 256, amp_bf16 on the
  embedded shards: steady-state samples/s, data-wait share and peak allocated CUDA memory (clipdro logs
  it; for open_clip, whose log has none, the launcher prints torch.cuda.max_memory_allocated() at exit),
  ``--repeats`` round-robin passes (default 1, for the budget). open_clip's trainer needs webdataset
  0.2.86 (``KeyError: 'fname'`` on later ones): it runs through a small launcher script that puts that
  wheel, unpacked, first on its PYTHONPATH.
* ``nccl``: ``torchrun --nproc_per_node=<every GPU>`` of this module's worker with the NCCL backend: a
  small two-tower model with clipdro's two CLIPTempNets (dropout 0) under DistributedDataParallel and
  clipdro's tempnet (DRO) loss with its per-sample tables, SGD with momentum, ``--nccl-steps`` steps on
  32 rows per rank of a seeded global batch (sample ids revisit the tables across steps). Afterwards
  every rank's parameters and DRO tables (s, b, seen) must equal rank 0's exactly, and rank 0's must
  match a single-process float64 recomputation of the same steps on the whole global batch on the CPU
  (the loss math, the tables and the updates), within NCCL_TOLERANCES. With one GPU the world size is 1:
  the process group and DDP's collectives are NCCL, but clipdro's loss gathers nothing.
* ``faiss``: retrieval on ``--faiss-captions`` random captions (5 per image, 512-d) with FAISS's GPU
  index and its CPU index: both rank lists, the recalls (must be equal) and the search times. faiss is
  not among the wheels brought (faiss-cpu's wheel alone is 66 MB, faiss-gpu's needs 1.6 GB of CUDA 12
  libraries, the tree may carry 64 MiB), so on the lent machine this part records FAISS_NOT_BROUGHT.
* ``precision``: the same model, initial weights and 5 batches trained in fp32 (TF32 off) and in
  amp_bf16, for the tempnet and the clip loss: the per-step losses and mean temperatures, and their
  relative differences (the first step compares the forward passes alone; later ones the updates too),
  which must stay within ``--precision-rtol``.

Outputs (``--out``, default runs/gpu-check-TIMESTAMP): ``gpu_check.json`` (the command, machine, GPUs,
versions, what was installed, and one object per part with ``status`` passed / failed / measured /
skipped / error, ``summary``, ``seconds`` and its figures) and ``gpu_check.md`` (a table of the parts,
then each part's details). Training runs (several GB of checkpoints) go to ``--work-dir``, never to
``--out``. Exit status: 0 when no part failed or errored, 1 otherwise, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTS = ("throughput", "nccl", "faiss", "precision")
RUN_ORDER = ("nccl", "precision", "faiss", "throughput")  # shortest first: throughput takes what is left
NO_CUDA_EXIT = 2
JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"
OPEN_CLIP_TRAIN_WHEELS = "open_clip_train"  # subfolder of --wheels: webdataset 0.2.86, for open_clip's trainer only
FAISS_NOT_BROUGHT = "GPU FAISS not measured: no wheel within the 64 MiB budget"
# Seconds a part needs at least to be started (else: skipped, "budget"); the throughput runs get what is left.
MIN_SECONDS = {"nccl": 45, "precision": 45, "faiss": 30, "throughput": 90}
STATUSES = ("passed", "failed", "measured", "skipped", "error")
# --cpu-rehearsal: the whole check on the CPU, to prove the install and every part's code path on a machine like
# the GPU one without its GPU (docs/performance.md#gpu). Defaults sized for 2 cores; explicit arguments still win.
REHEARSAL_DEFAULTS = {"model": "clipdro-tiny-vit", "batch_size": 32, "workers": 2, "threads": 1, "steps": 24,
                      "warmup_steps": 12, "log_every": 4, "precision_batch": 32, "faiss_captions": 5_000,
                      "time_budget": 900.0}
REHEARSAL_NCCL_RANKS = 2  # gloo processes standing in for the GPUs

# nccl part: rows per rank, toy model sizes, optimiser, loss settings (rho < log(32 - 1) = 3.43).
NCCL_ROWS_PER_RANK = 32
NCCL_INPUT_DIM, NCCL_EMBED_DIM, NCCL_PROTOTYPES = 48, 32, 16
NCCL_LR, NCCL_MOMENTUM, NCCL_RHO, NCCL_GAMMA = 0.05, 0.9, 2.0, 0.8
# |a - b| <= atol + rtol * |b| elementwise, GPU float32 (TF32 off) against CPU float64. Across ranks: exact.
NCCL_TOLERANCES = {"params": (1e-5, 1e-4), "s": (1e-6, 1e-3), "b": (1e-5, 1e-4), "loss": (1e-5, 1e-4)}


# ------------------------------------------------------------------------------ arguments and start-up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), metavar="PART",
                        help=f"which parts to run ({', '.join(PARTS)}; default all)")
    parser.add_argument("--out", type=Path, help="gpu_check.json and gpu_check.md go here "
                                                 "(default runs/gpu-check-TIMESTAMP)")
    parser.add_argument("--work-dir", type=Path, help="training runs, logs, the private site folder "
                                                      "(default runs/gpu-check-work-TIMESTAMP)")
    parser.add_argument("--wheels", type=Path, help="folder of wheels (make gpu-wheels): install those whose "
                                                    "distribution is missing, without dependencies")
    parser.add_argument("--time-budget", type=float, default=420.0, help="seconds for the whole check (default 420)")
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="run on the CPU anyway (gloo for nccl, CPU autocast for bf16, small throughput runs): "
                             "proves the install and the code paths, measures nothing about GPUs")
    throughput = parser.add_argument_group("throughput")
    throughput.add_argument("--model", default="ViT-B-32")
    throughput.add_argument("--batch-size", type=int, default=256)
    throughput.add_argument("--precision", default="amp_bf16", choices=["fp32", "amp_bf16"])
    throughput.add_argument("--shards", type=Path, default=REPO_ROOT / "data" / "openclipart" / "train")
    throughput.add_argument("--workers", type=int, default=12, help="data-loader workers per trainer")
    throughput.add_argument("--threads", type=int, default=4, help="torch threads per trainer")
    throughput.add_argument("--steps", type=int, default=120, help="steps per run (a multiple of --workers)")
    throughput.add_argument("--warmup-steps", type=int, default=36)
    throughput.add_argument("--log-every", type=int, default=12)
    throughput.add_argument("--repeats", type=int, default=1)
    others = parser.add_argument_group("nccl, faiss, precision")
    others.add_argument("--nccl-steps", type=int, default=6)
    others.add_argument("--faiss-captions", type=int, default=100_000, help="5 captions per image")
    others.add_argument("--precision-steps", type=int, default=5)
    others.add_argument("--precision-batch", type=int, default=256)
    others.add_argument("--precision-rtol", type=float, default=0.05,
                        help="largest accepted |loss_bf16 - loss_fp32| / |loss_fp32| over the steps")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    if argv is not None and "--cpu-rehearsal" in argv:
        parser.set_defaults(**REHEARSAL_DEFAULTS)
    args = parser.parse_args(argv)
    args.parts = list(dict.fromkeys(args.parts))
    if args.steps % max(1, args.workers) or args.steps <= args.warmup_steps:
        parser.error("--steps must be a multiple of --workers and larger than --warmup-steps")
    if min(args.repeats, args.nccl_steps, args.precision_steps, args.precision_batch, args.batch_size) < 1:
        parser.error("--repeats, --nccl-steps, --precision-steps and the batch sizes must be >= 1")
    if args.faiss_captions < 5:
        parser.error("--faiss-captions must be >= 5")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out = args.out or REPO_ROOT / "runs" / f"gpu-check-{stamp}"
    args.work_dir = args.work_dir or REPO_ROOT / "runs" / f"gpu-check-work-{stamp}"
    return args


def cuda_refusal() -> str | None:
    """None on a machine with a usable CUDA device, else the one line to print."""
    try:
        import torch
    except ImportError as error:
        return f"gpu_check: torch cannot be imported ({error}); run this on the GPU machine (docs/performance.md#gpu)"
    with warnings.catch_warnings():  # the refusal is one line: no CUDA-initialisation warning on stderr
        warnings.simplefilter("ignore")
        usable = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if not usable:
        return (f"gpu_check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); "
                "run it on the GPU machine (docs/performance.md#gpu)")
    return None


# ------------------------------------------------------------------------------ wheels


def wheel_distribution(path: Path) -> tuple[str, str]:
    """(distribution name, version) from a wheel's file name, e.g. ('open_clip_torch', '3.3.0')."""
    parts = path.name.split("-")
    if not path.name.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"not a wheel file name: {path.name}")
    return parts[0], parts[1]


def distribution_installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def wheels_to_install(wheel_dir: Path, installed: Callable[[str], bool] = distribution_installed) -> list[Path]:
    """The wheels directly in ``wheel_dir`` (not its subfolders) whose distribution is not installed."""
    return [path for path in sorted(wheel_dir.glob("*.whl")) if not installed(wheel_distribution(path)[0])]


def unpack_wheels(wheels: Sequence[Path], target: Path) -> None:
    """What ``pip install --no-deps --target`` does for wheels without a .data folder (all of ours)."""
    target.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if any(name.split("/", 1)[0].endswith(".data") for name in archive.namelist()):
                raise ValueError(f"{wheel.name} has a .data folder: install it with pip")
            archive.extractall(target)


def install_wheels(wheels: Sequence[Path], site: Path) -> str:
    """Install ``wheels`` into the folder ``site`` without dependencies; returns how (pip or unpacked)."""
    if not wheels:
        return "nothing to install"
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                   "--no-index", "--target", str(site), *map(str, wheels)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode == 0:
            return "pip install --no-deps --no-index --target"
        print(f"pip failed ({completed.returncode}), unpacking instead:\n{completed.stderr[-2000:]}", file=sys.stderr)
    unpack_wheels(wheels, site)
    return "unpacked (no working pip)"


def activate_site(site: Path) -> None:
    """Make ``site`` importable here and in every child process (after this tree)."""
    entries = [str(REPO_ROOT), str(site)]
    for entry in entries:
        if entry not in sys.path:
            sys.path.append(entry)
    current = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*entries, *current]))
    importlib.invalidate_caches()


# ------------------------------------------------------------------------------ the run context and reports


@dataclass
class Context:
    """What every part may use: folders, the deadline, what was installed."""

    out: Path
    work_dir: Path
    deadline: float  # time.monotonic() value
    wheels: Path | None = None
    notes: dict = field(default_factory=dict)
    device: str = "cuda"  # "cpu" in a --cpu-rehearsal

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def part_result(status: str, summary: str, **details) -> dict:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    return {"status": status, "summary": summary, **details}


def run_part(name: str, function: Callable[[argparse.Namespace, Context], dict], args: argparse.Namespace,
             context: Context) -> dict:
    """One part, timed; skipped when the budget cannot fit it, an error (with the traceback) when it raises."""
    if context.remaining() < MIN_SECONDS[name]:
        return part_result("skipped", f"not started: {context.remaining():.0f} s of the time budget left, "
                                      f"{MIN_SECONDS[name]} s needed", seconds=0.0)
    started = time.perf_counter()
    try:
        result = function(args, context)
    except Exception as error:  # a part's failure must not cost the others
        result = part_result("error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                             traceback=traceback.format_exc()[-4000:])
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown_report(report: dict) -> str:
    """gpu_check.md: where and when it ran, one row per part, then each part's details."""
    environment = report.get("environment", {})
    gpus = environment.get("gpus") or []
    gpu_text = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU"
    lines = [
        "# GPU check" + (" (CPU rehearsal: no GPU figures)" if report.get("cpu_rehearsal") else ""),
        "",
        f"- command: `{report.get('command', '')}`",
        f"- started {report.get('started', '?')}, finished {report.get('finished', 'not yet (partial report)')}",
        f"- {gpu_text}; torch {environment.get('torch', '?')}, CUDA {environment.get('cuda', '?')}, "
        f"NCCL {environment.get('nccl', '?')}, Python {environment.get('python', '?')}",
        "",
        "| part | status | result | seconds |",
        "|---|---|---|---:|",
    ]
    parts = report.get("parts", {})
    for name, result in parts.items():
        summary = str(result.get("summary", "")).replace("|", "\\|").replace("\n", " ")
        seconds = result.get("seconds")
        lines.append(f"| {name} | {result.get('status', '?')} | {summary} | "
                     f"{'' if seconds is None else f'{seconds:.1f}'} |")
    for name, result in parts.items():
        details = result.get("table_md")
        if details:
            lines += ["", f"## {name}", "", details.rstrip("\n")]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> tuple[Path, Path]:
    """Write gpu_check.json and gpu_check.md into ``out`` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out / JSON_NAME, out / MARKDOWN_NAME
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    markdown_path.write_text(markdown_report(report), encoding="utf-8")
    return json_path, markdown_path


def exit_status(report: dict) -> int:
    return 1 if any(result.get("status") in ("failed", "error") for result in report.get("parts", {}).values()) else 0


def environment_report(installed: list[str], install_method: str) -> dict:
    import torch

    from clipdro.info import PACKAGES

    versions = {}
    for name in (*PACKAGES, "regex", "ftfy", "wcwidth", "braceexpand", "safetensors", "huggingface-hub"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": nccl,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "gpu_memory_gib": [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)
                           for i in range(torch.cuda.device_count())],
        "bf16_supported": torch.cuda.is_bf16_supported(),
        # DataLoader workers pass batches through /dev/shm (a 224 px batch of 256 is 154 MB): a small one fails them.
        "dev_shm_gib": round(shutil.disk_usage("/dev/shm").total / 2**30, 2) if Path("/dev/shm").is_dir() else None,
        "packages": versions,
        "installed_from_wheels": installed,
        "install_method": install_method,
    }


# ------------------------------------------------------------------------------ part: throughput


# Run by the launcher instead of ``python -m MODULE ARGS``: the module, then open_clip's peak CUDA memory (its
# log has none) as one console line that open_clip_peak_memory reads back.
PEAK_MEMORY_TAG = "gpu_check open_clip peak_memory_gib="
LAUNCH_WITH_PEAK = f"""import atexit, runpy, sys
def report_peak():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print("{PEAK_MEMORY_TAG}%.4f" % (torch.cuda.max_memory_allocated() / 2**30), flush=True)
atexit.register(report_peak)
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def open_clip_launcher(wheel_dir: Path | None, work_dir: Path) -> Path | None:
    """A python launcher for open_clip's trainer: webdataset 0.2.86 (unpacked from ``wheel_dir``'s
    open_clip_train/ subfolder) first on PYTHONPATH, and ``-m MODULE`` runs that also print the peak
    CUDA memory at exit; None when that wheel is not there."""
    wheels = sorted((wheel_dir / OPEN_CLIP_TRAIN_WHEELS).glob("*.whl")) if wheel_dir else []
    if not wheels:
        return None
    overlay = work_dir / "open_clip_train_site"
    unpack_wheels(wheels, overlay)
    launcher = work_dir / "python-open-clip-train"
    python = shlex.quote(sys.executable)
    launcher.write_text("\n".join([
        "#!/bin/sh",
        f"export PYTHONPATH={shlex.quote(str(overlay))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f'if [ "$1" = "-m" ]; then exec {python} -c {shlex.quote(LAUNCH_WITH_PEAK)} "$@"; fi',
        f'exec {python} "$@"', ""]))
    launcher.chmod(0o755)
    return launcher


def open_clip_peak_memory(console: Path) -> float | None:
    """The peak CUDA memory (GiB) the launcher printed at the end of an open_clip run; None if it did not."""
    if not console.is_file():
        return None
    peaks = [float(line.split(PEAK_MEMORY_TAG, 1)[1]) for line in console.read_text(errors="replace").splitlines()
             if PEAK_MEMORY_TAG in line]
    return peaks[-1] if peaks else None


def throughput_part(args: argparse.Namespace, context: Context) -> dict:
    from dataclasses import asdict

    from benchmarks.speed import train_throughput as tt

    if not (args.shards / "manifest.json").is_file():
        return part_result("error", f"{args.shards} has no manifest.json")
    work = context.work_dir / "throughput"
    work.mkdir(parents=True, exist_ok=True)
    settings = tt.Settings(shards=args.shards.resolve(), model=args.model, batch_size=args.batch_size,
                           workers=args.workers, threads=args.threads, steps=args.steps,
                           warmup_steps=args.warmup_steps, log_every=args.log_every, device=context.device,
                           precision=args.precision, work_dir=work)
    env = tt.child_environment(settings.threads)
    launcher = open_clip_launcher(context.wheels, work)
    trainers = [trainer for trainer in tt.TRAINERS if trainer != "open_clip" or launcher is not None]
    environments = {"clipdro": tt.probe_environment(Path(sys.executable), env)}
    notes = [] if launcher else [f"open_clip's trainer not run: no webdataset wheel in "
                                 f"{context.wheels}/{OPEN_CLIP_TRAIN_WHEELS}"]
    if launcher is not None:
        try:
            environments["open_clip"] = tt.probe_environment(launcher, env)
            found = environments["open_clip"]["webdataset"]
            problem = None if found == tt.WEBDATASET_FOR_OPEN_CLIP else f"it imports webdataset {found}"
        except RuntimeError as error:
            problem = f"its interpreter fails: {str(error)[-500:]}"
        if problem:
            notes.append(f"open_clip's trainer not run: {problem}")
            trainers.remove("open_clip")

    results: dict[str, list] = {trainer: [] for trainer in trainers}
    runs: dict[str, list[dict]] = {trainer: [] for trainer in trainers}
    for repeat in range(args.repeats):
        for trainer in trainers:
            left = context.remaining() - 10
            if left < MIN_SECONDS["throughput"] * 0.6:
                notes.append(f"{trainer} run {repeat} not started: {context.remaining():.0f} s of the budget left")
                continue
            run_dir = work / f"{trainer}-{repeat}"
            try:
                windows, wall_s = tt.run_trainer(trainer, settings, launcher, env, run_dir, timeout=left)
                measured = tt.steady_state(windows, settings.warmup_steps, settings.batch_size)
            except (RuntimeError, ValueError) as error:
                console = tt.console_path(run_dir)
                tail = console.read_text(errors="replace")[-3000:] if console.is_file() else ""
                runs[trainer].append({"repeat": repeat, "error": str(error), "console_tail": tail})
                notes.append(f"{trainer} run {repeat} failed: {str(error).splitlines()[0]}")
                continue
            results[trainer].append(measured)
            record = {"repeat": repeat, "run_dir": str(run_dir), "process_wall_s": round(wall_s, 2), **asdict(measured)}
            record["peak_memory_gib"] = (open_clip_peak_memory(tt.console_path(run_dir)) if trainer == "open_clip"
                                         else tt.clipdro_peak_memory(run_dir))
            runs[trainer].append(record)

    summary = {trainer: tt.summarise(found) for trainer, found in results.items() if found}
    ratios = {}
    if {"tempnet", "clip"} <= set(summary):
        ratios["tempnet_overhead"] = summary["clip"].samples_per_s / summary["tempnet"].samples_per_s - 1.0
    if {"tempnet", "clip", "open_clip"} <= set(summary):
        ratios = tt.throughput_ratios(tempnet=summary["tempnet"].samples_per_s, clip=summary["clip"].samples_per_s,
                                      open_clip=summary["open_clip"].samples_per_s)
    peaks = {trainer: max(record["peak_memory_gib"] for record in runs[trainer]
                          if record.get("peak_memory_gib") is not None)
             for trainer in summary if any(record.get("peak_memory_gib") is not None for record in runs[trainer])}
    table = tt.markdown_table(summary, ratios, peaks) if summary else ""
    setting_line = (f"{args.model}, batch {args.batch_size}, {args.precision}, {args.workers} loader workers and "
                    f"{args.threads} threads per trainer, {args.steps} steps ({args.warmup_steps} warm-up), "
                    f"log every {args.log_every}, {args.repeats} repeat(s), embedded shards (64 px, upscaled)")
    figures = ", ".join(f"{trainer} {result.samples_per_s:.0f}/s" + (f" {peaks[trainer]:.1f} GiB" if trainer in peaks
                                                                        else "")
                        for trainer, result in summary.items())
    status = "measured" if summary else "error"  # notes say which runs are missing
    return part_result(
        status, (figures or "no run completed") + ("; " + "; ".join(notes) if notes else ""),
        settings=setting_line, environments=environments, runs=runs,
        summary_per_trainer={trainer: asdict(result) for trainer, result in summary.items()},
        ratios=ratios, targets_met=tt.targets_met(ratios) if "ours_vs_open_clip" in ratios else None,
        peak_memory_gib=peaks, notes=notes,
        table_md=f"Settings: {setting_line}.\n\n{table}" + "".join(f"\n- {note}" for note in notes))


# ------------------------------------------------------------------------------ part: nccl


def build_toy_model():
    """Two linear towers (normalised outputs) and clipdro's two CLIPTempNets (dropout 0), seeded by the caller."""
    import torch.nn.functional as F
    from torch import nn

    from clipdro.tempnet import CLIPTempNet

    class ToyCLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Linear(NCCL_INPUT_DIM, NCCL_EMBED_DIM)
            self.text = nn.Linear(NCCL_INPUT_DIM, NCCL_EMBED_DIM)
            self.image_tempnet = CLIPTempNet(NCCL_EMBED_DIM, NCCL_PROTOTYPES, dropout=0.0)
            self.text_tempnet = CLIPTempNet(NCCL_EMBED_DIM, NCCL_PROTOTYPES, dropout=0.0)

        def forward(self, image_in, text_in):
            image = F.normalize(self.image(image_in), dim=-1)
            text = F.normalize(self.text(text_in), dim=-1)
            return image, text, self.image_tempnet(image.detach()), self.text_tempnet(text.detach())

    return ToyCLIP()


def toy_batch(step: int, global_batch: int):
    """The seeded global batch of ``step``: (image inputs, text inputs, sample ids), float64 on the CPU."""
    import torch

    num_samples = 4 * global_batch
    mix = torch.randn(NCCL_INPUT_DIM, NCCL_INPUT_DIM, generator=torch.Generator().manual_seed(999),
                      dtype=torch.float64) / NCCL_INPUT_DIM ** 0.5
    generator = torch.Generator().manual_seed(1000 + step)
    image_in = torch.randn(global_batch, NCCL_INPUT_DIM, generator=generator, dtype=torch.float64)
    text_in = image_in @ mix + 0.5 * torch.randn(global_batch, NCCL_INPUT_DIM, generator=generator,
                                                 dtype=torch.float64)
    ids = torch.randperm(num_samples, generator=generator)[:global_batch]
    return image_in, text_in, ids


def train_toy(forward, parameters, loss_fn, rows: slice, steps: int, global_batch: int, device, dtype) -> list:
    """``steps`` SGD steps of the DRO loss on ``rows`` of each global batch; the per-step local losses (tensors)."""
    import torch

    optimizer = torch.optim.SGD(parameters, lr=NCCL_LR, momentum=NCCL_MOMENTUM)
    losses = []
    for step in range(steps):
        image_in, text_in, ids = toy_batch(step, global_batch)
        image, text, image_tau, text_tau = forward(image_in[rows].to(device, dtype), text_in[rows].to(device, dtype))
        output = loss_fn(image, text, image_tau, text_tau, sample_ids=ids[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.detach())
    return losses


def nccl_worker(out_file: Path, backend: str, steps: int) -> None:
    """One torchrun rank: train the toy model under DDP, then rank 0 saves every rank's parameters and tables."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from clipdro.distributed import all_gather_no_grad
    from clipdro.losses import build_contrastive_loss

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        device = torch.device("cpu")
    # Always a process group, also for world size 1 (clipdro's init_distributed makes none then).
    dist.init_process_group(backend=backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    global_batch = NCCL_ROWS_PER_RANK * world_size
    started = time.perf_counter()
    torch.manual_seed(0)
    model = build_toy_model()
    initial = {key: value.detach().clone() for key, value in model.state_dict().items()}
    model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if backend == "nccl" else None)
    loss_fn = build_contrastive_loss("tempnet", 4 * global_batch, rho=NCCL_RHO, gamma=NCCL_GAMMA).to(device)
    rows = slice(rank * NCCL_ROWS_PER_RANK, (rank + 1) * NCCL_ROWS_PER_RANK)
    losses = train_toy(ddp, ddp.parameters(), loss_fn, rows, steps, global_batch, device, torch.float32)
    # The global loss of each step = the mean of the ranks' local means (equal local batches).
    step_losses = torch.stack(losses).double()
    dist.all_reduce(step_losses)
    step_losses /= world_size
    params = torch.cat([parameter.detach().double().flatten() for parameter in model.parameters()])
    gathered_params = all_gather_no_grad(params[None]) if world_size > 1 else params[None]
    tables = {}
    for key, value in loss_fn.state_dict().items():
        value = value.double()[None]
        tables[key] = all_gather_no_grad(value) if world_size > 1 else value
    dist.barrier()
    if rank == 0:
        torch.save({
            "backend": backend, "world_size": world_size, "steps": steps,
            "devices": [torch.cuda.get_device_name(i) for i in range(world_size)] if backend == "nccl" else ["cpu"],
            "initial_state": initial, "losses": step_losses.cpu(), "params_per_rank": gathered_params.cpu(),
            "param_names": [name for name, _ in model.named_parameters()],
            "tables_per_rank": {key: value.cpu() for key, value in tables.items()},
            "worker_seconds": time.perf_counter() - started,
        }, out_file)
    # DDP's reducer holds the process group: release it first, or gloo's teardown can abort the process.
    del ddp, losses
    dist.barrier()
    dist.destroy_process_group()


def toy_reference(initial_state: dict, world_size: int, steps: int) -> dict:
    """The same steps in one process on the CPU, in float64, on the whole global batch."""
    import torch

    from clipdro.losses import build_contrastive_loss

    global_batch = NCCL_ROWS_PER_RANK * world_size
    model = build_toy_model().double()
    model.load_state_dict({key: value.double() for key, value in initial_state.items()})
    loss_fn = build_contrastive_loss("tempnet", 4 * global_batch, rho=NCCL_RHO, gamma=NCCL_GAMMA,
                                     table_dtype=torch.float64)
    losses = train_toy(model, model.parameters(), loss_fn, slice(None), steps, global_batch, torch.device("cpu"),
                       torch.float64)
    return {"losses": torch.stack(losses),
            "params": torch.cat([parameter.detach().flatten() for parameter in model.parameters()]),
            "tables": {key: value.double() for key, value in loss_fn.state_dict().items()}}


def tolerance_ratio(actual, expected, atol: float, rtol: float) -> float:
    """max |a - e| / (atol + rtol |e|): <= 1 means within tolerance."""
    return float(((actual - expected).abs() / (atol + rtol * expected.abs())).max())


def compare_nccl_results(saved: dict) -> dict:
    """Cross-rank equality and agreement with :func:`toy_reference` of what :func:`nccl_worker` saved."""
    params, tables = saved["params_per_rank"], saved["tables_per_rank"]
    cross_rank = {"params": float((params - params[0]).abs().max())}
    for key, per_rank in tables.items():
        cross_rank[key] = float((per_rank - per_rank[0]).abs().max())
    reference = toy_reference(saved["initial_state"], saved["world_size"], saved["steps"])
    agreement = {"params": tolerance_ratio(params[0], reference["params"], *NCCL_TOLERANCES["params"]),
                 "loss": tolerance_ratio(saved["losses"], reference["losses"], *NCCL_TOLERANCES["loss"])}
    max_abs = {"params": float((params[0] - reference["params"]).abs().max()),
               "loss": float((saved["losses"] - reference["losses"]).abs().max())}
    seen_equal = True
    for key, expected in reference["tables"].items():
        actual = tables[key][0]
        side, column = key.split(".")  # image_table.s, text_table.seen, ...
        max_abs[key] = float((actual - expected).abs().max())
        if column == "seen":
            seen_equal &= bool((actual == expected).all())
        else:
            agreement[key] = tolerance_ratio(actual, expected, *NCCL_TOLERANCES[column])
    ranks_equal = all(value == 0.0 for value in cross_rank.values())
    within = all(value <= 1.0 for value in agreement.values()) and seen_equal
    return {"ranks_identical": ranks_equal, "cross_rank_max_abs_diff": cross_rank,
            "matches_cpu_float64": within, "seen_flags_equal": seen_equal,
            "tolerance_ratio": agreement, "max_abs_diff_vs_cpu": max_abs,
            "tolerances": {key: {"atol": atol, "rtol": rtol} for key, (atol, rtol) in NCCL_TOLERANCES.items()},
            "losses": [float(value) for value in saved["losses"]],
            "reference_losses": [float(value) for value in reference["losses"]]}


def run_nccl_check(work_dir: Path, nproc: int, backend: str, steps: int, timeout: float) -> dict:
    """torchrun the worker on ``nproc`` ranks, then compare; the nccl part's result dict."""
    import torch

    work_dir.mkdir(parents=True, exist_ok=True)
    out_file = work_dir / f"{backend}-ranks.pt"
    log_file = work_dir / f"{backend}-torchrun.txt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "benchmarks.speed.gpu_check", "--nccl-worker", str(out_file), "--backend", backend,
               "--nccl-steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_file, "w") as log:
        try:
            completed = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       timeout=timeout)
            returncode = completed.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    if returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        what = f"timed out after {timeout:.0f} s" if returncode is None else f"exited {returncode}"
        return part_result("error", f"torchrun ({nproc} x {backend}) {what}", command=shlex.join(command),
                           log_tail=tail)
    saved = torch.load(out_file, weights_only=False)
    comparison = compare_nccl_results(saved)
    passed = comparison["ranks_identical"] and comparison["matches_cpu_float64"]
    worst = max(comparison["tolerance_ratio"].values())
    summary = (f"world size {saved['world_size']} ({backend}), {steps} steps: ranks "
               f"{'identical' if comparison['ranks_identical'] else 'DIFFER'}; vs CPU float64 "
               f"{'within' if comparison['matches_cpu_float64'] else 'OUTSIDE'} tolerance (worst ratio {worst:.3g})")
    if saved["world_size"] == 1:
        summary += "; one rank: NCCL group and DDP, but nothing for the loss to gather"
    rows = [f"| {key} | {comparison['cross_rank_max_abs_diff'].get(key, 0.0):.3g} | "
            f"{comparison['max_abs_diff_vs_cpu'][key]:.3g} | "
            f"{comparison['tolerance_ratio'].get(key, float('nan')):.3g} |"
            for key in comparison["max_abs_diff_vs_cpu"]]
    table = "\n".join([f"World size {saved['world_size']} on {', '.join(saved['devices'])}, {steps} steps of "
                       f"{NCCL_ROWS_PER_RANK} rows per rank; tolerance ratio = max |gpu - cpu| / (atol + rtol |cpu|), "
                       "<= 1 passes (seen flags must be equal).", "",
                       "| quantity | max diff across ranks | max abs diff vs CPU float64 | tolerance ratio |",
                       "|---|---:|---:|---:|", *rows])
    return part_result("passed" if passed else "failed", summary, world_size=saved["world_size"],
                       devices=saved["devices"], worker_seconds=round(saved["worker_seconds"], 2), **comparison,
                       table_md=table)


def nccl_part(args: argparse.Namespace, context: Context) -> dict:
    import torch

    if context.device == "cpu":  # rehearsal: the same worker and comparison over gloo
        return run_nccl_check(context.work_dir / "gloo", REHEARSAL_NCCL_RANKS, "gloo", args.nccl_steps,
                              timeout=min(240.0, context.remaining() - 5))
    return run_nccl_check(context.work_dir / "nccl", torch.cuda.device_count(), "nccl", args.nccl_steps,
                          timeout=min(240.0, context.remaining() - 5))


# ------------------------------------------------------------------------------ part: faiss


def synthetic_retrieval_set(num_captions: int, dim: int = 512, seed: int = 0):
    """(image features, text features, text_to_image): 5 captions per image, each a noisy copy of its image."""
    import numpy as np

    rng = np.random.default_rng(seed)
    num_images = num_captions // 5
    images = rng.standard_normal((num_images, dim), dtype=np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    owners = np.repeat(np.arange(num_images), 5)[:num_captions]
    texts = images[owners] + 6.0 * rng.standard_normal((len(owners), dim), dtype=np.float32) / dim ** 0.5
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts, owners


def faiss_agreement(num_captions: int, use_gpu: Sequence[bool] = (False, True), ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Ranks and recalls of both directions with each index in ``use_gpu``; equal recalls expected."""
    import numpy as np

    from clipdro.eval.retrieval import faiss_positive_ranks, metrics_from_ranks

    images, texts, owners = synthetic_retrieval_set(num_captions)
    image_ids = np.arange(len(images), dtype=np.int64)
    runs = {}
    for gpu in use_gpu:
        started = time.perf_counter()
        ranks = {"image_retrieval": faiss_positive_ranks(texts, images, owners, image_ids, max(ks), use_gpu=gpu),
                 "text_retrieval": faiss_positive_ranks(images, texts, image_ids, owners, max(ks), use_gpu=gpu)}
        seconds = time.perf_counter() - started
        runs["gpu" if gpu else "cpu"] = {"ranks": ranks, "seconds": seconds,
                                         "metrics": metrics_from_ranks(ranks, ks)}
    names = list(runs)
    first, second = runs[names[0]], runs[names[-1]]
    differing = {direction: int((first["ranks"][direction] != second["ranks"][direction]).sum())
                 for direction in first["ranks"]}
    return {"num_images": len(images), "num_captions": len(texts), "dim": images.shape[1],
            "metrics": {name: run["metrics"] for name, run in runs.items()},
            "search_seconds": {name: round(run["seconds"], 3) for name, run in runs.items()},
            "recalls_equal": first["metrics"] == second["metrics"], "differing_ranks": differing}


def faiss_part(args: argparse.Namespace, context: Context) -> dict:
    from clipdro.errors import UsageError
    from clipdro.eval.faiss_backend import installed_faiss_distributions, load_faiss

    gpu_builds = [name for name in installed_faiss_distributions() if name.startswith("faiss-gpu")]
    if not gpu_builds:
        return part_result("skipped", FAISS_NOT_BROUGHT + " (faiss-gpu is not installed)",
                           reason=FAISS_NOT_BROUGHT, installed=installed_faiss_distributions())
    try:
        faiss = load_faiss()
    except UsageError as error:
        return part_result("skipped", f"GPU FAISS not measured: {error}", reason=str(error))
    if faiss.get_num_gpus() == 0:
        return part_result("skipped", f"GPU FAISS not measured: {gpu_builds[0]} {faiss.__version__} sees no GPU",
                           reason="faiss.get_num_gpus() == 0")
    result = faiss_agreement(args.faiss_captions)
    seconds = result["search_seconds"]
    summary = (f"{result['num_captions']} captions x {result['num_images']} images: recalls "
               f"{'equal' if result['recalls_equal'] else 'DIFFER'}, ranks differing {result['differing_ranks']}; "
               f"search {seconds['gpu']:.2f} s GPU vs {seconds['cpu']:.2f} s CPU")
    header = "| metric | CPU index | GPU index |\n|---|---:|---:|\n"
    rows = "".join(f"| {key} | {value:.4f} | {result['metrics']['gpu'][key]:.4f} |\n"
                   for key, value in result["metrics"]["cpu"].items())
    return part_result("passed" if result["recalls_equal"] else "failed", summary, faiss=faiss.__version__,
                       **result, table_md=header + rows + f"| search seconds | {seconds['cpu']:.3f} | "
                                                          f"{seconds['gpu']:.3f} |\n")


# ------------------------------------------------------------------------------ part: precision

CAPTION_WORDS = ("red", "blue", "small", "large", "cat", "dog", "tree", "house", "star", "car", "moon", "boat",
                 "drawing", "photo", "of", "a", "the", "with", "on", "near")


def precision_agreement(model_name: str, device, batch: int, steps: int, precisions=("fp32", "amp_bf16"),
                        losses=("tempnet", "clip"), lr: float = 1e-5) -> dict:
    """Train copies of one model on the same seeded batches in each precision; per-step losses and mean taus.

    TempNet dropout is 0 and TF32 is off, so the runs differ only by the autocast precision. The loss is
    computed outside autocast, as clipdro's trainer does."""
    import copy
    import math
    import random

    import torch

    from benchmarks.speed.train_throughput import default_rho
    from clipdro.losses import build_contrastive_loss
    from clipdro.models import CLIPWithTempNets, create_clip, embedding_dim
    from clipdro.runtime import autocast_context
    from clipdro.tempnet import CLIPTempNet

    device = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    clip, _, _, tokenizer = create_clip(model_name)
    dim = embedding_dim(model_name)
    base = CLIPWithTempNets(clip, CLIPTempNet(dim, dropout=0.0), CLIPTempNet(dim, dropout=0.0))
    image_size = clip.visual.image_size
    image_size = tuple(image_size) if isinstance(image_size, list | tuple) else (image_size, image_size)
    words = random.Random(0)
    batches = []
    for step in range(steps):
        generator = torch.Generator().manual_seed(500 + step)
        images = torch.randn(batch, 3, *image_size, generator=generator)
        captions = [" ".join(words.choice(CAPTION_WORDS) for _ in range(6)) for _ in range(batch)]
        batches.append((images, tokenizer(captions)))
    sample_ids = torch.arange(batch, device=device)

    results: dict[str, dict[str, dict]] = {}
    for loss_name in losses:
        options = {"rho": default_rho(batch)} if loss_name == "tempnet" else {}
        for precision in precisions:
            model = copy.deepcopy(base).to(device)
            loss_fn = build_contrastive_loss(loss_name, batch, **options).to(device)
            loss_fn.prepare_model(model.clip)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                          weight_decay=0.02)
            step_losses, image_taus = [], []
            for images, tokens in batches:
                with autocast_context(precision, device):
                    output = model(images.to(device), tokens.to(device))
                image_tau, text_tau = loss_fn.temperatures(output)
                result = loss_fn(output.image_features, output.text_features, image_tau, text_tau, sample_ids)
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                optimizer.step()
                loss_fn.after_optimizer_step(model.clip)
                step_losses.append(float(result.loss.detach()))
                image_taus.append(float(result.image_tau.float().mean()))
            results.setdefault(loss_name, {})[precision] = {"loss": step_losses, "image_tau_mean": image_taus}
            del model, optimizer, loss_fn
            if device.type == "cuda":
                torch.cuda.empty_cache()

    reference, other = precisions[0], precisions[-1]
    comparison = {}
    for loss_name, runs in results.items():
        pairs = list(zip(runs[reference]["loss"], runs[other]["loss"], strict=True))
        relative = [abs(b - a) / abs(a) if a else math.inf for a, b in pairs]
        tau_pairs = zip(runs[reference]["image_tau_mean"], runs[other]["image_tau_mean"], strict=True)
        comparison[loss_name] = {"loss_relative_diff": relative,
                                 "first_step_relative_diff": relative[0], "max_relative_diff": max(relative),
                                 "image_tau_mean_relative_diff": [abs(b - a) / abs(a) for a, b in tau_pairs]}
    return {"model": model_name, "batch": batch, "steps": steps, "precisions": list(precisions), "lr": lr,
            "runs": results, "comparison": comparison}


def precision_part(args: argparse.Namespace, context: Context) -> dict:
    device = "cuda:0" if context.device == "cuda" else "cpu"
    result = precision_agreement(args.model, device, args.precision_batch, args.precision_steps)
    comparison = result["comparison"]
    passed = all(values["max_relative_diff"] <= args.precision_rtol for values in comparison.values())
    summary = "; ".join(f"{loss} loss: bf16 vs fp32 {values['first_step_relative_diff']:.2e} at step 1, "
                        f"max {values['max_relative_diff']:.2e} over {result['steps']} steps"
                        for loss, values in comparison.items()) + f" (accepted <= {args.precision_rtol:g})"
    lines = [f"{args.model}, batch {args.precision_batch}, AdamW lr {result['lr']:g}, random images and captions, "
             "TempNet dropout 0, TF32 off.", "",
             "| loss | step | fp32 loss | amp_bf16 loss | relative diff | fp32 mean image tau | bf16 mean image tau |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for loss_name, runs in result["runs"].items():
        for step, (a, b) in enumerate(zip(runs["fp32"]["loss"], runs["amp_bf16"]["loss"], strict=True)):
            lines.append(f"| {loss_name} | {step + 1} | {a:.6f} | {b:.6f} | "
                         f"{comparison[loss_name]['loss_relative_diff'][step]:.2e} | "
                         f"{runs['fp32']['image_tau_mean'][step]:.5f} | "
                         f"{runs['amp_bf16']['image_tau_mean'][step]:.5f} |")
    return part_result("passed" if passed else "failed", summary, rtol=args.precision_rtol, **result,
                       table_md="\n".join(lines))


PART_FUNCTIONS: dict[str, Callable[[argparse.Namespace, Context], dict]] = {
    "throughput": throughput_part, "nccl": nccl_part, "faiss": faiss_part, "precision": precision_part}


# ------------------------------------------------------------------------------ main


def nccl_worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check --nccl-worker")
    parser.add_argument("--nccl-worker", type=Path, required=True)
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    parser.add_argument("--nccl-steps", type=int, default=6)
    args = parser.parse_args(argv)
    nccl_worker(args.nccl_worker, args.backend, args.nccl_steps)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--nccl-worker" in argv:  # a torchrun rank of the nccl part
        return nccl_worker_main(argv)
    started_clock = time.monotonic()
    args = parse_args(argv)
    refusal = None if args.cpu_rehearsal else cuda_refusal()
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return NO_CUDA_EXIT
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    context = Context(out=args.out.resolve(), work_dir=args.work_dir.resolve(),
                      deadline=started_clock + args.time_budget, wheels=args.wheels.resolve() if args.wheels else None,
                      device="cpu" if args.cpu_rehearsal else "cuda")
    context.work_dir.mkdir(parents=True, exist_ok=True)
    site = context.work_dir / "site"
    installed: list[str] = []
    method = "no --wheels given"
    if context.wheels is not None:
        if not context.wheels.is_dir():
            print(f"gpu_check: --wheels {context.wheels} is not a folder (run make gpu-wheels and carry wheels/)",
                  file=sys.stderr)
        else:
            wheels = wheels_to_install(context.wheels)
            method = install_wheels(wheels, site)
            installed = [path.name for path in wheels]
    activate_site(site)

    try:
        environment = environment_report(installed, method)
    except Exception as error:  # a version query must not cost the check
        environment = {"error": repr(error), "gpus": [], "installed_from_wheels": installed, "install_method": method}
    report = {"command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.speed.gpu_check", *argv]),
              "cpu_rehearsal": args.cpu_rehearsal,
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "time_budget_s": args.time_budget,
              "environment": environment, "parts": {}}
    print(f"gpu_check: {environment.get('gpus')}, torch {environment.get('torch')}; installed "
          f"{installed or 'nothing'} ({method}); report in {context.out}", flush=True)
    write_report(context.out, report)
    for name in RUN_ORDER:
        if name not in args.parts:
            continue
        print(f"gpu_check: {name} ...", flush=True)
        report["parts"][name] = run_part(name, PART_FUNCTIONS[name], args, context)
        print(f"gpu_check: {name}: {report['parts'][name]['status']}: {report['parts'][name]['summary']}", flush=True)
        write_report(context.out, report)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    report["seconds"] = round(time.monotonic() - started_clock, 1)
    json_path, markdown_path = write_report(context.out, report)
    print(markdown_path.read_text())
    print(f"gpu_check: wrote {json_path} and {markdown_path} in {report['seconds']} s")
    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
