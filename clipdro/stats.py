"""Pure statistics (numpy and pandas, no torch, no model, no data pipeline).

The temperature reports (CLIP: clipdro.eval.temperature_report; LLM: clipdro.llm.tau_report) and the
benchmarks share :func:`spearman`, :func:`quantile_bins` and :func:`distribution_summary`;
`clipdro eval compare` and `clipdro llm compare` share the interval below.

Seed-aware interval of a paired difference (:func:`seed_query_interval`).  P training seeds give
P pairs (A_p, B_p) evaluated on the same n queries; x[p, i] is query i's contribution to pair p's
difference, so that d_p = mean_i x[p, i] is the pair's metric difference (for a mean metric
x[p, i] = a_pi - b_pi; for other metrics a linearised pseudo-value, see the callers).  The
estimate is the mean over pairs d = mean_p d_p.  Seeds and queries are crossed (every pair sees
the same queries), so in the two-way random-effects model x[p, i] = mu + s_p + q_i + e_pi

    Var(d) = sigma_s^2 / P + sigma_q^2 / n + sigma_e^2 / (n P)
           = (MS_seed + MS_query - MS_resid) / (n P)

with the mean squares of the two-way table (seeds x queries, one value per cell).  Its two parts:

- seed part, MS_seed / (n P) = var_p(d_p) / P: the spread of the per-pair differences, which
  already holds each pair's own query noise sigma_e^2 / n.  Estimated from P values: scaled by
  Student's t quantile with P - 1 degrees of freedom.
- common query part, (MS_query - MS_resid) / (n P), taken as 0 when negative: the query effect
  shared by all pairs (a query on which A beats B whatever the seed), i.e. how much the
  pair-averaged per-query differences vary beyond what the interaction explains.  Estimated from
  n queries: scaled by the normal quantile.  Several independent query sets (a metric averaged
  over captions and images) add one such part each.

Interval: d +- sqrt(t_{P-1}^2 * seed part + z^2 * common part).  With no common part it is the
t-interval over the per-pair differences.  It covers the difference expected for a new training
seed on a new query set of the same kind; the percentile bootstrap over queries
(clipdro.eval.compare) covers only the second.  Coverage in the simulations of tests/test_stats.py
(3 and 5 seeds): 0.949-0.969.  Why not one t quantile at Satterthwaite's degrees of freedom: in
exploratory runs of the same simulation (not kept as tests) that covered 0.91-0.94 with 2 or 3
seeds when a common query part was present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Above this many degrees of freedom the quantile comes from the Cornish-Fisher expansion
# (error below 1e-9 there), below from inverting the exact CDF.
EXPANSION_DF = 1_000.0
CONTINUED_FRACTION_TERMS = 400


@dataclass(frozen=True)
class SeedQueryInterval:
    """The seed-aware interval of mean_p d_p; arrays when the input had leading batch axes."""

    estimate: float | np.ndarray  # mean over pairs of the per-pair difference
    low: float | np.ndarray
    high: float | np.ndarray
    seed_variance: float | np.ndarray  # var_p(d_p) / P
    common_query_variance: float | np.ndarray  # sum over query sets of max(0, MS_query - MS_resid) / (n P)


def two_way_mean_squares(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(MS_seed, MS_query, MS_resid) of ``values`` [..., P, n] (seeds x queries, one value per cell),
    over the last two axes; P >= 2 and n >= 2."""
    values = np.asarray(values, dtype=np.float64)
    seeds, queries = values.shape[-2:]
    if seeds < 2 or queries < 2:
        raise ValueError(f"need at least 2 seeds and 2 queries, got {seeds} x {queries}")
    grand = values.mean(axis=(-2, -1), keepdims=True)
    seed_means = values.mean(axis=-1, keepdims=True)
    query_means = values.mean(axis=-2, keepdims=True)
    seed_ss = queries * np.sum((seed_means - grand) ** 2, axis=(-2, -1))
    query_ss = seeds * np.sum((query_means - grand) ** 2, axis=(-2, -1))
    resid_ss = np.sum((values - seed_means - query_means + grand) ** 2, axis=(-2, -1))
    return seed_ss / (seeds - 1), query_ss / (queries - 1), resid_ss / ((seeds - 1) * (queries - 1))


def seed_query_interval(query_sets: Sequence[np.ndarray], confidence: float = 0.95) -> SeedQueryInterval:
    """Seed-aware interval (module docstring) of d = mean_p sum_s mean_i x_s[p, i], one array
    x_s [..., P, n_s] per independent query set, all with the same P >= 2 (leading axes: a batch of
    independent problems, e.g. simulations)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    query_sets = [np.asarray(values, dtype=np.float64) for values in query_sets]
    seeds = {values.shape[-2] for values in query_sets}
    if len(seeds) != 1 or min(seeds) < 2:
        raise ValueError(f"every query set needs the same number of pairs, at least 2; got {sorted(seeds)}")
    pairs = seeds.pop()
    per_pair = sum(values.mean(axis=-1) for values in query_sets)  # [..., P]: d_p
    estimate = per_pair.mean(axis=-1)
    seed_variance = per_pair.var(axis=-1, ddof=1) / pairs
    common = np.zeros_like(seed_variance)
    for values in query_sets:
        if values.shape[-1] < 2:  # one query: no query-to-query variance to estimate
            continue
        _, query_ms, resid_ms = two_way_mean_squares(values)
        common = common + np.maximum(query_ms - resid_ms, 0.0) / (values.shape[-1] * pairs)
    tail = (1 + confidence) / 2
    half_width = np.sqrt(student_t_quantile(tail, pairs - 1) ** 2 * seed_variance
                         + _normal_quantile(tail) ** 2 * common)
    out = [estimate, estimate - half_width, estimate + half_width, seed_variance, common]
    return SeedQueryInterval(*(float(value) if per_pair.ndim == 1 else np.asarray(value) for value in out))


# --- Student's t distribution (no scipy) ---------------------------------------------------

def student_t_quantile(probability: float, df: float | np.ndarray) -> float | np.ndarray:
    """The ``probability`` quantile (0.5 < probability < 1) of Student's t with ``df`` >= 1 degrees
    of freedom (scalar or array; real df allowed): Newton's method on the exact CDF, which is
    concave on t > 0 so the iterates close in monotonically after the first step; a
    Cornish-Fisher expansion above EXPANSION_DF degrees of freedom."""
    if not 0.5 < probability < 1:
        raise ValueError(f"probability must lie in (0.5, 1), got {probability}")
    df_array = np.atleast_1d(np.asarray(df, dtype=np.float64))
    if np.any(df_array < 1) or np.any(~np.isfinite(df_array)):
        raise ValueError("df must be finite and >= 1")
    z = _normal_quantile(probability)
    t = _cornish_fisher(z, df_array)
    exact = df_array < EXPANSION_DF
    if exact.any():
        nu = df_array[exact]
        guess = np.maximum(_cornish_fisher(z, np.maximum(nu, 5.0)), z)  # below the root or close above it
        for _ in range(100):
            step = (probability - student_t_cdf(guess, nu)) / _student_t_pdf(guess, nu)
            guess = np.maximum(guess + step, 0.5 * guess)
            if np.all(np.abs(step) <= 1e-12 * guess):
                break
        t[exact] = guess
    return float(t[0]) if np.ndim(df) == 0 else t.reshape(np.shape(df))


def student_t_cdf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """P(T <= t) for t >= 0: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2)."""
    t, df = np.broadcast_arrays(np.asarray(t, dtype=np.float64), np.asarray(df, dtype=np.float64))
    return 1 - 0.5 * _regularized_incomplete_beta(df / 2, np.full_like(df, 0.5), df / (df + t ** 2))


def _student_t_pdf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    log_norm = _log_gamma((df + 1) / 2) - _log_gamma(df / 2) - 0.5 * np.log(df * math.pi)
    return np.exp(log_norm - (df + 1) / 2 * np.log1p(t ** 2 / df))


def _regularized_incomplete_beta(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """I_x(a, b) by the continued fraction (Numerical Recipes' betacf, modified Lentz), applied to
    (a, b, x) or, where it converges faster, to (b, a, 1 - x) through I_x(a, b) = 1 - I_{1-x}(b, a)."""
    flip = x > (a + 1) / (a + b + 2)
    a2, b2, x2 = np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1 - x, x)
    with np.errstate(divide="ignore"):
        log_front = (a2 * np.log(x2) + b2 * np.log1p(-x2) - _log_gamma(a2) - _log_gamma(b2) + _log_gamma(a2 + b2))
    value = np.exp(log_front) * _beta_continued_fraction(a2, b2, x2) / a2
    return np.where(flip, 1 - value, value)


def _beta_continued_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c = np.ones_like(x)
    d = 1 - qab * x / qap
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, CONTINUED_FRACTION_TERMS + 1):
        m2 = 2 * m
        for coefficient in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + coefficient * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + coefficient / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = d * c
            h = h * delta
        if np.all(np.abs(delta - 1) < 1e-15):
            break
    return h


def _log_gamma(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.fromiter((math.lgamma(value) for value in values.ravel()), np.float64, values.size).reshape(values.shape)


def _normal_quantile(probability: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(probability)


def _cornish_fisher(z: float, df: np.ndarray) -> np.ndarray:
    """The t quantile's expansion in 1 / df around the normal quantile z (Abramowitz & Stegun 26.7.5)."""
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


# ---------------------------------------------------------------------------------------------
# Distributions and rank correlation (the temperature reports)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation over the pairs where both are finite (ties get average ranks).

    NaN when fewer than 2 pairs remain or either side is constant.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 2:
        return math.nan
    x_ranks = pd.Series(x[finite]).rank(method="average").to_numpy()
    y_ranks = pd.Series(y[finite]).rank(method="average").to_numpy()
    if x_ranks.std() == 0 or y_ranks.std() == 0:
        return math.nan
    return float(np.corrcoef(x_ranks, y_ranks)[0, 1])


def quantile_bins(x: Sequence[float], columns: dict[str, Sequence[float]], num_bins: int) -> pd.DataFrame:
    """Rows with a finite ``x`` cut into ``num_bins`` bins of about equal count by the quantiles of x.

    Bin i holds edges[i] <= x < edges[i + 1] (the last bin also its upper edge); equal quantiles
    merge, so ties never straddle a bin edge and fewer bins may come back. One row per bin:
    ``x_min``, ``x_max``, ``x_mean`` (of its members), ``count`` and ``mean_<name>`` per column
    (NaN values of a column are left out of its mean).
    """
    frame = pd.DataFrame({"x": np.asarray(x, dtype=np.float64),
                          **{name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}})
    frame = frame[np.isfinite(frame["x"])]
    if frame.empty:
        return pd.DataFrame(columns=["x_min", "x_max", "x_mean", "count", *(f"mean_{n}" for n in columns)])
    edges = np.unique(np.quantile(frame["x"], np.linspace(0.0, 1.0, num_bins + 1)))
    if len(edges) == 1:
        index = np.zeros(len(frame), dtype=np.int64)
    else:
        index = np.clip(np.searchsorted(edges, frame["x"], side="right") - 1, 0, len(edges) - 2)
    grouped = frame.groupby(index)
    bins = pd.DataFrame({"x_min": grouped["x"].min(), "x_max": grouped["x"].max(),
                         "x_mean": grouped["x"].mean(), "count": grouped["x"].size()})
    for name in columns:
        bins[f"mean_{name}"] = grouped[name].mean()
    return bins.reset_index(drop=True)


def distribution_summary(values: Sequence[float]) -> dict[str, float]:
    """count, mean, std, min, 5th percentile, median, 95th percentile, max of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0}
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "p5": float(p5), "median": float(median), "p95": float(p95),
            "max": float(values.max())}
