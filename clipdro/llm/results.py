"""Result files of `clipdro llm eval --output` and their paired comparison (`clipdro llm compare`).

A result file holds the held-out metrics, each perplexity with a bootstrap interval over documents,
and the per-document sums behind them (tokens and the summed token cross-entropies at tau = 1, at
the best constant tau and with TempNet), plus a fingerprint of the held-out token targets: two
files compare only when they were computed on the same tokens in the same documents.

Bootstrap scheme: a replicate draws D documents with replacement (D = the held-out documents with
at least one token) and recomputes perplexity = exp(sum of the drawn documents' CE / their tokens).
For a comparison, the same draw is applied to A and B of every pair (one pair per seed), and the
replicate's difference is the mean over pairs of perplexity(A_p) - perplexity(B_p); the interval is
the percentile interval of the replicates. Resampling documents, not tokens, keeps the dependence
between the tokens of one document inside each draw. This interval covers document sampling only,
not the variation between training seeds.

With two or more pairs the comparison's default interval covers both (seeds and documents):
:func:`clipdro.stats.seed_query_interval` on each document's linearised contribution to each pair's
perplexity difference (:func:`linearised_perplexity`). Pure numpy (no transformers).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from clipdro.errors import UsageError
from clipdro.stats import seed_query_interval

RESULT_FORMAT = "clipdro-llm-eval/1"
BOOTSTRAP_REPLICATES = 10_000
CONFIDENCE = 0.95
# Each perplexity metric and the per-document sum of token cross-entropies it is exp(sum / tokens) of.
PERPLEXITY_SUMS = {"perplexity": "cross_entropy", "perplexity_constant_tau": "cross_entropy_constant_tau",
                   "perplexity_tempnet": "cross_entropy_tempnet"}
PERPLEXITIES = tuple(PERPLEXITY_SUMS)
# Replicates per chunk of the [replicates, D] draw matrix (memory: chunk x D x 8 bytes).
DRAW_CHUNK = 1_000


def document_draws(num_documents: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, D] float64 counts: how often each of D documents is drawn in each resample of D."""
    rng = np.random.default_rng(seed)
    uniform = np.full(num_documents, 1 / num_documents)
    return rng.multinomial(num_documents, uniform, size=replicates).astype(np.float64)


def _percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    tail = (1 - confidence) / 2
    return [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))]


def bootstrap_perplexity(tokens: np.ndarray, losses: np.ndarray, replicates: int = BOOTSTRAP_REPLICATES,
                         seed: int = 0) -> list[float]:
    """95 % percentile interval of exp(sum losses / sum tokens) over documents drawn with replacement
    (``tokens``, ``losses`` [D]: one entry per document; documents without tokens are left out)."""
    return paired_difference([(tokens, losses, None)], replicates, seed)


def paired_difference(pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]], replicates: int,
                      seed: int) -> list[float]:
    """Interval of mean_p [perplexity(A_p) - perplexity(B_p)] (module docstring): ``pairs`` of
    (tokens [D], A's summed losses [D], B's summed losses [D] or None for perplexity(A) alone). All
    pairs share ``tokens``' documents; documents without tokens are left out."""
    tokens = pairs[0][0]
    keep = tokens > 0
    values = []
    for start in range(0, replicates, DRAW_CHUNK):
        counts = document_draws(int(keep.sum()), min(DRAW_CHUNK, replicates - start), seed + start)
        drawn_tokens = counts @ tokens[keep]
        difference = np.zeros(counts.shape[0])
        for _, a_losses, b_losses in pairs:
            difference += np.exp(counts @ a_losses[keep] / drawn_tokens)
            if b_losses is not None:
                difference -= np.exp(counts @ b_losses[keep] / drawn_tokens)
        values.append(difference / len(pairs))
    return _percentile_interval(np.concatenate(values))


def targets_fingerprint(targets: torch.Tensor, documents: torch.Tensor) -> str:
    """sha256 of the held-out target ids and their document indices (what a comparison must share)."""
    digest = hashlib.sha256()
    for tensor in (targets, documents):
        digest.update(tensor.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def result_record(sums, constant, heldout, replicates: int, seed: int, identity: dict) -> dict:
    """The JSON record of one evaluation: ``sums`` (clipdro.llm.evaluation.DocumentSums), ``constant``
    (its ConstantTau, or None), ``heldout`` (the PackedText evaluated), the bootstrap settings and what
    was evaluated (``identity``)."""
    metrics = sums.metrics()
    if constant is not None:
        metrics |= {"constant_tau_validation_perplexity": constant.validation_perplexity,
                    "constant_tau_validation_tokens": constant.validation_tokens,
                    "constant_tau_at_range_edge": constant.at_range_edge}
    if replicates:
        for metric, name in PERPLEXITY_SUMS.items():
            if name in sums.sums:
                metrics[f"{metric}_ci95"] = bootstrap_perplexity(sums.sums["tokens"], sums.sums[name], replicates,
                                                                 seed)
    return {
        "format": RESULT_FORMAT, **identity, "bootstrap": {"replicates": replicates, "seed": seed,
                                                           "unit": "held-out document"},
        "metrics": metrics,
        "targets_sha256": targets_fingerprint(heldout.targets, heldout.documents),
        "per_document": {name: values.tolist() for name, values in sums.sums.items()},
    }


def load_result(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}: cannot read a result file ({error})") from None
    if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT:
        raise UsageError(f"{path}: not a `clipdro llm eval --output` file (format {RESULT_FORMAT})")
    return record


def linearised_perplexity(tokens: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """[D] per-document values whose mean is perplexity = exp(L / T) (L = sum of ``losses``, T = sum of
    ``tokens``, D documents): ppl * (1 + D * (l_j - t_j * L / T) / T), each document's influence on the
    perplexity (delta method), so their spread over documents is its document-sampling variance."""
    total_tokens, total_loss = tokens.sum(), losses.sum()
    perplexity = math.exp(total_loss / total_tokens)
    return perplexity * (1 + len(tokens) * (losses - tokens * total_loss / total_tokens) / total_tokens)


def compare_files(paths: Sequence[Path], a_metric: str, b_metric: str, replicates: int, seed: int) -> dict:
    """The paired comparison of result files A B [A2 B2 ...] (one pair per seed) on metric a_metric of
    each A and b_metric of each B: the mean difference and its intervals (module docstring).
    ``ci95``: over seeds and documents with two or more pairs, else over documents only (``ci95_covers``
    says which; None with one pair and ``replicates`` 0); ``ci95_documents_only``: the bootstrap."""
    records = [load_result(Path(path)) for path in paths]
    fingerprints = {record["targets_sha256"] for record in records}
    if len(fingerprints) != 1:
        raise UsageError("the files were computed on different held-out tokens; a paired comparison needs the same")
    pairs, rows = [], []
    for a_path, b_path, a, b in zip(paths[::2], paths[1::2], records[::2], records[1::2], strict=True):
        for path, record, metric in ((a_path, a, a_metric), (b_path, b, b_metric)):
            if PERPLEXITY_SUMS[metric] not in record["per_document"]:
                raise UsageError(f"{path}: has no {metric}")
        tokens = np.asarray(a["per_document"]["tokens"], dtype=np.float64)
        a_losses = np.asarray(a["per_document"][PERPLEXITY_SUMS[a_metric]], dtype=np.float64)
        b_losses = np.asarray(b["per_document"][PERPLEXITY_SUMS[b_metric]], dtype=np.float64)
        pairs.append((tokens, a_losses, b_losses))
        rows.append({"a": str(a_path), "b": str(b_path), "a_value": a["metrics"][a_metric],
                     "b_value": b["metrics"][b_metric],
                     "difference": a["metrics"][a_metric] - b["metrics"][b_metric]})
    documents_only = paired_difference(pairs, replicates, seed) if replicates else None
    interval, covers = documents_only, "documents only"
    if len(pairs) > 1:
        keep = pairs[0][0] > 0
        per_document = np.stack([linearised_perplexity(tokens[keep], a_losses[keep])
                                 - linearised_perplexity(tokens[keep], b_losses[keep])
                                 for tokens, a_losses, b_losses in pairs])
        seeds_and_documents = seed_query_interval([per_document], CONFIDENCE)
        interval, covers = [seeds_and_documents.low, seeds_and_documents.high], "seeds and documents"
    return {"a_metric": a_metric, "b_metric": b_metric, "pairs": rows,
            "mean_difference": float(np.mean([row["difference"] for row in rows])),
            "ci95": interval, "ci95_covers": covers, "ci95_documents_only": documents_only,
            "bootstrap": {"replicates": replicates, "seed": seed,
                          "unit": "held-out document, the same draw for every pair"}}
