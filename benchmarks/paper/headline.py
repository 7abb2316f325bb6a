"""The headline table of docs/results.md and the README, made from a finished sweep's results.json.

    python -m benchmarks.paper.headline runs/pretrained-moving tempnet:clip sogclr:clip tempnet:sogclr

One row per METHOD:REFERENCE pair of the sweep's paired intervals (reproduce_table.py):

    | comparison | regime | Δ primary | 95 % interval over seeds | did τ move? |

*regime*: the base config, the number of steps, the method's rho and TempNet learning rate when it has a
TempNet, and the seeds. *Δ primary*: the mean over seeds of method − reference on reproduce_table's
PRIMARY metric (mean of IR@1 and TR@1), in points; the interval is the paired one that covers seeds and
queries (with one seed it covers queries only, and the cell says so). *did τ move?*: for a method with
per-sample temperatures, the median at its first logged step → the median over the training samples at
the end (``clipdro report``), averaged over seeds, per side, and the end p95/p5 (its range over seeds);
a learned global τ (clip) from its initial value to its final one; a fixed τ says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from benchmarks.paper.reproduce_table import METHODS, REPO_ROOT, run_overrides
from benchmarks.paper.tempnet_lr_selection import start_medians
from clipdro.config import load_config
from clipdro.eval import compare
from clipdro.train_config import TrainConfig

SIDES = ("image", "text")
HEADER = ["| comparison | regime | Δ primary (points) | 95 % interval over seeds (points) | did τ move? |",
          "|---|---|---:|---|---|"]


def resolved_config(results: dict, method: str) -> TrainConfig:
    """The method's resolved config in the sweep (its base config, its overrides; the seed does not matter)."""
    settings = results["settings"]
    overrides = run_overrides(method, 0, Path("runs"), settings["overrides"], REPO_ROOT / settings["base_config"])
    return load_config(TrainConfig, REPO_ROOT / settings["base_config"], overrides)


def regime(results: dict, method: str, seeds: list[int]) -> str:
    config = resolved_config(results, method)
    steps = config.run.epochs * config.data.epoch_samples // config.data.batch_size
    parts = [Path(results["settings"]["base_config"]).name, f"{steps} steps"]
    if config.loss.name == "tempnet":
        parts += [f"ρ {config.loss.rho:g}", f"TempNet lr {config.tempnet.lr:g}"]
    return ", ".join([*parts, f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"])


def tau_movement(results: dict, sweep_dir: Path, method: str, seeds: list[int]) -> str:
    """The 'did τ move?' cell of ``method`` over ``seeds``."""
    runs = [run for run in results["runs"] if run["method"] == method and run["seed"] in seeds]
    if all("taus" in run for run in runs):
        cells = []
        for side in SIDES:
            start = statistics.fmean(start_medians(sweep_dir / run["name"])[side] for run in runs)
            end = statistics.fmean(run["taus"][side]["p50"] for run in runs)
            spreads = [run["taus"][side]["p95_over_p5"] for run in runs]
            spread = f"{min(spreads):.2f}" if f"{min(spreads):.2f}" == f"{max(spreads):.2f}" else \
                f"{min(spreads):.2f}–{max(spreads):.2f}"
            cells.append(f"{side} {start:.3f} → {end:.3f}, p95/p5 {spread}")
        return "; ".join(cells)
    config = resolved_config(results, method)
    end = statistics.fmean(run["global_tau"] for run in runs)
    if config.loss.name == "clip":
        return f"one learned τ: {config.temperature.init:.3f} → {end:.3f}"
    return f"one fixed τ {end:.3f}"


def headline_rows(sweep_dir: Path, pairs: list[tuple[str, str]]) -> list[str]:
    results = json.loads((sweep_dir / "results.json").read_text())
    by_pair = {(entry["method"], entry["reference"]): entry for entry in results["paired_intervals"]}
    rows = []
    for method, reference in pairs:
        entry = by_pair.get((method, reference))
        if entry is None:
            raise SystemExit(f"{sweep_dir}/results.json has no paired interval {method} − {reference}")
        primary = entry["metrics"][entry["primary"]]
        interval = f"[{100 * primary['low']:+.1f}, {100 * primary['high']:+.1f}]"
        if primary["covers"] != compare.SEEDS_AND_QUERIES:
            interval += f" ({primary['covers']})"
        rows.append(f"| {method} − {reference} | {regime(results, method, entry['seeds'])} | "
                    f"{100 * primary['diff']:+.1f} | {interval} | "
                    f"{tau_movement(results, sweep_dir, method, entry['seeds'])} |")
    return rows


def parse_pair(text: str) -> tuple[str, str]:
    method, _, reference = text.partition(":")
    if method not in METHODS or reference not in METHODS:
        raise argparse.ArgumentTypeError(f"{text}: expected METHOD:REFERENCE, both of {', '.join(METHODS)}")
    return method, reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a reproduce_table output folder (results.json and its runs)")
    parser.add_argument("pairs", nargs="+", type=parse_pair, help="METHOD:REFERENCE, e.g. tempnet:clip")
    args = parser.parse_args(argv)
    print("\n".join([*HEADER, *headline_rows(args.sweep_dir, args.pairs)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
