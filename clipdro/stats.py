"""Statistics shared by the temperature reports (CLIP: clipdro.eval.temperature_report; LLM:
clipdro.llm.tau_report) and the benchmarks: pure functions on arrays, no model, no data pipeline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd


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
