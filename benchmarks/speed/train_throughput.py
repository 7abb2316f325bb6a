"""Training throughput: clipdro's loop (TempNet + DRO loss, and the plain CLIP loss) vs open_clip's own trainer.

    python -m benchmarks.speed.train_throughput --output runs/train_throughput.json
    python -m benchmarks.speed.train_throughput --shards /tmp/shards --steps 30 --warmup-steps 5 --output /tmp/tt.json
    # the GPU check (docs/performance.md): ViT-B-32, batch 256, bf16 autocast
    python -m benchmarks.speed.train_throughput --model ViT-B-32 --device cuda --precision amp_bf16 --workers 12 \
        --threads 4 --steps 120 --warmup-steps 36 --log-every 12 --repeats 2 --output runs/gpu_throughput.json

Three trainers run one after the other on the same machine state, each in a fresh child process:

* ``tempnet``: ``clipdro train`` with ``loss.name=tempnet`` (TempNets + the DRO loss);
* ``clip``: ``clipdro train`` with ``loss.name=clip`` (open_clip's InfoNCE with a learnable scale);
* ``open_clip``: open_clip's ``open_clip_train.main`` through ``benchmarks.speed.open_clip_train_launcher``
  (run as a module from the repo root), which registers clipdro's model configs first.

With ``--repeats N`` (default 3) the three run round-robin N times, so drift in the machine's load
hits all of them alike, and each trainer's figure is the median over its runs: from 3 runs on, one
run disturbed by another process's burst does not move it. On a shared machine the other
processes' load can change a run's speed several-fold within seconds: record the load averages
(the JSON has them) and trust only figures taken on an idle machine.

Same work for every trainer: model (default ``clipdro-tiny-vit``), shards (``--shards``, a folder
with manifest.json), batch size, data-loader workers, torch threads, precision (``--precision``:
fp32 by default, or amp_bf16, open_clip's name, which clipdro shares), device,
seed 0, number of optimiser steps, the open_clip train transform (clipdro's
``model.train_transform=train`` is the same ``preprocess_train``), AdamW with lr 8e-4, weight
decay 0.02, betas (0.9, 0.999), eps 1e-8, no warm-up and no gradient clipping. (The initial
logit scale differs, clipdro's 1/temperature.init vs open_clip's 1/0.07; the work does not.)

* Sampling: both stream the shards with replacement (clipdro ``data.resampled=true``, open_clip
  ``--dataset-resampled``) for ``steps * batch`` samples, which is one epoch of exactly
  ``--steps`` batches when ``--steps`` is a multiple of ``--workers`` (both trainers split the
  epoch evenly over workers; the script refuses other values). Resampling also lifts open_clip's
  "shards >= workers" rule, so a small shard set works. Each trainer keeps its own shuffle-buffer
  defaults (clipdro 1000 samples per worker, open_clip 5000 filled from 1000); they only change
  how soon the first batch arrives, which is warm-up.
* Threads: both children get ``OMP_NUM_THREADS = MKL_NUM_THREADS = --threads`` (default: this
  process's ``torch.get_num_threads()``); each interpreter is probed under that environment and
  the JSON records the thread count torch reports there. Loader workers run 1 thread each in
  both (torch's DataLoader sets that).
* Timing: both trainers write a log line every ``--log-every`` steps (clipdro ``run.log_every``,
  open_clip ``--log-every-n-steps``) and both time a step as the wall time between the ends of
  consecutive steps, data wait and logging included, so the two are consistent: clipdro's
  ``samples_per_s`` in ``metrics.jsonl`` is the window's samples over its wall time; open_clip's
  ``out.log`` has ``x/s`` = batch / the last step's time (6 significant digits) and the window's
  ``Batch (t)`` average (3 decimals), so a one-step window uses ``x/s``, a longer one the
  average. The default, a line every step, gives per-step times and an exact warm-up cut. Its
  cost for clipdro (tau summaries, a JSONL line, about 20 TensorBoard scalars) measured 5 ms per
  line on the loaded 2-core dev machine, against CPU steps of 0.3 s (idle) to several seconds;
  open_clip's single line is cheaper. Where steps take milliseconds (GPU) pass ``--log-every 20``
  or more, or the logging would be what is measured.
* Steady state: only log windows that start after the first ``--warmup-steps`` steps count
  (worker start-up, shuffle-buffer fill, the TempNet prototype initialisation in clipdro's first
  step, allocator warm-up fall before); the figure is ``batch * measured steps / their summed wall
  time``. ``median_samples_per_s`` is batch / the median window's time per step, which shrugs off
  load spikes from other processes on a shared machine; compare both.
* Ratios: ``tempnet_overhead = clip samples/s / tempnet samples/s - 1`` (extra time per sample of
  TempNet + DRO over CLIP in our loop; target <= 5 %); ``ours_vs_open_clip = clip samples/s /
  open_clip samples/s`` (like for like: both train the CLIP loss; target >= 1) and the same
  for the tempnet loss.
* ``loss.rho`` for the tempnet run is ``log(batch - 1) - 0.6`` rounded down to 0.01: it must stay
  below ``log(batch - 1)``, and 0.6 is the paper's margin (rho 7.0 at batch 2048); rho does not
  change the work per step.

open_clip's trainer crashes with ``KeyError: 'fname'`` on webdataset >= 0.2.96, so it runs in
its own small venv (default ``benchmarks/speed/.venv-openclip``, created once and reused while its
marker file matches): ``python -m venv``, ``pip install --no-deps webdataset==0.2.86``, and a
``.pth`` file that appends this interpreter's site-packages after the venv's own, so webdataset
0.2.86 shadows clipdro's 1.0.2 while torch, open_clip and the rest are shared instead of
reinstalled. Modules open_clip_train imports that the shared site-packages lack are installed
into the venv with ``--no-deps``; torch, torchvision and open_clip must come from this interpreter.

Outputs: ``--output`` (JSON: settings, environment of both interpreters, load average before and
after, every run, per-trainer summary, ratios, targets) and the same path with ``.md`` (a
markdown table). Run folders and logs stay under ``--work-dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import site
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = "benchmarks.speed.open_clip_train_launcher"  # run as a module, with the repo root as working directory
DEFAULT_VENV = Path(__file__).resolve().parent / ".venv-openclip"
WEBDATASET_FOR_OPEN_CLIP = "0.2.86"  # trains open_clip_train 3.3.0; >= 0.2.96 raises KeyError 'fname'
VENV_MARKER = "clipdro-bench.json"
BASE_SITE_PTH = "clipdro_bench_base_site.pth"
# Distributions providing modules open_clip_train imports (data.py, file_utils.py, main.py), plus
# webdataset 0.2.86's own requirements; installed into the venv only where the shared site lacks them.
OPEN_CLIP_TRAIN_MODULES = {"braceexpand": "braceexpand", "pandas": "pandas", "fsspec": "fsspec", "tqdm": "tqdm",
                           "numpy": "numpy", "yaml": "pyyaml", "PIL": "pillow"}
SHARED_ONLY_MODULES = ("torch", "torchvision", "open_clip", "open_clip_train")  # never reinstalled in the venv
TRAINERS = ("tempnet", "clip", "open_clip")
RHO_MARGIN = 0.6  # log(2047) - 7.0 in the paper's CC3M setting
LEARNING_RATE = 8e-4  # clipdro's default optim.lr
WEIGHT_DECAY = 0.02  # clipdro's default optim.weight_decay
TARGET_MAX_TEMPNET_OVERHEAD = 0.05
TARGET_MIN_OURS_VS_OPEN_CLIP = 1.0

# One open_clip step line, e.g. "Train Epoch: 0 [ 512/7680 (7%)] Data (t): 0.012 Batch (t): 0.345, 742.1/s, ..."
OPEN_CLIP_STEP_LINE = re.compile(
    r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<epoch_samples>\d+) \(\d+%\)\] "
    r"Data \(t\): (?P<data_s>[0-9.]+) Batch \(t\): (?P<batch_s>[0-9.]+), (?P<samples_per_s>[0-9.eE+-]+)/s,")


@dataclass(frozen=True)
class LogWindow:
    """The steps between two log lines of a trainer."""

    first_step: int  # 1-based optimiser steps, both included
    last_step: int
    seconds: float  # wall time from the end of step first_step - 1 to the end of last_step
    data_seconds: float  # part of it spent waiting for batches

    @property
    def steps(self) -> int:
        return self.last_step - self.first_step + 1


@dataclass(frozen=True)
class Throughput:
    measured_steps: int
    samples_per_s: float  # batch * measured steps / their summed wall time
    median_samples_per_s: float  # batch / the median over measured windows of their time per step
    data_fraction: float  # share of the measured wall time spent waiting for data


# ------------------------------------------------------------------------------ parsing and statistics


def windows_from_log_steps(entries: Iterable[tuple[int, float, float]], source: str) -> list[LogWindow]:
    """(last step, seconds per step, data seconds per step) of successive log lines -> windows."""
    windows: list[LogWindow] = []
    previous_step = 0
    for step, seconds_per_step, data_seconds_per_step in entries:
        if step <= previous_step:
            raise ValueError(f"{source}: step {step} logged after step {previous_step}")
        steps = step - previous_step
        windows.append(LogWindow(previous_step + 1, step, seconds_per_step * steps, data_seconds_per_step * steps))
        previous_step = step
    return windows


def parse_clipdro_metrics(lines: Iterable[str], batch_size: int) -> list[LogWindow]:
    """Windows of a one-process clipdro ``metrics.jsonl`` (evaluation lines skipped).

    ``samples_per_s`` is the window's samples over its wall time, so a step takes batch / it.
    """
    records = (json.loads(line) for line in lines)
    return windows_from_log_steps(
        ((record["step"], batch_size / record["samples_per_s"], record["data_s_per_step"])
         for record in records if "samples_per_s" in record), "clipdro metrics.jsonl")


def parse_open_clip_log(text: str, batch_size: int) -> list[LogWindow]:
    """Windows of a one-process open_clip_train ``out.log``.

    A one-step window takes its time from ``x/s`` (6 significant digits; it is the last step's
    rate), a longer one from the window's ``Batch (t)`` average (3 decimals).
    """
    entries = []
    previous_step = 0
    for match in OPEN_CLIP_STEP_LINE.finditer(text):
        steps_per_epoch = int(match["epoch_samples"]) // batch_size
        step = int(match["epoch"]) * steps_per_epoch + int(match["seen"]) // batch_size
        one_step = step - previous_step == 1
        seconds_per_step = batch_size / float(match["samples_per_s"]) if one_step else float(match["batch_s"])
        entries.append((step, seconds_per_step, float(match["data_s"])))
        previous_step = step
    return windows_from_log_steps(entries, "open_clip out.log")


def steady_state(windows: list[LogWindow], warmup_steps: int, batch_size: int) -> Throughput:
    """Throughput over the windows that start after the warm-up steps."""
    measured = [window for window in windows if window.first_step > warmup_steps]
    if not measured:
        raise ValueError(f"no log window starts after the {warmup_steps} warm-up steps")
    steps = sum(window.steps for window in measured)
    seconds = sum(window.seconds for window in measured)
    return Throughput(
        measured_steps=steps,
        samples_per_s=batch_size * steps / seconds,
        median_samples_per_s=batch_size / statistics.median(window.seconds / window.steps for window in measured),
        data_fraction=sum(window.data_seconds for window in measured) / seconds)


def summarise(runs: list[Throughput]) -> Throughput:
    """One trainer's figure over its repeats: the median of each statistic (the run itself when one)."""
    return Throughput(measured_steps=sum(run.measured_steps for run in runs),
                      samples_per_s=statistics.median(run.samples_per_s for run in runs),
                      median_samples_per_s=statistics.median(run.median_samples_per_s for run in runs),
                      data_fraction=statistics.median(run.data_fraction for run in runs))


def throughput_ratios(tempnet: float, clip: float, open_clip: float) -> dict[str, float]:
    """Ratios of samples/s (see the module docstring for their meaning and targets)."""
    return {"tempnet_overhead": clip / tempnet - 1.0,
            "ours_vs_open_clip": clip / open_clip,
            "tempnet_vs_open_clip": tempnet / open_clip}


def targets_met(ratios: dict[str, float]) -> dict[str, bool]:
    return {"tempnet_overhead_at_most_5_percent": ratios["tempnet_overhead"] <= TARGET_MAX_TEMPNET_OVERHEAD,
            "ours_at_least_as_fast_as_open_clip": ratios["ours_vs_open_clip"] >= TARGET_MIN_OURS_VS_OPEN_CLIP}


def markdown_table(summary: dict[str, Throughput], ratios: dict[str, float],
                   peak_memory_gib: dict[str, float] | None = None) -> str:
    """The summary table; with ``peak_memory_gib`` (trainer -> GiB, CUDA runs) a peak-memory column."""
    memory = peak_memory_gib or {}
    lines = ["| trainer | samples/s (steady) | samples/s (median step) | data wait | measured steps (all runs) |"
             + (" peak CUDA memory |" if memory else ""), "|---|---:|---:|---:|---:|" + ("---:|" if memory else "")]
    for name, result in summary.items():
        peak = (f" {memory[name]:.2f} GiB |" if name in memory else " – |") if memory else ""
        lines.append(f"| {name} | {result.samples_per_s:.1f} | {result.median_samples_per_s:.1f} | "
                     f"{result.data_fraction:.1%} | {result.measured_steps} |{peak}")
    # One line per ratio present (the GPU check can run without open_clip's trainer: tempnet_overhead only).
    ratio_lines = {
        "tempnet_overhead": lambda value: f"- TempNet + DRO overhead over CLIP (our loop): {value:+.1%} "
                                          f"(target <= {TARGET_MAX_TEMPNET_OVERHEAD:.0%})",
        "ours_vs_open_clip": lambda value: f"- ours (clip loss) / open_clip: {value:.3f} "
                                           f"(target >= {TARGET_MIN_OURS_VS_OPEN_CLIP:.1f})",
        "tempnet_vs_open_clip": lambda value: f"- ours (tempnet loss) / open_clip: {value:.3f}",
    }
    lines += ["", *(line(ratios[key]) for key, line in ratio_lines.items() if key in ratios)]
    return "\n".join(lines) + "\n"


def default_rho(batch_size: int) -> float:
    """The paper's gap below the bound log(batch - 1), rounded down to 0.01."""
    return math.floor((math.log(batch_size - 1) - RHO_MARGIN) * 100) / 100


def open_clip_train_data(manifest_dir: Path) -> str:
    """open_clip's ``--train-data``: the manifest's shards as absolute paths joined by '::'."""
    manifest = json.loads((manifest_dir / "manifest.json").read_text())
    return "::".join(str((manifest_dir / shard["path"]).resolve()) for shard in manifest["shards"])


# ------------------------------------------------------------------------------ environments


def base_site_packages() -> list[str]:
    """Where this interpreter's packages (torch, open_clip, webdataset 1.0.2, ...) live."""
    return site.getsitepackages()


def run_checked(command: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def missing_modules(python: Path, modules: Iterable[str]) -> list[str]:
    code = ("import importlib.util, json, sys; "
            "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))")
    return json.loads(run_checked([str(python), "-c", code, *modules]))


def ensure_open_clip_venv(venv_dir: Path) -> Path:
    """The open_clip venv's python, creating the venv unless its marker matches (see the module docstring)."""
    python = venv_dir / "bin" / "python"
    marker = venv_dir / VENV_MARKER
    wanted = {"webdataset": WEBDATASET_FOR_OPEN_CLIP, "base_site_packages": base_site_packages()}
    if marker.is_file() and json.loads(marker.read_text()) == wanted and python.exists():
        return python
    print(f"creating {venv_dir} (webdataset {WEBDATASET_FOR_OPEN_CLIP} over {sys.executable}'s packages)")
    shutil.rmtree(venv_dir, ignore_errors=True)
    run_checked([sys.executable, "-m", "venv", str(venv_dir)])
    own_site = run_checked([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    # A .pth line starting with "import" is executed at start-up; addsitedir appends (after the venv's
    # own site-packages) and also runs the .pth files there, as the shared interpreter would.
    (Path(own_site) / BASE_SITE_PTH).write_text(
        "import site; " + "; ".join(f"site.addsitedir({path!r})" for path in wanted["base_site_packages"]) + "\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps"]
    run_checked([*pip, f"webdataset=={WEBDATASET_FOR_OPEN_CLIP}"])
    absent = missing_modules(python, OPEN_CLIP_TRAIN_MODULES)
    if absent:
        run_checked([*pip, *(OPEN_CLIP_TRAIN_MODULES[module] for module in absent)])
    absent_shared = missing_modules(python, SHARED_ONLY_MODULES)
    if absent_shared:
        raise RuntimeError(f"{sys.executable} lacks {absent_shared}: run the benchmark with clipdro's interpreter")
    marker.write_text(json.dumps(wanted))
    return python


PROBE = """
import json, torch, open_clip, webdataset
print(json.dumps({"python": __import__("sys").executable, "torch": torch.__version__,
                  "open_clip": open_clip.__version__, "webdataset": webdataset.__version__,
                  "webdataset_file": webdataset.__file__, "torch_threads": torch.get_num_threads()}))
"""


def probe_environment(python: Path, env: dict[str, str]) -> dict:
    """Versions and torch thread count as a trainer child will see them."""
    return json.loads(run_checked([str(python), "-c", PROBE], env=env).strip().splitlines()[-1])


def child_environment(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))  # this checkout
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads; a stray lookup should fail fast
    return env


# ------------------------------------------------------------------------------ the runs


@dataclass(frozen=True)
class Settings:
    shards: Path
    model: str
    batch_size: int
    workers: int
    threads: int
    steps: int
    warmup_steps: int
    log_every: int
    device: str
    precision: str  # fp32 or amp_bf16, the same name in both trainers
    work_dir: Path


def clipdro_command(settings: Settings, loss: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "clipdro.cli", "train",
            f"data.sources=[{{shards: {settings.shards}}}]", f"data.batch_size={settings.batch_size}",
            f"data.num_workers={settings.workers}", "data.resampled=true",
            f"data.epoch_samples={settings.steps * settings.batch_size}", f"model.name={settings.model}",
            f"loss.name={loss}", f"loss.rho={default_rho(settings.batch_size)}", f"optim.lr={LEARNING_RATE}",
            f"optim.weight_decay={WEIGHT_DECAY}", "run.epochs=1", f"run.log_every={settings.log_every}",
            f"run.precision={settings.precision}", f"run.device={settings.device}", "run.seed=0",
            f"run.output_dir={run_dir.parent}",
            f"run.name={run_dir.name}"]


def open_clip_command(settings: Settings, python: Path, run_dir: Path) -> list[str]:
    return [str(python), "-m", LAUNCHER, "--train-data", open_clip_train_data(settings.shards),
            "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(settings.steps * settings.batch_size), "--batch-size", str(settings.batch_size),
            "--workers", str(settings.workers), "--epochs", "1", "--model", settings.model,
            "--precision", settings.precision,
            "--device", settings.device, "--seed", "0", "--lr", str(LEARNING_RATE), "--wd", str(WEIGHT_DECAY),
            "--beta1", "0.9", "--beta2", "0.999", "--eps", "1e-8", "--warmup", "0",
            "--log-every-n-steps", str(settings.log_every),
            "--logs", str(run_dir.parent), "--name", run_dir.name, "--save-frequency", "0", "--report-to", ""]


def console_path(run_dir: Path) -> Path:
    """Where :func:`run_trainer` writes the child's stdout and stderr."""
    return run_dir.parent / f"{run_dir.name}.console.txt"


def run_trainer(trainer: str, settings: Settings, open_clip_python: Path, env: dict[str, str],
                run_dir: Path, timeout: float | None = None) -> tuple[list[LogWindow], float]:
    """Train once; the log windows from the trainer's own log and the child's total wall time.
    ``timeout`` (seconds): a child still running then is killed and a RuntimeError raised."""
    if trainer == "open_clip":
        command, log_file = open_clip_command(settings, open_clip_python, run_dir), run_dir / "out.log"
    else:
        command, log_file = clipdro_command(settings, trainer, run_dir), run_dir / "metrics.jsonl"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(console_path(run_dir), "w") as console:
        try:
            result = subprocess.run(command, env=env, cwd=REPO_ROOT, stdout=console, stderr=subprocess.STDOUT,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{trainer} run still running after {timeout:.0f} s: killed; "
                               f"see {console.name}") from None
    wall_s = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{trainer} run failed ({result.returncode}); see {console.name}\n{' '.join(command)}")
    if trainer == "open_clip":
        windows = parse_open_clip_log(log_file.read_text(), settings.batch_size)
    else:
        windows = parse_clipdro_metrics(log_file.read_text().splitlines(), settings.batch_size)
    last_step = windows[-1].last_step if windows else 0
    if last_step != settings.steps:
        raise RuntimeError(f"{trainer} logged {last_step} steps, expected {settings.steps}; see {log_file}")
    return windows, wall_s


def clipdro_peak_memory(run_dir: Path) -> float | None:
    """The peak CUDA memory (GiB) a clipdro run logged last; None for runs on other devices."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    peaks = [record["max_memory_gib"] for record in records if "max_memory_gib" in record]
    return peaks[-1] if peaks else None


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def main() -> int:
    import torch  # here, so the helpers (and their tests) load without torch; only for defaults

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, default=REPO_ROOT / "data" / "openclipart" / "train",
                        help="folder with manifest.json and its shards")
    parser.add_argument("--output", type=Path, required=True, help="results JSON; the markdown table goes beside it")
    parser.add_argument("--model", default="clipdro-tiny-vit")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="data-loader workers of every trainer")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps per run (a multiple of --workers)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="first steps left out of the figures")
    parser.add_argument("--log-every", type=int, default=1,
                        help="steps per log line of every trainer (1 on CPU; more where steps take milliseconds)")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin passes over the three trainers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16"])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="open_clip's venv (created once)")
    parser.add_argument("--work-dir", type=Path, help="run folders, console logs (default: runs/train-throughput-TIME)")
    args = parser.parse_args()
    if not (args.shards / "manifest.json").is_file():
        parser.error(f"{args.shards} has no manifest.json (generate shards, e.g. tests/shard_factory.write_dense)")
    if args.steps % max(1, args.workers) or args.steps <= args.warmup_steps:
        parser.error("--steps must be a multiple of --workers and larger than --warmup-steps")
    work_dir = args.work_dir or REPO_ROOT / "runs" / f"train-throughput-{time.strftime('%Y%m%d-%H%M%S')}"
    if work_dir.exists() and any(work_dir.iterdir()):
        # clipdro would append to an old metrics.jsonl and open_clip refuses an existing run name.
        parser.error(f"--work-dir {work_dir} is not empty")

    settings = Settings(shards=args.shards.resolve(), model=args.model, batch_size=args.batch_size,
                        workers=args.workers, threads=args.threads, steps=args.steps,
                        warmup_steps=args.warmup_steps, log_every=args.log_every, device=args.device,
                        precision=args.precision, work_dir=work_dir.resolve())
    env = child_environment(settings.threads)
    open_clip_python = ensure_open_clip_venv(args.venv)
    environments = {"clipdro": probe_environment(Path(sys.executable), env),
                    "open_clip": probe_environment(open_clip_python, env)}
    if environments["open_clip"]["webdataset"] != WEBDATASET_FOR_OPEN_CLIP:
        raise RuntimeError(f"open_clip venv imports webdataset {environments['open_clip']['webdataset']}, "
                           f"not {WEBDATASET_FOR_OPEN_CLIP}: delete {args.venv} and rerun")
    print(json.dumps(environments, indent=1))

    load_before = load_average()
    results: dict[str, list[Throughput]] = {trainer: [] for trainer in TRAINERS}
    run_records: dict[str, list[dict]] = {trainer: [] for trainer in TRAINERS}
    for repeat in range(args.repeats):
        for trainer in TRAINERS:
            run_dir = settings.work_dir / f"{trainer}-{repeat}"
            windows, wall_s = run_trainer(trainer, settings, open_clip_python, env, run_dir)
            result = steady_state(windows, settings.warmup_steps, settings.batch_size)
            print(f"{trainer} run {repeat}: {result.samples_per_s:.1f} samples/s steady "
                  f"(median step {result.median_samples_per_s:.1f}), data wait {result.data_fraction:.1%}, "
                  f"process {wall_s:.1f} s, load {load_average()}")
            results[trainer].append(result)
            record = {"repeat": repeat, "run_dir": str(run_dir), "process_wall_s": round(wall_s, 2), **asdict(result)}
            if trainer != "open_clip":  # open_clip's log has no memory figure
                record["peak_memory_gib"] = clipdro_peak_memory(run_dir)
            run_records[trainer].append(record)
    load_after = load_average()

    summary = {trainer: summarise(results[trainer]) for trainer in TRAINERS}
    ratios = throughput_ratios(tempnet=summary["tempnet"].samples_per_s, clip=summary["clip"].samples_per_s,
                               open_clip=summary["open_clip"].samples_per_s)
    peak_memory_gib = {trainer: max(record["peak_memory_gib"] for record in run_records[trainer])
                       for trainer in TRAINERS if run_records[trainer][0].get("peak_memory_gib") is not None}
    table = markdown_table(summary, ratios, peak_memory_gib)
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "settings": {**asdict(settings), "shards": str(settings.shards), "work_dir": str(settings.work_dir),
                     "repeats": args.repeats, "rho": default_rho(settings.batch_size)},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": load_after},
        "environments": environments,
        "runs": run_records,
        "summary": {trainer: asdict(result) for trainer, result in summary.items()},
        "ratios": ratios,
        "targets_met": targets_met(ratios),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    args.output.with_suffix(".md").write_text(table)
    print(table)
    print(f"load average before {load_before}, after {load_after}; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
