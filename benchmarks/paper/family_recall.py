"""Retrieval recall@1 split by the query's family group, head or tail: the long-tail endpoint.

    python -m benchmarks.paper.family_recall runs/pretrained-zipf/*-seed*/eval_retrieval.json \\
        --families runs/openclipart-zipf/zipf_summary.json --output runs/pretrained-zipf/tail_recall.md

Each RESULT.json is a ``clipdro eval retrieval --output`` file (docs/evaluation.md, "Per-query
results"): per caption the rank of its image (IR, text -> image) and per image the rank of its
first caption (TR, image -> text); recall@1 of a query is rank < 1. A query's family is its
picture's test label (a caption's picture is its owner in eval.json), and the family's group is
benchmarks.paper.zipf_split.head_and_tail of the ``--families`` summary (families ranked by their
Zipf-split count; the last half are the tail). The per-query files must be on ``--data`` (default
the openclipart test split): their ``query_sha256`` is checked against it.

Per group, IR@1 is the mean over the group's captions, TR@1 over its pictures, and the group's
recall@1 is the mean of the two (the primary endpoint for the tail, as ``PRIMARY`` in
benchmarks/paper/reproduce_table.py is for all queries). The table lists every run, then per
method the mean ± std over its runs. A run's method and seed come from its folder,
``<method>-seed<k>`` (reproduce_table.py's layout). When ``--baseline`` (default clip) and another
method share seeds, each other method − baseline is compared on the tail and on the head with
:func:`clipdro.eval.compare.paired_bootstrap` on the group's queries only: seed k paired with seed k,
with two or more pairs its default interval covers seeds and queries (a t-interval over the
per-seed differences plus the query effect common to all seeds, clipdro/stats.py), and beside it
the paired bootstrap over queries with the seeds pooled.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.paper.validation_split import TEST_SPLIT
from benchmarks.paper.zipf_split import head_and_tail
from clipdro.data.evalset import EvalSet
from clipdro.eval import compare
from clipdro.eval.results import load_results, query_sha256

RUN_FOLDER = re.compile(r"^(?P<method>.+)-seed(?P<seed>\d+)$")
GROUPS = ("head", "tail")
# (column title, result-file metric) of recall@1 both ways; the group's endpoint is their mean.
RECALL_AT_1 = {"IR@1": "image_retrieval_recall@1", "TR@1": "text_retrieval_recall@1"}
BOOTSTRAP_SEED = 0


def label_groups(summary_path: Path) -> dict[int, str]:
    """Test label -> "head" or "tail", from a zipf_summary.json's families and Zipf counts."""
    families = json.loads(summary_path.read_text())["families"]
    head, _ = head_and_tail({family["family"]: family["zipf_count"] for family in families})
    return {family["test_label"]: "head" if family["family"] in head else "tail" for family in families}


def query_groups(evalset: EvalSet, groups_of_labels: dict[int, str]) -> dict[str, np.ndarray]:
    """Group of every query, by query set: ``captions`` (IR queries) and ``images`` (TR queries)."""
    _, text_to_image = evalset.flat_captions()
    images = np.array([groups_of_labels[label] for label in evalset.labels or []])
    if len(images) != len(evalset.images):
        raise SystemExit(f"{evalset.description} has no family label for every picture")
    return {"captions": images[text_to_image], "images": images}


def check_queries(record: dict, source: str, evalset: EvalSet) -> None:
    """Exit with one line unless ``record`` was evaluated on ``evalset``'s queries, in order."""
    texts, text_to_image = evalset.flat_captions()
    expected = query_sha256(evalset.images, texts=texts, text_to_image=text_to_image)
    if record.get("task") != "retrieval" or record.get("per_query", {}).get("query_sha256") != expected:
        raise SystemExit(f"{source}: not a retrieval result on {evalset.description} (query_sha256 differs)")


def group_metrics(record: dict, source: str, groups: dict[str, np.ndarray],
                  group: str) -> dict[str, compare.QueryMetric]:
    """IR@1 and TR@1 of ``record`` in per-query form, restricted to the queries of ``group``."""
    metrics = compare.per_query_metrics(record, source)
    restricted = {}
    for metric in RECALL_AT_1.values():
        found = metrics[metric]
        restricted[metric] = compare.QueryMetric(found.queries, found.values[groups[found.queries] == group])
    return restricted


def group_recall(record: dict, source: str, groups: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per group: IR@1, TR@1 (fractions) and their mean, "recall@1"."""
    recall = {}
    for group in GROUPS:
        metrics = group_metrics(record, source, groups, group)
        values = {title: compare.metric_value(metrics[metric]) for title, metric in RECALL_AT_1.items()}
        recall[group] = {**values, "recall@1": statistics.fmean(values.values())}
    return recall


def run_identity(source: str) -> tuple[str, int]:
    """(method, seed) of a result file in a ``<method>-seed<k>`` run folder."""
    match = RUN_FOLDER.match(Path(source).resolve().parent.name)
    if match is None:
        raise SystemExit(f"{source}: its folder is not named <method>-seed<k>")
    return match["method"], int(match["seed"])


def load_runs(sources: Sequence[str], evalset: EvalSet) -> dict[tuple[str, int], tuple[dict, str]]:
    """(method, seed) -> (record, source) of the result files, each checked against ``evalset``."""
    runs: dict[tuple[str, int], tuple[dict, str]] = {}
    for record, source in zip(load_results(sources), sources, strict=True):
        check_queries(record, source, evalset)
        identity = run_identity(source)
        if identity in runs:
            raise SystemExit(f"{source}: a second result of {identity[0]} seed {identity[1]}")
        runs[identity] = record, source
    return runs


def tail_recall_by_seed(sources: Sequence[str], evalset: EvalSet,
                        groups_of_labels: dict[int, str]) -> dict[str, dict[int, float]]:
    """Per method, per seed: tail recall@1 (the mean of IR@1 and TR@1 over tail-family queries)."""
    groups = query_groups(evalset, groups_of_labels)
    by_method: dict[str, dict[int, float]] = {}
    for (method, seed), (record, source) in sorted(load_runs(sources, evalset).items()):
        by_method.setdefault(method, {})[seed] = group_recall(record, source, groups)["tail"]["recall@1"]
    return by_method


def compare_methods(runs: dict[tuple[str, int], tuple[dict, str]], groups: dict[str, np.ndarray], baseline: str,
                    group: str) -> list[tuple[str, compare.Comparison]]:
    """(method, comparison) of every other method − ``baseline`` on ``group``'s queries: the mean of
    IR@1 and TR@1, seed k with seed k; methods without a shared seed are left out."""
    methods = sorted({method for method, _ in runs} - {baseline})
    found = []
    for method in methods:
        seeds = sorted(seed for name, seed in runs if name == method and (baseline, seed) in runs)
        if not seeds:
            continue
        pairs = [tuple(group_metrics(*runs[(name, seed)], groups, group) for name in (method, baseline))
                 for seed in seeds]
        comparison = compare.paired_bootstrap(pairs, seed=BOOTSTRAP_SEED, primary=tuple(RECALL_AT_1.values()))[0]
        found.append((method, comparison))
    return found


def points(value: float) -> str:
    return f"{100 * value:.2f}"


def recall_columns() -> list[tuple[str, str]]:
    """(group, measure) of the table columns: IR@1, TR@1 and their mean, per group, the tail last."""
    return [(group, measure) for group in GROUPS for measure in (*RECALL_AT_1, "recall@1")]


def runs_markdown(recalls: dict[tuple[str, int], dict]) -> list[str]:
    """The per-run table, then per method the mean ± std over its seeds (points)."""
    columns = recall_columns()
    header = "| {} | " + " | ".join(f"{group} {measure}" for group, measure in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header.format("run"), rule]
    for (method, seed), recall in sorted(recalls.items()):
        lines.append(f"| {method}-seed{seed} | " + " | ".join(points(recall[g][m]) for g, m in columns) + " |")
    lines += ["", header.format("method (seeds)"), rule]
    for method in sorted({method for method, _ in recalls}):
        mine = [recall for (name, _), recall in sorted(recalls.items()) if name == method]
        cells = []
        for group, measure in columns:
            values = [100 * recall[group][measure] for recall in mine]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.2f}{spread}")
        lines.append(f"| {method} ({len(mine)}) | " + " | ".join(cells) + " |")
    return lines


def comparisons_markdown(found: list[tuple[str, str, compare.Comparison]], baseline: str) -> list[str]:
    """The paired comparisons (group, method − baseline) in points, the tail first (primary)."""
    level = f"{100 * compare.CONFIDENCE:g} %"
    lines = ["", f"Paired differences from {baseline} on the mean of IR@1 and TR@1 over the group's queries "
             f"(points; the tail is the primary endpoint). {level} interval over seeds and queries (two or more "
             "seeds: t-interval over the per-seed differences plus the query effect common to all seeds, "
             f"clipdro/stats.py) and the paired bootstrap over queries with the seeds pooled "
             f"({compare.REPLICATES} replicates, seed {BOOTSTRAP_SEED}), which leaves out seed-to-seed variation:", "",
             f"| comparison | group | queries | difference | {level} CI (seeds and queries) | "
             f"{level} CI (queries only) | per seed |", "|---|---|---|---:|---|---|---|"]
    for group, method, item in found:
        seed_aware = f"[{100 * item.low:+.2f}, {100 * item.high:+.2f}]" if item.covers == compare.SEEDS_AND_QUERIES \
            else "– (one seed)"
        queries = " + ".join(f"{count} {name}" for name, count in item.query_sets)
        lines.append(f"| {method} − {baseline} | {group} | {queries} | {100 * item.diff:+.2f} | {seed_aware} | "
                     f"[{100 * item.query_low:+.2f}, {100 * item.query_high:+.2f}] | "
                     + ", ".join(f"{100 * value:+.2f}" for value in item.pair_diffs) + " |")
    return lines


def family_table(sources: Sequence[str], evalset: EvalSet, summary_path: Path, baseline: str = "clip") -> str:
    """The markdown of the module docstring for the result files ``sources``."""
    groups_of_labels = label_groups(summary_path)
    groups = query_groups(evalset, groups_of_labels)
    runs = load_runs(sources, evalset)
    recalls = {identity: group_recall(*runs[identity], groups) for identity in runs}
    tail = [family["family"] for family in json.loads(summary_path.read_text())["families"]
            if groups_of_labels[family["test_label"]] == "tail"]
    lines = [f"Recall@1 (%) by the query's family group ({summary_path}): tail = {', '.join(tail)}; "
             f"{int(np.sum(groups['images'] == 'tail'))} of {len(groups['images'])} test pictures and "
             f"{int(np.sum(groups['captions'] == 'tail'))} of {len(groups['captions'])} captions are tail "
             "queries. recall@1 = mean of IR@1 and TR@1.", "", *runs_markdown(recalls)]
    found = [(group, method, item) for group in reversed(GROUPS)
             for method, item in compare_methods(runs, groups, baseline, group)]
    if found:
        lines += comparisons_markdown(found, baseline)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="clipdro eval retrieval result files, in <method>-seed<k> folders")
    parser.add_argument("--families", type=Path, required=True, help="a zipf_split summary (zipf_summary.json)")
    parser.add_argument("--data", type=Path, default=TEST_SPLIT, help="the evaluation set the results were made on")
    parser.add_argument("--baseline", default="clip", help="the method the others are compared with")
    parser.add_argument("--output", type=Path, help="write the markdown here (it is printed either way)")
    args = parser.parse_args(argv)
    table = family_table(args.results, EvalSet.load(args.data), args.families, args.baseline)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
