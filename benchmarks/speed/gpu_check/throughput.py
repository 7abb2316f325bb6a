"""The GPU check's throughput part: benchmarks/speed/train_throughput.py's three trainers (``clipdro train``
with the tempnet and the clip loss, open_clip's own trainer through a launcher with webdataset 0.2.86), each
a real training process: steady-state samples/s, data wait and peak CUDA memory. No step of its own here."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from benchmarks.speed.gpu_check.startup import MIN_SECONDS, Context, part_result, unpack_wheels

OPEN_CLIP_TRAIN_WHEELS = "open_clip_train"  # subfolder of --wheels: webdataset 0.2.86, for open_clip's trainer only
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
    trainers, environments, notes = usable_trainers(launcher, env, context.wheels)
    results, runs = run_trainers(trainers, settings, launcher, env, args.repeats, context, notes)
    return throughput_result(args, results, runs, environments, notes)


def usable_trainers(launcher: Path | None, env: dict, wheels: Path | None) -> tuple[list[str], dict, list[str]]:
    """(the trainers to run, their interpreters' environments, notes on those left out): open_clip's only
    with a launcher whose interpreter imports webdataset 0.2.86."""
    from benchmarks.speed import train_throughput as tt

    trainers = [trainer for trainer in tt.TRAINERS if trainer != "open_clip" or launcher is not None]
    environments = {"clipdro": tt.probe_environment(Path(sys.executable), env)}
    notes = [] if launcher else [f"open_clip's trainer not run: no webdataset wheel in "
                                 f"{wheels}/{OPEN_CLIP_TRAIN_WHEELS}"]
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
    return trainers, environments, notes


def run_trainers(trainers: list[str], settings, launcher: Path | None, env: dict, repeats: int, context: Context,
                 notes: list[str]) -> tuple[dict[str, list], dict[str, list[dict]]]:
    """``repeats`` round-robin passes over ``trainers`` within the budget: (steady-state results, run records)
    per trainer; what did not run or failed is added to ``notes``."""
    from dataclasses import asdict

    from benchmarks.speed import train_throughput as tt

    results: dict[str, list] = {trainer: [] for trainer in trainers}
    runs: dict[str, list[dict]] = {trainer: [] for trainer in trainers}
    for repeat in range(repeats):
        for trainer in trainers:
            left = context.remaining() - 10
            if left < MIN_SECONDS["throughput"] * 0.6:
                notes.append(f"{trainer} run {repeat} not started: {context.remaining():.0f} s of the budget left")
                continue
            run_dir = settings.work_dir / f"{trainer}-{repeat}"
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
    return results, runs


def throughput_result(args: argparse.Namespace, results: dict[str, list], runs: dict[str, list[dict]],
                      environments: dict, notes: list[str]) -> dict:
    """The part's result: per-trainer summaries, the ratios against the targets, peak memory, the table."""
    from dataclasses import asdict

    from benchmarks.speed import train_throughput as tt

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
