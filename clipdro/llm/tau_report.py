"""`clipdro llm report --run RUN`: what a language-model TempNet's per-token tau tracks.

For every held-out target token t of a run with a TempNet (joint or frozen), in stream order:

* ``tau``: TempNet's temperature for the prediction of t;
* ``entropy``: the LM's own predictive entropy H(softmax(z)) in nats, at tau = 1 (what TempNet sees,
  up to its normalisation of z);
* ``input_log_frequency`` / ``target_log_frequency``: ln((count + 1) / (total + V)) of the token the
  prediction follows and of the token predicted, counted over the run's training targets;
* ``position``: the token's index in its document (0 = the document's first predicted token).

Outputs in ``--output`` (default RUN/report): ``tau_tokens.csv.gz`` (one row per token),
``tau_analysis.json`` (tau's distribution, Spearman's rank correlation of tau with each feature and
quantile-bin means), ``tau_analysis.png`` (mean tau per quantile bin of each feature) and
``report.md``. A TempNet whose tau barely varies gives correlations of noise: read them with the
spread (p95 / p5) beside them.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from clipdro.llm.data import IGNORE_INDEX, PackedText
from clipdro.llm.evaluation import held_out_batches
from clipdro.llm.model import predict_tau
from clipdro.stats import distribution_summary, quantile_bins, spearman

FEATURES = {  # column -> axis label
    "entropy": "LM entropy at tau = 1 (nats)",
    "input_log_frequency": "ln frequency of the token the prediction follows (training targets)",
    "target_log_frequency": "ln frequency of the predicted token (training targets)",
    "position": "position in the document (tokens)",
}


def token_log_frequencies(training: PackedText, vocab_size: int) -> np.ndarray:
    """[V] ln((count + 1) / (total + V)) of each token id over the training targets (add-one smoothed)."""
    targets = training.targets[training.targets != IGNORE_INDEX]
    counts = torch.bincount(targets, minlength=vocab_size).double()
    return torch.log((counts + 1) / (counts.sum() + vocab_size)).numpy()


def positions_in_documents(documents: np.ndarray) -> np.ndarray:
    """Each token's index within its document, for document indices in stream order (non-decreasing)."""
    index = np.arange(len(documents))
    starts = np.r_[0, np.flatnonzero(np.diff(documents)) + 1]
    return index - np.repeat(starts, np.diff(np.r_[starts, len(documents)]))


@torch.no_grad()
def token_table(lm, tempnet, heldout: PackedText, log_frequencies: np.ndarray, batch_size: int = 8,
                precision: str = "fp32", max_sequences: int | None = None) -> pd.DataFrame:
    """One row per held-out target token: tau, entropy, the tokens, their log frequencies, position."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("tau", "entropy", "input", "target", "document")}
    for logits, targets, documents, inputs in held_out_batches(lm, [lm, tempnet], heldout, batch_size, precision,
                                                               max_sequences):
        log_probabilities = torch.log_softmax(logits, dim=-1)
        columns["tau"].append(predict_tau(tempnet, logits).cpu().numpy())
        columns["entropy"].append(-(log_probabilities.exp() * log_probabilities).sum(-1).cpu().numpy())
        for name, values in (("input", inputs), ("target", targets), ("document", documents)):
            columns[name].append(values.cpu().numpy())
    table = pd.DataFrame({name: np.concatenate(parts) for name, parts in columns.items()})
    table["input_log_frequency"] = log_frequencies[table["input"].to_numpy()]
    table["target_log_frequency"] = log_frequencies[table["target"].to_numpy()]
    table["position"] = positions_in_documents(table["document"].to_numpy())
    return table


@dataclass
class TauAnalysis:
    tau: dict[str, float]  # distribution_summary of tau, plus spread = p95 / p5
    spearman: dict[str, float]  # feature -> Spearman(tau, feature)
    bins: dict[str, pd.DataFrame]  # feature -> quantile bins with mean_tau

    def to_json(self) -> dict:
        return {"tau": self.tau, "spearman": self.spearman,
                "bins": {name: frame.to_dict(orient="list") for name, frame in self.bins.items()}}


def analyse(table: pd.DataFrame, num_bins: int = 10) -> TauAnalysis:
    tau = distribution_summary(table["tau"])
    tau["spread_p95_over_p5"] = tau["p95"] / tau["p5"] if tau.get("p5") else math.nan
    return TauAnalysis(tau, {feature: spearman(table["tau"], table[feature]) for feature in FEATURES},
                       {feature: quantile_bins(table[feature], {"tau": table["tau"]}, num_bins)
                        for feature in FEATURES})


def write_report(table: pd.DataFrame, analysis: TauAnalysis, output: Path, title: str) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    table.to_csv(output / "tau_tokens.csv.gz", index=False, compression={"method": "gzip", "mtime": 0})
    (output / "tau_analysis.json").write_text(json.dumps(analysis.to_json(), indent=1) + "\n")
    figure = Figure(figsize=(12, 3.4))
    for axis, feature in zip(figure.subplots(1, len(FEATURES)), FEATURES, strict=True):
        bins = analysis.bins[feature]
        axis.plot(bins["x_mean"], bins["mean_tau"], marker="o")
        axis.set(xlabel=textwrap.fill(FEATURES[feature], 40), ylabel="mean tau in the bin",
                 title=f"Spearman {analysis.spearman[feature]:.3f}")
        axis.xaxis.label.set_size(7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(output / "tau_analysis.png", dpi=100)
    summary = analysis.tau
    lines = [f"# {title}", "",
             f"{summary['count']} held-out tokens; tau mean {summary['mean']:.4f}, p5 {summary['p5']:.4f}, "
             f"median {summary['median']:.4f}, p95 {summary['p95']:.4f} (p95 / p5 = "
             f"{summary['spread_p95_over_p5']:.3f}).", "", "| feature | Spearman(tau, feature) |", "|---|---:|"]
    lines += [f"| {FEATURES[feature]} | {analysis.spearman[feature]:.3f} |" for feature in FEATURES]
    lines += ["", "![mean tau per quantile bin](tau_analysis.png)", "",
              "Per-token values: `tau_tokens.csv.gz`; bins and correlations: `tau_analysis.json`."]
    path = output / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
