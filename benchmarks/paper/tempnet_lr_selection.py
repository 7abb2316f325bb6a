"""Choose TempNet's learning rate on a validation split, among the rates that make tau move.

    python -m benchmarks.paper.tempnet_lr_selection                     # lrs 1e-3 3e-3 1e-2 3e-2, seed 0
    python -m benchmarks.paper.tempnet_lr_selection --lrs 3e-3 1e-2 --output-dir runs/pretrained-lr-selection

At the paper's TempNet learning rate (3e-5) and this regime's 132 steps the TempNet never left its
starting temperature (docs/results.md), so a comparison at that rate tests a temperature *level*,
not a learned per-sample temperature. This script trains the pretrained-tower regime
(``benchmarks/paper/configs/pretrained.yaml``, TempNet from step 0) once per candidate rate on the
training split *minus* a validation split carved from it (``benchmarks.paper.validation_split``:
1,000 training pictures set aside, the test split untouched), evaluates on that validation split,
and chooses the rate with the best primary metric, the mean of text->image and image->text
recall@1, among the rates whose temperatures moved (:func:`moved`).

Each rate is one ``reproduce_table`` sweep of the tempnet method in ``OUTPUT_DIR/lr-RATE``
(finished runs are reused on rerun). ``OUTPUT_DIR/selection.md`` and ``selection.json`` record, per
rate: the validation metrics, where the batch temperatures started (the first logged step's
median) and ended (the median over the training samples at the end, ``clipdro report``), the end
spread p95/p5, whether tau moved, and the rate chosen.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from benchmarks.paper import reproduce_table, validation_split

PRETRAINED_CONFIG = Path(__file__).resolve().parent / "configs" / "pretrained.yaml"
DEFAULT_LRS = [1e-3, 3e-3, 1e-2, 3e-2]
# tau moved when, on either side, the median moved by at least this factor from its start, or the
# training samples' taus spread at least this much (p95 / p5) at the end.
MOVED_MEDIAN_FACTOR = 1.10
MOVED_SPREAD = 1.5
PRIMARY = ("IR@1", "TR@1")  # the primary metric is their mean


def moved(start_median: float, end_median: float, end_spread: float) -> bool:
    """Whether one side's temperatures moved: median changed by >= MOVED_MEDIAN_FACTOR either way,
    or end spread p95/p5 >= MOVED_SPREAD."""
    return (abs(math.log(end_median / start_median)) >= math.log(MOVED_MEDIAN_FACTOR) - 1e-12
            or end_spread >= MOVED_SPREAD)


def primary(metrics: dict[str, float]) -> float:
    return sum(metrics[title] for title in PRIMARY) / len(PRIMARY)


def start_medians(run_dir: Path) -> dict[str, float]:
    """Per side, the median batch temperature of the first logged step (metrics.jsonl ``*_tau_p50``)."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "image_tau_p50" in record:
            return {side: record[f"{side}_tau_p50"] for side in ("image", "text")}
    raise SystemExit(f"{run_dir}/metrics.jsonl logs no tau percentiles (a run from before they were logged)")


def candidate(lr: float, run: dict, run_dir: Path) -> dict:
    """One rate's row: validation metrics, start and end medians, end spread, moved or not."""
    start = start_medians(run_dir)
    sides = {}
    for side in ("image", "text"):
        summary = run["taus"][side]
        end_median = summary["p50"]
        sides[side] = {"start_median": start[side], "end_median": end_median, "end_p5": summary["p5"],
                       "end_p95": summary["p95"], "end_spread": summary["p95_over_p5"],
                       "moved": moved(start[side], end_median, summary["p95_over_p5"])}
    return {"lr": lr, "run": run["name"], "metrics": run["metrics"], "primary": primary(run["metrics"]),
            "sides": sides, "moved": any(side["moved"] for side in sides.values())}


def choose(candidates: list[dict]) -> dict | None:
    """The moved candidate with the highest primary metric (the smaller rate on a tie); None if none moved."""
    movers = [entry for entry in candidates if entry["moved"]]
    return max(movers, key=lambda entry: (entry["primary"], -entry["lr"])) if movers else None


def selection_markdown(candidates: list[dict], chosen: dict | None, split: Path) -> str:
    lines = [f"TempNet learning rate on the validation split {reproduce_table.display_path(split / 'valid')} "
             f"(training on {reproduce_table.display_path(split / 'train')}); primary metric: mean of "
             f"{' and '.join(PRIMARY)}; tau moved: median x{MOVED_MEDIAN_FACTOR:g} either way or p95/p5 >= "
             f"{MOVED_SPREAD:g} at the end, on either side.", "",
             "| TempNet lr | primary | IR@1 | TR@1 | IR@10 | TR@10 | image tau: start -> end median, p95/p5 | "
             "text tau: start -> end median, p95/p5 | moved |", "|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for entry in candidates:
        metrics = entry["metrics"]
        taus = [f"{side['start_median']:.4f} -> {side['end_median']:.4f}, {side['end_spread']:.2f}"
                for side in entry["sides"].values()]
        lines.append(f"| {entry['lr']:g} | {100 * entry['primary']:.2f} | "
                     + " | ".join(f"{100 * metrics[title]:.1f}" for title in ("IR@1", "TR@1", "IR@10", "TR@10"))
                     + f" | {taus[0]} | {taus[1]} | {'yes' if entry['moved'] else 'no'} |")
    verdict = (f"Chosen: TempNet lr {chosen['lr']:g}." if chosen else
               "No candidate rate moved tau: none is chosen (widen --lrs).")
    return "\n".join([*lines, "", verdict]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=DEFAULT_LRS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", type=Path, default=reproduce_table.REPO_ROOT / "runs" / "openclipart-valid",
                        help="made by benchmarks.paper.validation_split when missing")
    parser.add_argument("--output-dir", type=Path,
                        default=reproduce_table.REPO_ROOT / "runs" / "pretrained-lr-selection")
    parser.add_argument("--config", type=Path, default=PRETRAINED_CONFIG)
    args, overrides = parser.parse_known_args(argv)
    if not (args.split / "valid").exists():
        validation_split.main(["--output", str(args.split)])
    split_overrides = [f"data.sources=[{{shards: {args.split / 'train'}}}]", f"eval.retrieval=[{args.split / 'valid'}]",
                       f"eval.zeroshot=[{args.split / 'valid'}]", "tempnet.start_epoch=0"]
    candidates = []
    for lr in args.lrs:
        sweep_dir = args.output_dir / f"lr-{lr:g}"
        reproduce_table.main(["--config", str(args.config), "--methods", "tempnet", "--seeds", str(args.seed),
                              "--output-dir", str(sweep_dir), *split_overrides, f"tempnet.lr={lr}", *overrides])
        [run] = json.loads((sweep_dir / "results.json").read_text())["runs"]
        candidates.append(candidate(lr, run, sweep_dir / run["name"]))
    chosen = choose(candidates)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "selection.json").write_text(json.dumps(
        {"split": reproduce_table.display_path(args.split), "seed": args.seed, "candidates": candidates,
         "chosen_lr": chosen["lr"] if chosen else None}, indent=1) + "\n")
    table = selection_markdown(candidates, chosen, args.split)
    (args.output_dir / "selection.md").write_text(table)
    print(table)
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main())
