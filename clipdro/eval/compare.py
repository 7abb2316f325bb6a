"""Paired comparison of result files: ``clipdro eval compare A.json B.json [A2.json B2.json ...]``.

Every metric of a result file is a function of its ``per_query`` ranks (docs/evaluation.md,
"Comparing two models"): recall@K and acc1 / acc5 are means of a per-query 0/1 hit vector,
``mean_per_class_recall`` is the mean over classes of the per-class mean of the top-1 hit vector.
:func:`per_query_metrics` rebuilds those vectors from a file (and checks that they reproduce its
metrics); :func:`paired_bootstrap` compares pairs (A = the method, B = the baseline; several pairs
= several seeds) on the same queries, with two intervals per metric.

Seeds and queries (the default with two or more pairs): :func:`clipdro.stats.seed_query_interval`
on the per-pair, per-query differences x[p, i] = a_pi - b_pi (for mean per-class recall their
linearisation, :func:`linearised_differences`): the spread of the per-pair differences with
Student's t at P - 1 degrees of freedom, plus the query effect common to all pairs.  It covers a
new training seed and a new query set of the same kind.

Queries only (the only interval with one pair): paired bootstrap over queries, seeds pooled.  Each
replicate draws n query indices with replacement (n = the number of queries of that metric:
captions for ``image_retrieval_*``, images otherwise) and applies the same draw to A and B of every
pair; the replicate's difference is the mean over pairs of metric(A_p) - metric(B_p) on that draw.
The interval is the percentile interval of the replicate differences.  For a mean metric this
difference is the resampled mean of the per-query difference averaged over pairs,
d_i = mean_p (a_pi - b_pi); for mean per-class recall the classes and their sizes depend only on
the draw (all files share the labels), so it is the mean over the classes drawn of (sum of d_i over
the class's draws) / (the class's draws), classes absent from a replicate being left out of its
average.  It covers query sampling for these seeds, not the variation between seeds.

A primary metric (``primary``: one metric, or several meaning their mean) is compared first and
flagged; a mean over metrics on two query sets (captions and images) takes each set's draws and
common query part as independent.

Speed: a statistic depends only on how often each distinct row (label, d_i of every metric) is
drawn, so identical queries are merged into types and a replicate is a vector of type counts:
Multinomial(n, type frequencies) when there are few types (the usual case: d_i takes at most
2P + 1 values per metric for P pairs), else n uniform indices counted per type; both are exactly
the resampling-with-replacement distribution.  Statistics of a chunk of replicates are one
matmul (and, per class, one ``np.add.reduceat``).  Pure numpy.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from clipdro.errors import UsageError
from clipdro.stats import seed_query_interval

PER_QUERY_FORMAT = "clipdro-per-query/1"  # clipdro.eval.results.PER_QUERY_FORMAT
RECALL_METRIC = re.compile(r"^(image|text)_retrieval_recall@(\d+)$")
ZEROSHOT_METRICS = ("acc1", "acc5", "mean_per_class_recall")
# Query sets, in output order, with the id that seeds each one's draws.
QUERY_SETS = {"captions": 0, "images": 1}
# At most this many drawn indices / weights in memory per chunk of replicates (32 MB of int64).
MAX_DRAWS_PER_CHUNK = 1 << 22
# Multinomial draws cost ~10x an index draw per cell: use them when types <= queries / 10.
MULTINOMIAL_TYPE_RATIO = 10
REPLICATES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class QueryMetric:
    """One aggregate metric in per-query form.

    ``values`` [n] float64: the metric is their mean, or, with ``groups`` [n] (class labels), the
    mean over the classes present of each class's mean.  ``queries`` names the query set
    (``captions`` or ``images``): metrics on the same set share the bootstrap draws."""

    queries: str
    values: np.ndarray
    groups: np.ndarray | None = None


SEEDS_AND_QUERIES = "seeds and queries"
QUERIES_ONLY = "queries only"


@dataclass(frozen=True)
class Comparison:
    """One metric (or the primary mean of several) compared over P pairs; all values are fractions
    (multiply by 100 for points)."""

    metric: str
    query_sets: tuple[tuple[str, int], ...]  # (query set, number of queries) the metric is computed on
    a: float  # mean over pairs of metric(A_p)
    b: float  # mean over pairs of metric(B_p)
    diff: float  # a - b
    low: float  # the default interval of diff: seeds and queries with >= 2 pairs, else queries only
    high: float
    query_low: float  # paired bootstrap interval over queries, seeds pooled
    query_high: float
    pair_diffs: tuple[float, ...]  # metric(A_p) - metric(B_p), per pair
    primary: bool = False

    @property
    def covers(self) -> str:
        """What (low, high) covers: seeds and queries with two or more pairs, else queries only."""
        return SEEDS_AND_QUERIES if len(self.pair_diffs) > 1 else QUERIES_ONLY

    @property
    def queries(self) -> str:
        return "+".join(name for name, _ in self.query_sets)

    @property
    def num_queries(self) -> int:
        return sum(count for _, count in self.query_sets)


def primary_name(metrics: Sequence[str]) -> str:
    """The name of a primary metric: the metric itself, or mean(m1, m2, ...) of several."""
    return metrics[0] if len(metrics) == 1 else f"mean({', '.join(metrics)})"


def metric_value(metric: QueryMetric) -> float:
    """The aggregate value of a per-query metric (what the result file's ``metrics`` holds)."""
    if metric.groups is None:
        return float(np.mean(metric.values))
    labels, inverse = np.unique(metric.groups, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(labels))
    hits = np.bincount(inverse, weights=metric.values, minlength=len(labels))
    return float(np.mean(hits / sizes))


def per_query_metrics(record: Mapping, source: str = "result") -> dict[str, QueryMetric]:
    """Every metric of a result record that its ``per_query`` section can recompute, in the record's
    metric order: retrieval recall@K (K <= the rank cap), zero-shot acc1, acc5 (when not null) and
    mean_per_class_recall.  Mean / median ranks are not compared.  Raises :class:`UsageError`
    naming ``source`` when the section is missing or malformed, or does not reproduce the metrics."""
    per_query = record.get("per_query")
    if not isinstance(per_query, dict) or "query_sha256" not in per_query:
        raise UsageError(f"{source} has no per_query section (written by an older clipdro eval; "
                         "re-run the evaluation with --output)")
    if per_query.get("format") != PER_QUERY_FORMAT:
        raise UsageError(f"{source}: per_query format {per_query.get('format')!r}, expected {PER_QUERY_FORMAT!r}")
    cap = per_query.get("rank_cap")
    task = record.get("task")
    metrics: dict[str, QueryMetric] = {}
    if task == "retrieval":
        ranks = {"image": _int_vector(per_query, "image_retrieval_rank", record.get("num_texts"), source),
                 "text": _int_vector(per_query, "text_retrieval_rank", record.get("num_images"), source)}
        for name, value in record["metrics"].items():
            match = RECALL_METRIC.match(name)
            if match is None or value is None or (cap is not None and int(match.group(2)) > cap):
                continue
            direction, k = match.group(1), int(match.group(2))
            metrics[name] = QueryMetric("captions" if direction == "image" else "images",
                                        (ranks[direction] < k).astype(np.float64))
    elif task in ("zeroshot", "linear-probe"):  # both store true-class ranks
        ranks = _int_vector(per_query, "true_class_rank", record.get("num_images"), source)
        labels = _int_vector(per_query, "label", record.get("num_images"), source)
        top1 = (ranks < 1).astype(np.float64)
        built = {"acc1": QueryMetric("images", top1),
                 "acc5": QueryMetric("images", (ranks < 5).astype(np.float64)),
                 "mean_per_class_recall": QueryMetric("images", top1, labels)}
        metrics = {name: built[name] for name, value in record["metrics"].items()
                   if name in built and value is not None}
    else:
        raise UsageError(f"{source}: task {task!r} cannot be compared "
                         "(retrieval, zeroshot or linear-probe results only)")
    for name, metric in metrics.items():
        stored, recomputed = record["metrics"][name], metric_value(metric)
        if not isinstance(stored, int | float) or not math.isclose(recomputed, stored, rel_tol=1e-9, abs_tol=1e-12):
            raise UsageError(f"{source}: per_query gives {name} = {recomputed!r} but metrics say {stored!r} "
                             "(edited or damaged file)")
    return metrics


def check_same_queries(records: Sequence[Mapping], sources: Sequence[str]) -> None:
    """Refuse (UsageError naming the file) records whose task, dataset name, query counts or
    ``per_query.query_sha256`` differ from the first record's.  The data path is not compared:
    the hash already pins the image list, captions and labels, wherever the set lies."""
    reference, reference_source = records[0], sources[0]
    keys = ("task", "dataset", "num_images", "num_texts")
    for record, source in zip(records[1:], sources[1:], strict=True):
        for key in keys:
            if record.get(key) != reference.get(key):
                raise UsageError(f"{source}: {key} {record.get(key)!r} differs from {reference_source}'s "
                                 f"{reference.get(key)!r}; compare needs results on the same queries")
        if record["per_query"].get("query_sha256") != reference["per_query"].get("query_sha256"):
            raise UsageError(f"{source}: query_sha256 differs from {reference_source}'s: evaluated on different "
                             "images, captions or labels (or in another order); compare needs the same queries")


def compare_results(records: Sequence[Mapping], sources: Sequence[str], replicates: int = REPLICATES,
                    seed: int = 0, confidence: float = CONFIDENCE, primary: Sequence[str] = ()) -> list[Comparison]:
    """Validate result records given as A, B, A2, B2, ... and compare them with :func:`paired_bootstrap`;
    ``primary`` (metric names, their mean) must name metrics present in every file."""
    if len(records) < 2 or len(records) % 2:
        raise UsageError(f"compare takes result files in pairs (A B [A2 B2 ...]), got {len(records)}: "
                         f"{sources[-1]} has no partner")
    metrics = [per_query_metrics(record, source) for record, source in zip(records, sources, strict=True)]
    check_same_queries(records, sources)
    pairs = [(metrics[i], metrics[i + 1]) for i in range(0, len(metrics), 2)]
    shared = [name for name in metrics[0] if all(name in found for found in metrics)]
    if not shared:
        raise UsageError(f"{', '.join(sources)}: no metric present in every file")
    for name in primary:
        if name not in shared:
            raise UsageError(f"--primary {name}: not a metric of every file (compared: {', '.join(shared)})")
    if len(set(primary)) != len(primary):
        raise UsageError(f"--primary names a metric twice: {', '.join(primary)}")
    return paired_bootstrap(pairs, replicates, seed, confidence, primary)


def paired_bootstrap(pairs: Sequence[tuple[Mapping[str, QueryMetric], Mapping[str, QueryMetric]]],
                     replicates: int = REPLICATES, seed: int = 0, confidence: float = CONFIDENCE,
                     primary: Sequence[str] = ()) -> list[Comparison]:
    """Compare A with B for every metric present in all files of ``pairs`` [(A_1, B_1), ...], with
    the intervals of the module docstring; ``primary`` metrics (their mean) first, flagged.  The
    bootstrap is deterministic for a given ``seed`` (each query set draws from
    ``np.random.default_rng([seed, QUERY_SETS[set]])``)."""
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    files = [metrics for pair in pairs for metrics in pair]
    names = [name for name in files[0] if all(name in metrics for metrics in files)]
    if any(name not in names for name in primary):
        raise ValueError(f"primary {list(primary)}: not all among the metrics {names}")
    draws: dict[str, np.ndarray] = {}  # metric -> [replicates] bootstrap differences
    for queries in sorted({files[0][name].queries for name in names}, key=QUERY_SETS.__getitem__):
        columns = [name for name in names if files[0][name].queries == queries]
        _check_same_queries(files, columns)
        differences = np.column_stack([
            np.mean([a[name].values - b[name].values for a, b in pairs], axis=0) for name in columns])
        grouped = [files[0][name].groups is not None for name in columns]
        groups = next((files[0][name].groups for name in columns if files[0][name].groups is not None), None)
        rng = np.random.default_rng([seed, QUERY_SETS[queries]])
        replicated = bootstrap_statistics(differences, groups, grouped, replicates, rng)
        draws.update((name, replicated[:, j]) for j, name in enumerate(columns))
    rows = [[name] for name in names if not (len(primary) == 1 and name == primary[0])]
    results = [_comparison(pairs, components, draws, confidence) for components in ([list(primary)] if primary
                                                                                    else []) + rows]
    if primary:
        results[0] = replace(results[0], primary=True)
    return results


def _check_same_queries(files: Sequence[Mapping[str, QueryMetric]], columns: Sequence[str]) -> None:
    for name in columns:
        sizes = {len(metrics[name].values) for metrics in files}
        if len(sizes) > 1:
            raise ValueError(f"{name}: files have different query counts {sorted(sizes)}")
        reference = files[0][name].groups
        if any((metrics[name].groups is None) != (reference is None)
               or (reference is not None and not np.array_equal(metrics[name].groups, reference))
               for metrics in files):
            raise ValueError(f"{name}: files have different class labels")


def _comparison(pairs: Sequence[tuple[Mapping[str, QueryMetric], Mapping[str, QueryMetric]]],
                components: Sequence[str], draws: Mapping[str, np.ndarray], confidence: float) -> Comparison:
    """The comparison of the mean of the ``components`` metrics (one metric: that metric)."""
    weight = 1 / len(components)
    a_values = [weight * sum(metric_value(a[name]) for name in components) for a, _ in pairs]
    b_values = [weight * sum(metric_value(b[name]) for name in components) for _, b in pairs]
    a, b = float(np.mean(a_values)), float(np.mean(b_values))
    query_draws = weight * sum(draws[name] for name in components)
    query_low, query_high = (float(value) for value in
                             np.quantile(query_draws, [(1 - confidence) / 2, (1 + confidence) / 2]))
    reference = pairs[0][0]
    query_sets = {}  # query set -> [P, n] weighted per-pair, per-query differences of its components
    for name in components:
        linearised = np.stack([linearised_differences(a[name], b[name]) for a, b in pairs])
        query_sets[reference[name].queries] = query_sets.get(reference[name].queries, 0) + weight * linearised
    low, high = query_low, query_high
    if len(pairs) > 1:
        interval = seed_query_interval(list(query_sets.values()), confidence)
        # Every metric is a fraction, so A - B lies in [-1, 1]: cutting the interval there loses no coverage.
        low, high = max(interval.low, -1.0), min(interval.high, 1.0)
    counts = tuple((queries, values.shape[1]) for queries, values in
                   sorted(query_sets.items(), key=lambda item: QUERY_SETS[item[0]]))
    return Comparison(primary_name(components), counts, a, b, a - b, low, high, query_low, query_high,
                      tuple(x - y for x, y in zip(a_values, b_values, strict=True)))


def linearised_differences(a: QueryMetric, b: QueryMetric) -> np.ndarray:
    """[n] per-query values whose mean is metric(A) - metric(B): a_i - b_i for a mean metric; for a
    class-averaged one (mean over the C classes of the class means m_c) the linearisation
    m + (x_i - m_c(i)) * n / (C * n_c(i)) of x = a - b, which carries each query's influence on the
    metric and so its share of the query-sampling variance (delta method)."""
    differences = a.values - b.values
    if a.groups is None:
        return differences
    labels, inverse = np.unique(a.groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(labels))
    class_means = np.bincount(inverse, weights=differences, minlength=len(labels)) / sizes
    scale = len(differences) / (len(labels) * sizes[inverse])
    return class_means.mean() + (differences - class_means[inverse]) * scale


def bootstrap_statistics(values: np.ndarray, groups: np.ndarray | None = None,
                         grouped: Sequence[bool] | None = None, replicates: int = REPLICATES,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """[replicates, m] bootstrap replicates of the statistic of each column of ``values`` [n, m]
    (or [n]): resample the n rows with replacement, then take the column mean, or for a column
    flagged in ``grouped`` the mean over the ``groups`` (labels [n]) drawn of each group's mean."""
    values = np.asarray(values, dtype=np.float64)
    values = values[:, None] if values.ndim == 1 else values
    count, width = values.shape
    grouped = np.zeros(width, dtype=bool) if grouped is None else np.asarray(grouped, dtype=bool)
    if grouped.any() and groups is None:
        raise ValueError("grouped columns need groups")
    rng = rng if rng is not None else np.random.default_rng()
    # Merge identical rows into types; rows sort by group first, so each group's types are contiguous.
    key = values if groups is None else np.column_stack([np.asarray(groups, dtype=np.float64), values])
    types, inverse, type_counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    type_values = types[:, -width:]
    starts = None
    if groups is not None:
        starts = np.flatnonzero(np.r_[True, types[1:, 0] != types[:-1, 0]])
    num_types = len(types)
    out = np.empty((replicates, width))
    if num_types * MULTINOMIAL_TYPE_RATIO <= count:
        chunk = max(1, MAX_DRAWS_PER_CHUNK // num_types)
        frequencies = type_counts / count
        for start in range(0, replicates, chunk):
            stop = min(start + chunk, replicates)
            weights = rng.multinomial(count, frequencies, size=stop - start)
            out[start:stop] = _statistics(weights, type_values, starts, grouped, count)
    else:
        chunk = max(1, MAX_DRAWS_PER_CHUNK // count)
        for start in range(0, replicates, chunk):
            stop = min(start + chunk, replicates)
            drawn = inverse[rng.integers(0, count, size=(stop - start, count))]
            drawn += (np.arange(stop - start, dtype=drawn.dtype) * num_types)[:, None]
            weights = np.bincount(drawn.ravel(), minlength=(stop - start) * num_types).reshape(-1, num_types)
            out[start:stop] = _statistics(weights, type_values, starts, grouped, count)
    return out


def _statistics(weights: np.ndarray, type_values: np.ndarray, starts: np.ndarray | None, grouped: np.ndarray,
                count: int) -> np.ndarray:
    """Statistics of each row of ``weights`` [r, types] (how often each type was drawn)."""
    weights = weights.astype(np.float64)
    out = np.empty((len(weights), type_values.shape[1]))
    plain = ~grouped
    if plain.any():
        out[:, plain] = weights @ type_values[:, plain] / count
    if grouped.any():
        sizes = np.add.reduceat(weights, starts, axis=1)  # [r, groups]: draws per group
        present = sizes > 0
        for column in np.flatnonzero(grouped):
            sums = np.add.reduceat(weights * type_values[:, column], starts, axis=1)
            means = np.divide(sums, sizes, out=np.zeros_like(sums), where=present)
            out[:, column] = means.sum(axis=1) / present.sum(axis=1)
    return out


def _int_vector(per_query: Mapping, key: str, length: object, source: str) -> np.ndarray:
    values = per_query.get(key)
    if (not isinstance(values, list) or len(values) != length
            or not all(isinstance(value, int) and not isinstance(value, bool) for value in values)):
        raise UsageError(f"{source}: per_query.{key} is not a list of {length} integers")
    return np.asarray(values, dtype=np.int64)


# --- tables -----------------------------------------------------------------------------------

def format_comparison(comparisons: Sequence[Comparison], fmt: str = "markdown", *, a_sources: Sequence[str] = (),
                      b_sources: Sequence[str] = (), replicates: int = REPLICATES, seed: int = 0,
                      confidence: float = CONFIDENCE) -> str:
    """Markdown (points rounded to 2 decimals, then a footer stating the files and what each interval
    covers) or CSV (full precision, one row per metric, the scheme in columns).  Values are in points
    (percent); A and B are means over pairs."""
    pairs = len(comparisons[0].pair_diffs) if comparisons else len(a_sources)
    level = f"{100 * confidence:g}%"
    has_primary = any(item.primary for item in comparisons)
    if fmt == "csv":
        return _comparison_csv(comparisons, pairs, has_primary, replicates, seed, confidence)
    if fmt != "markdown":
        raise UsageError(f"unknown table format {fmt!r} (markdown or csv)")
    intervals = [f"{level} CI ({SEEDS_AND_QUERIES})"] if pairs > 1 else []
    header = ["metric", "queries", "A", "B", "A - B", *intervals, f"{level} CI ({QUERIES_ONLY})"]
    header += ["A - B per pair"] if pairs > 1 else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for item in comparisons:
        row = [item.metric + (" (primary)" if item.primary else ""),
               " + ".join(f"{count} {queries}" for queries, count in item.query_sets),
               f"{100 * item.a:.2f}", f"{100 * item.b:.2f}", f"{100 * item.diff:+.2f}"]
        if pairs > 1:
            row.append(f"[{100 * item.low:+.2f}, {100 * item.high:+.2f}]")
        row.append(f"[{100 * item.query_low:+.2f}, {100 * item.query_high:+.2f}]")
        if pairs > 1:
            row.append(", ".join(f"{100 * value:+.2f}" for value in item.pair_diffs))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if a_sources:
        lines.append(f"A: {', '.join(a_sources)}. B: {', '.join(b_sources)}.")
    lines += _footer(comparisons, pairs, level, replicates, seed, has_primary)
    return "\n".join(lines) + "\n"


def _footer(comparisons: Sequence[Comparison], pairs: int, level: str, replicates: int, seed: int,
            has_primary: bool) -> list[str]:
    pooled = "1 pair" if pairs == 1 else f"{pairs} pairs (A, B: means over pairs)"
    lines = [f"Points (percent); {pooled}."]
    if pairs > 1:
        lines.append(f"{level} CI ({SEEDS_AND_QUERIES}), the interval to report: mean over pairs of A - B "
                     f"+- sqrt(t^2 * (variance of the per-pair A - B) / {pairs} + z^2 * (query effect common to "
                     f"all pairs)), t Student's quantile with {pairs - 1} degrees of freedom, z the normal one "
                     "(clipdro/stats.py); it covers the variation between training seeds and query sampling.")
    lines.append(f"{level} CI ({QUERIES_ONLY}): paired bootstrap over queries, {replicates} replicates, seed {seed}: "
                 "each replicate draws the queries (captions for image_retrieval, images otherwise) with "
                 "replacement once and applies that draw to A and B of every pair; its difference is the mean over "
                 "pairs of A - B; percentile interval of the replicate differences. "
                 + ("With 1 pair this is the only interval: it covers query sampling only, not the variation "
                    "between training seeds (compare one pair per seed to cover that)." if pairs == 1 else
                    "It does not cover the variation between training seeds."))
    if has_primary:
        primary = next(item.metric for item in comparisons if item.primary)
        lines.append(f"Primary metric (named with --primary before the comparison): {primary}; every other row is "
                     "secondary.")
    if any("mean_per_class_recall" in item.metric for item in comparisons):
        lines.append("mean_per_class_recall: per-class top-1 recall recomputed on each replicate and averaged "
                     "over the classes drawn in it" + ("; its seeds-and-queries interval uses its linearisation "
                                                      "per query." if pairs > 1 else "."))
    return lines


def _comparison_csv(comparisons: Sequence[Comparison], pairs: int, has_primary: bool, replicates: int, seed: int,
                    confidence: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "role", "queries", "num_queries", "pairs", "a_points", "b_points", "diff_points",
                     "ci_low_points", "ci_high_points", "ci_covers", "query_ci_low_points", "query_ci_high_points",
                     "confidence", "replicates", "seed", "pair_diffs_points"])
    for item in comparisons:
        role = ("primary" if item.primary else "secondary") if has_primary else ""
        writer.writerow([item.metric, role, item.queries, "+".join(str(count) for _, count in item.query_sets),
                         pairs, 100 * item.a, 100 * item.b, 100 * item.diff, 100 * item.low, 100 * item.high,
                         item.covers, 100 * item.query_low, 100 * item.query_high, confidence, replicates, seed,
                         ";".join(repr(100 * value) for value in item.pair_diffs)])
    return buffer.getvalue()
