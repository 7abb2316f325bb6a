"""clipdro.stats: Student's t quantile, the two-way mean squares, and the seed-aware interval's coverage
by simulation (the figures quoted in docs/evaluation.md come from these tests)."""

import numpy as np
import pytest

from clipdro.stats import seed_query_interval, student_t_cdf, student_t_quantile, two_way_mean_squares


def test_t_quantiles_match_the_tables():
    # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)); the rest from the tables.
    assert student_t_quantile(0.975, 1) == pytest.approx(np.tan(0.475 * np.pi), rel=1e-12)
    assert student_t_quantile(0.975, 2) == pytest.approx(0.95 / np.sqrt(2 * 0.975 * 0.025), rel=1e-12)
    table = {3: 3.182446305, 4: 2.776445105, 5: 2.570581836, 10: 2.228138852, 30: 2.042272456, 120: 1.979930405}
    for df, value in table.items():
        assert student_t_quantile(0.975, df) == pytest.approx(value, rel=1e-9)
    z = 1.959963984540054
    assert student_t_quantile(0.975, 1e7) == pytest.approx(z + (z ** 3 + z) / 4e7, rel=1e-12)  # Cornish-Fisher
    df = np.array([1.0, 2.5, 7.0, 999.0, 1001.0])
    assert student_t_cdf(student_t_quantile(0.9, df), df) == pytest.approx(np.full(5, 0.9), abs=1e-9)


def test_t_quantiles_match_scipy_on_real_degrees_of_freedom():
    stats = pytest.importorskip("scipy.stats")
    df = np.array([1.0, 1.3, 2.0, 2.5, 4.0, 7.7, 30.0, 999.0, 1000.5, 1e4, 1e6])
    for probability in (0.6, 0.9, 0.975, 0.995):
        assert student_t_quantile(probability, df) == pytest.approx(stats.t.ppf(probability, df), rel=1e-10)
    with pytest.raises(ValueError, match="df"):
        student_t_quantile(0.975, 0.5)
    with pytest.raises(ValueError, match="probability"):
        student_t_quantile(0.4, 3)


def test_two_way_mean_squares_by_hand():
    # An additive table (seed effect + query effect, no interaction): MS_resid = 0.
    seeds, queries = np.array([0.0, 2.0, 4.0]), np.array([1.0, -1.0, 0.0, 3.0])
    table = seeds[:, None] + queries[None, :]
    seed_ms, query_ms, resid_ms = two_way_mean_squares(table)
    assert seed_ms == pytest.approx(4 * np.var(seeds, ddof=1))  # n * var of the seed means
    assert query_ms == pytest.approx(3 * np.var(queries, ddof=1))  # P * var of the query means
    assert resid_ms == pytest.approx(0.0, abs=1e-12)
    # Leading axes are independent problems.
    batch = np.stack([table, 2 * table])
    assert two_way_mean_squares(batch)[0] == pytest.approx([seed_ms, 4 * seed_ms])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        two_way_mean_squares(table[:1])


def test_interval_parts_on_a_small_table():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 50)) + rng.normal(size=(1, 50))  # a common query part and interaction, no seed part
    interval = seed_query_interval([x])
    per_pair = x.mean(axis=1)
    assert interval.estimate == pytest.approx(per_pair.mean())
    assert interval.seed_variance == pytest.approx(np.var(per_pair, ddof=1) / 3)
    seed_ms, query_ms, resid_ms = two_way_mean_squares(x)
    assert interval.common_query_variance == pytest.approx((query_ms - resid_ms) / 150)
    half = np.sqrt(student_t_quantile(0.975, 2) ** 2 * interval.seed_variance
                   + 1.959963985 ** 2 * interval.common_query_variance)
    assert (interval.low, interval.high) == pytest.approx((per_pair.mean() - half, per_pair.mean() + half))
    # No common part (every query's pair-averaged difference equal): the t-interval over the per-pair differences.
    noise = rng.normal(size=(4, 30))
    noise += np.array([[0.5], [0.0], [-1.0], [2.0]]) - noise.mean(axis=0)
    flat = seed_query_interval([noise], confidence=0.9)
    assert flat.common_query_variance == 0.0
    half = student_t_quantile(0.95, 3) * np.std(noise.mean(axis=1), ddof=1) / 2
    assert flat.high - flat.estimate == pytest.approx(half)
    # Two query sets: their per-pair sums are the per-pair differences.
    both = seed_query_interval([x, 0.5 * x[:, :20]])
    assert both.estimate == pytest.approx((x.mean(axis=1) + 0.5 * x[:, :20].mean(axis=1)).mean())
    with pytest.raises(ValueError, match="same number of pairs"):
        seed_query_interval([x, x[:2]])


def expit(x):
    return 1 / (1 + np.exp(-x))


def simulated_differences(rng, sims, pairs, queries, seed_sd, query_sd):
    """[sims, P, n] per-query hit differences a - b of P seed pairs on n fresh queries per simulation.

    Query i has a difficulty (shared by A and B) and an effect v_i of the method (the same for every
    seed); seed p an effect s_p; every (model, seed, query) a logit noise of SD 1 (seeds flip different
    queries).  A's hit logit is difficulty + (v_i + s_p) / 2 + noise, B's difficulty - (v_i + s_p) / 2
    + noise: A and B are exchangeable, so the true difference (over seeds and queries) is exactly 0."""
    difficulty = rng.normal(-1.0, 1.5, (sims, 1, queries))
    shift = (rng.normal(0.0, query_sd, (sims, 1, queries)) + rng.normal(0.0, seed_sd, (sims, pairs, 1))) / 2
    a = rng.random((sims, pairs, queries)) < expit(difficulty + shift + rng.normal(size=(sims, pairs, queries)))
    b = rng.random((sims, pairs, queries)) < expit(difficulty - shift + rng.normal(size=(sims, pairs, queries)))
    return a.astype(np.float64) - b


# Scenarios: (seed effect SD, query effect SD) on the logit scale.  A seed SD of 0.15 moves the expected A - B
# of a seed by 2.3 recall points (SD, measured with 20,000 queries and 400 seeds); a seed's own query noise on
# 400 queries is about 3.5 points, so the ratio is that of a 1-point seed SD on about 2,000 queries.
SCENARIOS = {"seed spread": (0.15, 0.0), "seed spread and query effects": (0.15, 1.0), "query effects": (0.0, 1.5)}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("pairs", [3, 5])
def test_coverage_by_simulation(scenario, pairs):
    """2,000 simulations of 400 queries each (seeded: the figures are reproducible).  Coverage of the seed-aware
    interval measured: seed spread 0.959 (3 seeds), 0.958 (5 seeds); seed spread and query effects 0.966, 0.949;
    query effects 0.969, 0.960.  For contrast, the query-only interval with seed spread: 0.895, 0.888; the
    t-interval over the pairs without the common query part, with query effects: 0.937, 0.899."""
    seed_sd, query_sd = SCENARIOS[scenario]
    rng = np.random.default_rng([pairs, list(SCENARIOS).index(scenario)])
    x = simulated_differences(rng, 2000, pairs, 400, seed_sd, query_sd)
    interval = seed_query_interval([x])
    coverage = np.mean((interval.low <= 0) & (0 <= interval.high))
    # For contrast: the query-only interval (what the paired bootstrap over queries approximates: the normal
    # interval of the pair-averaged per-query difference) and the t-interval over the per-pair differences
    # alone (no common query part).
    pooled = x.mean(axis=1)
    query_only = np.mean(np.abs(pooled.mean(axis=1)) <= 1.96 * pooled.std(axis=1, ddof=1) / np.sqrt(400))
    t_half_width = student_t_quantile(0.975, pairs - 1) * np.sqrt(interval.seed_variance)
    t_only = np.mean(np.abs(interval.estimate) <= t_half_width)
    print(f"{scenario}, {pairs} seeds: coverage {coverage:.3f}, query-only {query_only:.3f}, t over pairs {t_only:.3f}")
    assert 0.94 <= coverage <= 0.98
    if scenario == "seed spread":
        assert query_only < 0.93
    if scenario == "query effects":
        assert t_only < coverage - 0.02
