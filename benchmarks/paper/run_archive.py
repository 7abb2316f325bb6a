"""Finished sweep runs kept in the repository: their small files, not their checkpoints.

A pretrained-tower sweep (``pretrained_sweeps.sh``) is tens of runs of 10-18 min on 2 CPU cores, more
than one working session, and ``runs/`` does not outlive the machine it was written on. What a sweep
needs of a finished run to reuse it (``reproduce_table.finished_with``) and to tabulate it is small:

    config.yaml          the resolved config (reuse requires exactly the same one)
    metrics.jsonl        the training log, whose last record is the final evaluation
    eval_retrieval.json  per-query ranks (``clipdro eval``), behind the paired intervals
    eval_zeroshot.json
    taus_summary.json    the learned temperatures' spread (per-sample methods and dataset oracles only),
                         made from the run's final checkpoint by ``reproduce_table.run_taus``

``save`` copies those of every finished run of a sweep folder into an archive folder (committed under
``benchmarks/paper/finished_runs/``); ``restore`` copies archived runs back into a sweep folder that
lacks them, after which ``reproduce_table`` reuses them as if they had been trained there. The
checkpoints stay behind: a restored run can be tabulated and compared, not evaluated on other data.

    python -m benchmarks.paper.run_archive save runs/pretrained-moving ARCHIVE
    python -m benchmarks.paper.run_archive restore ARCHIVE runs/pretrained-moving
    # ARCHIVE: benchmarks/paper/finished_runs/pretrained-moving
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

RUN_FILES = ("config.yaml", "metrics.jsonl", "eval_retrieval.json", "eval_zeroshot.json")
TAUS_FILE = "taus_summary.json"  # optional: methods with one global temperature have none


def save_run(run_dir: Path, archive_dir: Path) -> Path:
    """Copy ``run_dir``'s small files (RUN_FILES, and TAUS_FILE when there) to ``archive_dir/RUN``."""
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}: not a finished, evaluated run")
    target = archive_dir / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, TAUS_FILE):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, target / name)
    return target


def restore_runs(archive_dir: Path, output_dir: Path) -> list[Path]:
    """Copy every archived run that ``output_dir`` has no folder for into it; returns the restored folders.
    A folder already there is left alone, finished or not: the sweep decides whether to reuse it."""
    restored = []
    if not archive_dir.is_dir():
        return restored
    for archived in sorted(path for path in archive_dir.iterdir() if path.is_dir()):
        run_dir = output_dir / archived.name
        if run_dir.exists():
            continue
        shutil.copytree(archived, run_dir)
        restored.append(run_dir)
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save", help="archive every finished run of a sweep folder")
    save.add_argument("sweep_dir", type=Path)
    save.add_argument("archive_dir", type=Path)
    restore = commands.add_parser("restore", help="copy archived runs into a sweep folder that lacks them")
    restore.add_argument("archive_dir", type=Path)
    restore.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "restore":
        for run_dir in restore_runs(args.archive_dir, args.sweep_dir):
            print(f"restored {run_dir}")
        return 0
    from benchmarks.paper.reproduce_table import finished_run_method, run_taus

    for run_dir in sorted(path for path in args.sweep_dir.iterdir() if path.is_dir()):
        method = finished_run_method(run_dir)
        if method is None:
            print(f"skipped {run_dir} (not finished and evaluated)")
            continue
        run_taus(run_dir, method)
        print(f"saved {save_run(run_dir, args.archive_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
