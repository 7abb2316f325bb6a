"""The GPU check's shared start-up: arguments, the CUDA refusal, wheel installation, the run context
every part receives, the part runner and the reports (gpu_check.json, gpu_check.md)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
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

import benchmarks.speed.gpu_check as package

REPO_ROOT = Path(__file__).resolve().parents[3]
PARTS = ("throughput", "nccl", "faiss", "precision")
RUN_ORDER = ("nccl", "precision", "faiss", "throughput")  # shortest first: throughput takes what is left
NO_CUDA_EXIT = 2
JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"
# Seconds a part needs at least to be started (else: skipped, "budget"); the throughput runs get what is left.
MIN_SECONDS = {"nccl": 45, "precision": 45, "faiss": 30, "throughput": 90}
STATUSES = ("passed", "failed", "measured", "skipped", "error")
# --cpu-rehearsal: the whole check on the CPU, to prove the install and every part's code path on a machine like
# the GPU one without its GPU (docs/performance.md#gpu). Defaults sized for 2 cores; explicit arguments still win.
REHEARSAL_DEFAULTS = {"model": "clipdro-tiny-vit", "batch_size": 32, "workers": 2, "threads": 1, "steps": 24,
                      "warmup_steps": 12, "log_every": 4, "precision_batch": 32, "faiss_captions": 5_000,
                      "time_budget": 900.0}


# ------------------------------------------------------------------------------ arguments and start-up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.gpu_check", description=package.__doc__,
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
