"""`clipdro eval compare`: the paired bootstrap on hand-made per-query vectors (difference, interval,
identical files, constant shift, determinism, pooled seeds, per-class recall), the checks that refuse
mismatched files, and end to end on result files written by `clipdro eval retrieval / zeroshot` with
the random-init clipdro-tiny-vit (random weights: no accuracy checks)."""

import csv
import io
import json

import numpy as np
import pytest

from clipdro.cli import main
from clipdro.errors import UsageError
from clipdro.eval import compare
from clipdro.eval.compare import (
    QueryMetric,
    bootstrap_statistics,
    check_same_queries,
    compare_results,
    format_comparison,
    metric_value,
    paired_bootstrap,
    per_query_metrics,
)
from clipdro.stats import seed_query_interval
from tests.evalset_factory import write_tiny_evalset


def one_metric(values, groups=None, queries="images", name="m"):
    return {name: QueryMetric(queries, np.asarray(values, dtype=np.float64),
                              None if groups is None else np.asarray(groups))}


# --- the bootstrap on hand-made vectors -------------------------------------------------------

A_HITS = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]  # 6 / 10
B_HITS = [0, 0, 1, 0, 1, 1, 0, 0, 1, 0]  # 4 / 10


def test_difference_is_the_mean_difference_and_the_interval_contains_it():
    [result] = paired_bootstrap([(one_metric(A_HITS), one_metric(B_HITS))], replicates=2000, seed=0)
    assert (result.a, result.b) == (pytest.approx(0.6), pytest.approx(0.4))
    assert result.diff == pytest.approx(0.2)  # per query: +1 three times, -1 once -> 2 / 10
    assert result.pair_diffs == (pytest.approx(0.2),)
    assert result.low < result.diff < result.high
    assert -1 <= result.low and result.high <= 1
    assert (result.metric, result.queries, result.num_queries) == ("m", "images", 10)


def test_identical_inputs_give_zero_with_a_zero_width_interval():
    [result] = paired_bootstrap([(one_metric(A_HITS), one_metric(A_HITS))], replicates=500, seed=3)
    assert (result.diff, result.low, result.high) == (0.0, 0.0, 0.0)


def test_a_constant_shift_is_found_exactly():
    base = np.random.default_rng(0).normal(size=50)  # continuous values: one type per query
    [result] = paired_bootstrap([(one_metric(base + 1), one_metric(base))], replicates=500, seed=1)
    assert result.diff == pytest.approx(1.0)
    assert result.low == result.high == 1.0
    # All hits against all misses: +100 points, whatever the draw.
    [result] = paired_bootstrap([(one_metric([1] * 7), one_metric([0] * 7))], replicates=100)
    assert (result.diff, result.low, result.high) == (1.0, 1.0, 1.0)


def test_the_bootstrap_is_deterministic_under_its_seed():
    pairs = [(one_metric(A_HITS), one_metric(B_HITS))]
    first = paired_bootstrap(pairs, replicates=1000, seed=7)
    assert paired_bootstrap(pairs, replicates=1000, seed=7) == first
    values = np.random.default_rng(0).normal(size=(300, 2))
    assert np.array_equal(bootstrap_statistics(values, replicates=50, rng=np.random.default_rng(5)),
                          bootstrap_statistics(values, replicates=50, rng=np.random.default_rng(5)))
    assert not np.array_equal(bootstrap_statistics(values, replicates=50, rng=np.random.default_rng(5)),
                              bootstrap_statistics(values, replicates=50, rng=np.random.default_rng(6)))


def test_pooled_seeds_average_the_pairs_on_one_shared_draw():
    rng = np.random.default_rng(0)
    a1, b1, a2, b2 = (rng.integers(0, 2, 40) for _ in range(4))
    pooled = paired_bootstrap([(one_metric(a1), one_metric(b1)), (one_metric(a2), one_metric(b2))],
                              replicates=3000, seed=4)[0]
    assert pooled.pair_diffs == (pytest.approx(np.mean(a1) - np.mean(b1)), pytest.approx(np.mean(a2) - np.mean(b2)))
    assert pooled.diff == pytest.approx(np.mean(pooled.pair_diffs))
    assert pooled.a == pytest.approx((np.mean(a1) + np.mean(a2)) / 2)
    # The stated scheme: one draw of the queries per replicate, applied to both pairs, difference
    # averaged over pairs. For a mean metric that is the bootstrap of the pair-averaged per-query
    # difference: the same seed gives the very same interval (halves are exact in binary).
    averaged = paired_bootstrap([(one_metric((a1 + a2) / 2), one_metric((b1 + b2) / 2))], replicates=3000,
                                seed=4)[0]
    assert (averaged.low, averaged.high) == (averaged.query_low, averaged.query_high)  # 1 pair: queries only
    assert (averaged.low, averaged.high) == (pooled.query_low, pooled.query_high)
    assert pooled.query_low <= pooled.diff <= pooled.query_high
    # The default interval of 2 pairs: seeds and queries, from the per-pair, per-query differences.
    expected = seed_query_interval([np.stack([a1 - b1, a2 - b2]).astype(np.float64)])
    assert (pooled.low, pooled.high) == pytest.approx((expected.low, expected.high))
    assert (pooled.covers, averaged.covers) == ("seeds and queries", "queries only")


def naive_pooled_class_recall(pairs, labels, replicates, seed):
    """The scheme written out with a loop: draw indices, recompute mean per-class recall of every file
    on them (classes absent from the draw left out), average A - B over pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicates):
        drawn = rng.integers(0, len(labels), len(labels))
        classes = np.unique(labels[drawn])

        def recall(hits, drawn=drawn, classes=classes):
            return np.mean([hits[drawn][labels[drawn] == c].mean() for c in classes])
        out.append(np.mean([recall(a) - recall(b) for a, b in pairs]))
    return np.quantile(out, [0.025, 0.975])


@pytest.mark.parametrize("multinomial", [True, False])
def test_mean_per_class_recall_follows_the_stated_scheme(multinomial, monkeypatch):
    # Both ways of drawing (multinomial over merged query types, or query indices) give the
    # distribution of the loop above.
    monkeypatch.setattr(compare, "MULTINOMIAL_TYPE_RATIO", 1 if multinomial else 10 ** 9)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 200)
    hits = [rng.integers(0, 2, 200) for _ in range(4)]
    pairs = [(hits[0], hits[1]), (hits[2], hits[3])]
    as_metrics = [(one_metric(a, labels), one_metric(b, labels)) for a, b in pairs]
    [result] = paired_bootstrap(as_metrics, replicates=4000, seed=0)
    expected = np.mean([metric_value(one_metric(a, labels)["m"]) - metric_value(one_metric(b, labels)["m"])
                        for a, b in pairs])
    assert result.diff == pytest.approx(expected)
    low, high = naive_pooled_class_recall(pairs, labels, 4000, seed=11)
    assert result.query_low == pytest.approx(low, abs=0.01) and result.query_high == pytest.approx(high, abs=0.01)


def test_linearised_class_recall_has_the_metric_as_mean_and_the_bootstrap_variance():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 8, 600)
    rates = rng.uniform(0.1, 0.9, 8)
    a, b = (one_metric(rng.random(600) < rates[labels] + shift, labels)["m"] for shift in (0.05, 0.0))
    linearised = compare.linearised_differences(a, b)
    assert linearised.mean() == pytest.approx(metric_value(a) - metric_value(b), abs=1e-12)
    # Its variance / n is the delta-method variance of the metric difference under query resampling.
    draws = bootstrap_statistics(a.values - b.values, labels, [True], replicates=20_000, rng=np.random.default_rng(0))
    assert linearised.var() / 600 == pytest.approx(draws.var(), rel=0.05)
    # A mean metric: the plain per-query difference.
    plain_a, plain_b = one_metric(A_HITS)["m"], one_metric(B_HITS)["m"]
    assert compare.linearised_differences(plain_a, plain_b).tolist() == (np.array(A_HITS) - B_HITS).tolist()


def test_per_class_mean_by_hand_and_classes_absent_from_a_draw():
    # class 0: hits 1, 0 -> 0.5; class 1: 1 -> 1.0; class 2: 0 -> 0.0
    metric = QueryMetric("images", np.array([1.0, 0.0, 1.0, 0.0]), np.array([0, 0, 1, 2]))
    assert metric_value(metric) == pytest.approx(0.5)
    # A draw of queries 0, 0, 2, 2 (class 2 absent): mean over classes 0 and 1 = (1 + 1) / 2.
    values = metric.values[:, None]
    drawn = compare._statistics(np.array([[2, 0, 2, 0]]), values, np.array([0, 2, 3]), np.array([True]), 4)
    assert drawn[0, 0] == 1.0
    # Tiny sets: many draws lose a class, none gives NaN.
    draws = bootstrap_statistics(metric.values, metric.groups, [True], replicates=500, rng=np.random.default_rng(0))
    assert np.isfinite(draws).all()


def planted_pairs(per_pair_points, queries=1000, seed=0):
    """Pairs on ``queries`` images whose A - B is exactly the given points per pair: A is B with that many
    misses turned into hits (or hits into misses), at different queries for each pair."""
    rng = np.random.default_rng(seed)
    pairs = []
    for points in per_pair_points:
        b = (rng.random(queries) < 0.5).astype(np.float64)
        a = b.copy()
        flip = rng.permutation(np.flatnonzero(b == (0 if points > 0 else 1)))[:round(abs(points) * queries / 100)]
        a[flip] = 1 - a[flip]
        pairs.append((one_metric(a), one_metric(b)))
    return pairs


def test_planted_seed_differences_give_an_interval_containing_zero():
    # Per-seed differences of +6, +6 and -4 points: the mean is +2.67, but with 3 seeds that spread the
    # difference expected from a new seed is not known to be positive.  The query-only interval (seeds
    # pooled) excludes 0: it does not see the seed-to-seed spread.
    [result] = paired_bootstrap(planted_pairs([6, 6, -4]), replicates=4000, seed=0)
    assert [100 * value for value in result.pair_diffs] == pytest.approx([6, 6, -4])
    assert 100 * result.diff == pytest.approx(8 / 3)
    assert result.covers == "seeds and queries"
    assert result.low < 0 < result.high
    assert 0 < result.query_low < result.diff < result.query_high
    # The seed part alone: t_{2, 0.975} * SD(6, 6, -4) / sqrt(3) = 14.3 points; the common query part is
    # 0 here (the flipped queries differ from pair to pair).
    half = 4.302652729749464 * np.std([6, 6, -4], ddof=1) / np.sqrt(3)
    assert 100 * result.high == pytest.approx(8 / 3 + half, abs=0.05)
    # Five seeds that agree: the interval excludes 0.
    [agreeing] = paired_bootstrap(planted_pairs([3, 4, 3, 5, 4], seed=1), replicates=1000, seed=0)
    assert 0 < agreeing.low < agreeing.diff < agreeing.high


def test_a_primary_mean_of_two_query_sets_comes_first():
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(3):
        files = []
        for shift in (0.1, 0.0):
            files.append({"image_retrieval_recall@1": QueryMetric("captions", (rng.random(50) < 0.4 + shift) * 1.0),
                          "text_retrieval_recall@1": QueryMetric("images", (rng.random(20) < 0.5 + shift) * 1.0),
                          "text_retrieval_recall@5": QueryMetric("images", (rng.random(20) < 0.8) * 1.0)})
        pairs.append(tuple(files))
    primary = ("image_retrieval_recall@1", "text_retrieval_recall@1")
    results = paired_bootstrap(pairs, replicates=2000, seed=0, primary=primary)
    plain = paired_bootstrap(pairs, replicates=2000, seed=0)
    assert [item.metric for item in results] == ["mean(image_retrieval_recall@1, text_retrieval_recall@1)",
                                                 *(item.metric for item in plain)]
    assert [item.primary for item in results] == [True, False, False, False]
    assert results[1:] == plain  # the secondaries are unchanged
    first, components = results[0], plain[:2]
    assert first.query_sets == (("captions", 50), ("images", 20)) and first.num_queries == 70
    assert first.diff == pytest.approx((components[0].diff + components[1].diff) / 2)
    assert first.pair_diffs == pytest.approx(np.mean([c.pair_diffs for c in components], axis=0))
    # Seeds and queries: the per-pair sums of the two halves, each query set with its own common part.
    halves = [0.5 * np.stack([a[name].values - b[name].values for a, b in pairs]) for name in primary]
    expected = seed_query_interval(halves)
    assert (first.low, first.high) == pytest.approx((expected.low, expected.high))
    # Queries only: the mean of the two metrics' replicates (independent draws of captions and images).
    def pooled(name):
        return np.mean([a[name].values - b[name].values for a, b in pairs], axis=0)
    captions = bootstrap_statistics(pooled(primary[0]), replicates=2000, rng=np.random.default_rng([0, 0]))[:, 0]
    images = bootstrap_statistics(np.column_stack([pooled(primary[1]), pooled("text_retrieval_recall@5")]),
                                  replicates=2000, rng=np.random.default_rng([0, 1]))[:, 0]
    assert (first.query_low, first.query_high) == pytest.approx(np.quantile((captions + images) / 2, [0.025, 0.975]))
    # One primary metric: moved first, not repeated.
    single = paired_bootstrap(pairs, replicates=200, seed=0, primary=["text_retrieval_recall@5"])
    assert [item.metric for item in single] == ["text_retrieval_recall@5", "image_retrieval_recall@1",
                                                "text_retrieval_recall@1"]
    assert single[0].primary and not single[1].primary
    table = format_comparison(results, replicates=2000, seed=0)
    lines = table.splitlines()
    assert lines[0] == ("| metric | queries | A | B | A - B | 95% CI (seeds and queries) | 95% CI (queries only) "
                        "| A - B per pair |")
    assert lines[2].startswith("| mean(image_retrieval_recall@1, text_retrieval_recall@1) (primary) | "
                               "50 captions + 20 images | ")
    assert ("Primary metric (named with --primary before the comparison): mean(image_retrieval_recall@1, "
            "text_retrieval_recall@1); every other row is secondary.") in table
    assert "it covers the variation between training seeds and query sampling" in table
    rows = list(csv.DictReader(io.StringIO(format_comparison(results, "csv", replicates=2000, seed=0))))
    assert [row["role"] for row in rows] == ["primary", "secondary", "secondary", "secondary"]
    assert (rows[0]["queries"], rows[0]["num_queries"], rows[0]["ci_covers"]) == ("captions+images", "50+20",
                                                                                  "seeds and queries")
    assert float(rows[0]["ci_low_points"]) == pytest.approx(100 * first.low)
    assert float(rows[0]["query_ci_high_points"]) == pytest.approx(100 * first.query_high)


def test_bootstrap_inputs_are_checked():
    with pytest.raises(ValueError, match="replicates"):
        paired_bootstrap([(one_metric(A_HITS), one_metric(B_HITS))], replicates=0)
    with pytest.raises(ValueError, match="query counts"):
        paired_bootstrap([(one_metric(A_HITS), one_metric(B_HITS[:-1]))])
    with pytest.raises(ValueError, match="class labels"):
        paired_bootstrap([(one_metric(A_HITS, [0] * 10), one_metric(B_HITS, [1] * 10))])


# --- result records: per_query -> metrics, and the refusals ----------------------------------

def retrieval_record(image_ranks, text_ranks, cap=10, ks=(1, 5, 10), dataset="set", sha="abc"):
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(np.mean(np.minimum(image_ranks, cap or 10 ** 9) < k))
        metrics[f"text_retrieval_recall@{k}"] = float(np.mean(np.minimum(text_ranks, cap or 10 ** 9) < k))
    return {"task": "retrieval", "dataset": dataset, "num_images": len(text_ranks), "num_texts": len(image_ranks),
            "metrics": metrics,
            "per_query": {"format": "clipdro-per-query/1", "query_sha256": sha, "rank_cap": cap,
                          "image_retrieval_rank": list(image_ranks), "text_retrieval_rank": list(text_ranks)}}


def test_per_query_metrics_rebuild_the_recalls():
    record = retrieval_record([0, 3, 10, 1, 10, 4], [0, 10, 2])
    metrics = per_query_metrics(record, "r.json")
    assert list(metrics) == list(record["metrics"])
    assert metrics["image_retrieval_recall@5"].queries == "captions"
    assert metrics["text_retrieval_recall@5"].queries == "images"
    assert metrics["image_retrieval_recall@5"].values.tolist() == [1, 1, 0, 1, 0, 1]
    # A K above the cap cannot be recomputed from capped ranks, so it is not compared.
    record["metrics"]["image_retrieval_recall@20"] = 0.5
    assert "image_retrieval_recall@20" not in per_query_metrics(record, "r.json")


def zeroshot_record(ranks, labels, sha="abc"):
    from clipdro.eval.zeroshot import metrics_from_ranks

    metrics = metrics_from_ranks(np.array(ranks), labels, num_classes=6)
    return {"task": "zeroshot", "dataset": "set", "num_images": len(ranks), "num_classes": 6, "metrics": metrics,
            "per_query": {"format": "clipdro-per-query/1", "query_sha256": sha, "rank_cap": None,
                          "label": list(labels), "true_class_rank": list(ranks)}}


def test_per_query_metrics_rebuild_zeroshot_metrics_and_skip_a_null_acc5():
    record = zeroshot_record([0, 2, 0, 5, 1], [0, 0, 1, 1, 2])
    metrics = per_query_metrics(record)
    assert list(metrics) == ["acc1", "acc5", "mean_per_class_recall"]
    assert metrics["mean_per_class_recall"].groups.tolist() == [0, 0, 1, 1, 2]
    record["metrics"]["acc5"] = None  # fewer than 5 classes
    assert list(per_query_metrics(record)) == ["acc1", "mean_per_class_recall"]


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.pop("per_query"), "r.json has no per_query section"),
    (lambda r: r["per_query"].update(format="other/9"), "r.json: per_query format 'other/9'"),
    (lambda r: r["per_query"]["image_retrieval_rank"].pop(), r"r.json: per_query.image_retrieval_rank is not a list"),
    (lambda r: r["per_query"]["text_retrieval_rank"].__setitem__(0, 1.5), "text_retrieval_rank is not a list"),
    (lambda r: r["metrics"].update({"text_retrieval_recall@1": 0.9}),
     "r.json: per_query gives text_retrieval_recall@1"),
    (lambda r: r.update(task="report"), "task 'report' cannot be compared"),
])
def test_damaged_records_are_refused_naming_the_file(damage, message):
    record = retrieval_record([0, 3, 10, 1], [0, 10])
    damage(record)
    with pytest.raises(UsageError, match=message):
        per_query_metrics(record, "r.json")


@pytest.mark.parametrize("change, message", [
    ({"dataset": "other"}, "b.json: dataset 'other' differs from a.json's 'set'"),
    ({"sha": "def"}, "b.json: query_sha256 differs from a.json's"),
])
def test_records_on_other_queries_are_refused(change, message):
    a = retrieval_record([0, 3, 10, 1], [0, 10])
    b = retrieval_record([0, 3, 10, 1], [0, 10], **change)
    with pytest.raises(UsageError, match=message):
        check_same_queries([a, b], ["a.json", "b.json"])
    c = retrieval_record([0, 3, 10], [0, 10])
    with pytest.raises(UsageError, match="c.json: num_texts 3 differs from a.json's 4"):
        compare_results([a, c], ["a.json", "c.json"])
    with pytest.raises(UsageError, match="c.json has no partner"):
        compare_results([a, a, c], ["a.json", "b.json", "c.json"])


def test_only_metrics_in_every_file_are_compared_and_tables_say_how():
    a = retrieval_record([0, 3, 10, 1], [0, 10])
    b = retrieval_record([0, 3, 10, 1], [0, 10], ks=(1, 5), cap=5)
    results = compare_results([a, b], ["a.json", "b.json"], replicates=200, seed=0)
    assert [item.metric for item in results] == [f"{d}_retrieval_recall@{k}" for k in (1, 5) for d in ("image", "text")]
    table = format_comparison(results, a_sources=["a.json"], b_sources=["b.json"], replicates=200, seed=0)
    lines = table.splitlines()
    assert lines[0] == "| metric | queries | A | B | A - B | 95% CI (queries only) |"
    assert lines[2] == "| image_retrieval_recall@1 | 4 captions | 25.00 | 25.00 | +0.00 | [+0.00, +0.00] |"
    assert "With 1 pair this is the only interval: it covers query sampling only" in table
    assert "A: a.json. B: b.json." in table and "200 replicates, seed 0" in table
    rows = list(csv.DictReader(io.StringIO(format_comparison(results, "csv", replicates=200, seed=0))))
    assert rows[0]["metric"] == "image_retrieval_recall@1" and float(rows[0]["a_points"]) == 25.0
    assert (rows[0]["pairs"], rows[0]["replicates"], rows[0]["num_queries"]) == ("1", "200", "4")
    assert (rows[0]["ci_covers"], rows[0]["role"]) == ("queries only", "")
    assert (rows[0]["ci_low_points"], rows[0]["ci_high_points"]) == (rows[0]["query_ci_low_points"],
                                                                     rows[0]["query_ci_high_points"])


# --- end to end: clipdro eval retrieval / zeroshot -> clipdro eval compare ------------------

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Retrieval (seeds 0, 1, 2; seed 0 also with --exact-ranks) and zero-shot (seeds 0, 1) result files."""
    root = tmp_path_factory.mktemp("compare")
    data = root / "set"
    write_tiny_evalset(data, num_images=8)
    files = {}
    for task, runs in (("retrieval", [("0", []), ("1", []), ("2", []), ("0", ["--exact-ranks"])]),
                       ("zeroshot", [("0", []), ("1", [])])):
        for seed, extra in runs:
            name = f"{task}{seed}{'-exact' if extra else ''}"
            files[name] = root / f"{name}.json"
            argv = ["eval", task, "--model", "clipdro-tiny-vit", "--seed", seed, "--data", str(data), "--device", "cpu",
                    "--batch-size", "4", *extra, "--output", str(files[name])]
            assert main(argv) == 0
    files["data"] = data
    return files


def test_per_query_in_result_files_reproduces_the_metrics_exactly(results):
    for name in ("retrieval0", "retrieval1", "retrieval0-exact"):
        record = json.loads(results[name].read_text())
        per_query = record["per_query"]
        for k in (1, 5, 10):
            for direction in ("image", "text"):
                ranks = np.array(per_query[f"{direction}_retrieval_rank"])
                assert record["metrics"][f"{direction}_retrieval_recall@{k}"] == float(np.mean(ranks < k))
    exact = json.loads(results["retrieval0-exact"].read_text())
    capped = json.loads(results["retrieval0"].read_text())
    assert exact["per_query"]["rank_cap"] is None and capped["per_query"]["rank_cap"] == 10
    exact_ranks = np.array(exact["per_query"]["image_retrieval_rank"])
    assert exact["metrics"]["image_retrieval_mean_rank"] == float(np.mean(exact_ranks + 1))
    assert capped["per_query"]["image_retrieval_rank"] == np.minimum(exact_ranks, 10).tolist()
    assert capped["per_query"]["query_sha256"] == exact["per_query"]["query_sha256"]


def test_eval_seed_makes_a_random_init_reproducible(results, tmp_path):
    again = tmp_path / "again.json"
    argv = ["eval", "retrieval", "--model", "clipdro-tiny-vit", "--seed", "1", "--data", str(results["data"]),
            "--device", "cpu", "--batch-size", "4", "--output", str(again)]
    assert main(argv) == 0
    first, second = json.loads(results["retrieval1"].read_text()), json.loads(again.read_text())
    assert second["seed"] == 1
    assert (second["metrics"], second["per_query"]) == (first["metrics"], first["per_query"])


def run_compare(capsys, *argv):
    code = main(["eval", "compare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_compare_retrieval_results(results, capsys):
    code, out, _ = run_compare(capsys, results["retrieval1"], results["retrieval0"], "--bootstrap", "500")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "| metric | queries | A | B | A - B | 95% CI (queries only) |"
    assert [line.split(" | ")[0] for line in lines[2:8]] == [
        f"| {d}_retrieval_recall@{k}" for k in (1, 5, 10) for d in ("image", "text")]
    assert lines[2].split(" | ")[1] == "16 captions" and lines[3].split(" | ")[1] == "8 images"
    a = json.loads(results["retrieval1"].read_text())["metrics"]
    b = json.loads(results["retrieval0"].read_text())["metrics"]
    for line in lines[2:8]:
        metric, _, a_cell, b_cell, diff_cell, interval = line.strip("| ").split(" | ")
        assert (float(a_cell), float(b_cell)) == (round(100 * a[metric], 2), round(100 * b[metric], 2))
        assert float(diff_cell) == pytest.approx(100 * (a[metric] - b[metric]), abs=0.006)
        low, high = (float(value) for value in interval.strip("[]").split(", "))
        assert low <= float(diff_cell) + 1e-9 and float(diff_cell) - 1e-9 <= high
    assert "A: " + str(results["retrieval1"]) in out and "500 replicates, seed 0" in out


def test_compare_a_file_with_itself_gives_zero(results, capsys):
    code, out, _ = run_compare(capsys, results["zeroshot0"], results["zeroshot0"], "--bootstrap", "200")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| acc") or line.startswith("| mean_per")]
    assert len(rows) == 2  # acc1 and mean_per_class_recall: acc5 is null with the set's 3 classes
    assert all(row.endswith("| +0.00 | [+0.00, +0.00] |") for row in rows)
    assert "averaged over the classes drawn" in out


def test_compare_pooled_seeds_csv_output_and_seed(results, capsys, tmp_path):
    table = tmp_path / "cmp.csv"
    pairs = [results["retrieval1"], results["retrieval0"], results["retrieval2"], results["retrieval0-exact"]]
    argv = [*pairs, "--bootstrap", "300", "--seed", "5", "--format", "csv", "--output", table]
    code, out, _ = run_compare(capsys, *argv)
    assert (code, out) == (0, f"wrote {table}\n")
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [row["metric"] for row in rows][:2] == ["image_retrieval_recall@1", "text_retrieval_recall@1"]
    records = [json.loads(path.read_text())["metrics"] for path in pairs]
    for row in rows:
        pair_diffs = [records[0][row["metric"]] - records[1][row["metric"]],
                      records[2][row["metric"]] - records[3][row["metric"]]]
        assert float(row["diff_points"]) == pytest.approx(100 * np.mean(pair_diffs))
        assert [float(x) for x in row["pair_diffs_points"].split(";")] == pytest.approx([100 * d for d in pair_diffs])
        assert (row["pairs"], row["seed"], row["replicates"]) == ("2", "5", "300")
        assert row["ci_covers"] == "seeds and queries"
        low, high = float(row["ci_low_points"]), float(row["ci_high_points"])
        assert low <= float(row["diff_points"]) <= high
        # the half-width is at least the seed part's t_{1, 0.975} * |d_1 - d_2| / 2, cut to [-100, +100] points
        half = 12.706 * abs(pair_diffs[0] - pair_diffs[1]) / 2 * 100
        diff = float(row["diff_points"])
        assert low <= max(diff - half, -100) + 1e-9 and high >= min(diff + half, 100) - 1e-9
        assert -100 <= low and high <= 100
    first = table.read_text()
    assert run_compare(capsys, *argv)[0] == 0
    assert table.read_text() == first  # deterministic under --seed


def test_compare_seeds_with_a_primary_metric(results, capsys):
    pairs = [results["retrieval1"], results["retrieval0"], results["retrieval2"], results["retrieval0-exact"]]
    code, out, _ = run_compare(capsys, *pairs, "--primary", "image_retrieval_recall@1,text_retrieval_recall@1",
                               "--bootstrap", "300")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("| metric | queries | A | B | A - B | 95% CI (seeds and queries) | 95% CI (queries only) "
                        "| A - B per pair |")
    cells = lines[2].strip("| ").split(" | ")
    assert cells[:2] == ["mean(image_retrieval_recall@1, text_retrieval_recall@1) (primary)", "16 captions + 8 images"]
    records = [json.loads(path.read_text())["metrics"] for path in pairs]
    primary = [(r["image_retrieval_recall@1"] + r["text_retrieval_recall@1"]) / 2 for r in records]
    assert float(cells[4]) == pytest.approx(100 * ((primary[0] - primary[1]) + (primary[2] - primary[3])) / 2,
                                            abs=0.006)
    assert [line.split(" | ")[0] for line in lines[3:9]] == [
        f"| {d}_retrieval_recall@{k}" for k in (1, 5, 10) for d in ("image", "text")]
    assert "Primary metric (named with --primary before the comparison)" in out


def test_bad_compare_input_exits_2_with_one_line_naming_the_file(results, tmp_path, capsys):
    retrieval, zeroshot = results["retrieval0"], results["zeroshot0"]
    old = tmp_path / "old.json"
    record = json.loads(retrieval.read_text())
    del record["per_query"]
    old.write_text(json.dumps(record))
    other_set = tmp_path / "other.json"
    record = json.loads(retrieval.read_text())
    record["per_query"]["query_sha256"] = "0" * 64
    other_set.write_text(json.dumps(record))
    cases = [
        ([retrieval], f"got 1: {retrieval} has no partner"),
        ([retrieval, retrieval, zeroshot], f"{zeroshot} has no partner"),
        ([retrieval, tmp_path / "missing.json"], f"no such result file: {tmp_path / 'missing.json'}"),
        ([retrieval, results["data"] / "eval.json"], f"{results['data'] / 'eval.json'} is not a clipdro eval result"),
        ([retrieval, old], f"{old} has no per_query section"),
        ([retrieval, other_set], f"{other_set}: query_sha256 differs from {retrieval}'s"),
        ([retrieval, zeroshot], f"{zeroshot}: task 'zeroshot' differs from {retrieval}'s 'retrieval'"),
        ([retrieval, retrieval, "--bootstrap", "0"], "--bootstrap must be >= 1"),
        ([retrieval, retrieval, "--primary", "acc1"], "--primary acc1: not a metric of every file (compared: "),
        ([retrieval, retrieval, "--primary", "text_retrieval_recall@1,"], "empty metric name"),
        ([retrieval, retrieval, "--primary", "text_retrieval_recall@1,text_retrieval_recall@1"],
         "--primary names a metric twice"),
    ]
    for argv, message in cases:
        code, _, err = run_compare(capsys, *argv)
        assert code == 2
        assert err.startswith("clipdro eval: error: ") and err.count("\n") == 1
        assert message in err
