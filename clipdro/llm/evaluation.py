"""Held-out metrics of an LM with and without its TempNet (`clipdro llm eval`, and during training).

Over all non-ignored held-out tokens:

* ``perplexity``: exp(mean CE(z, y)), the LM alone (tau = 1);
* ``perplexity_constant_tau``: exp(mean CE(z / tau_c, y)) at one constant tau_c (when given; `clipdro
  llm eval` uses the best constant tau of a separate validation split, :func:`best_constant_tau`);
* ``perplexity_tempnet``: exp(mean CE(z / tau, y)) with TempNet's per-token tau;
* ``tau_mean``: the mean of those taus;
* ``dro_objective``: mean of tau * CE(z / tau, y) + (rho - log V) * tau, the training objective.

:func:`heldout_sums` keeps the sums behind these per held-out *document* (a packed sequence may
hold the end of one document and the start of the next; every target token knows its document),
so clipdro.llm.results can resample documents for an interval, and two result files on the same
documents can be compared pairwise (`clipdro llm compare`).

Under torch.distributed each rank takes every W-th sequence and the sums are all-reduced, so
the numbers are those of the whole held-out set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from clipdro.distributed import get_rank, get_world_size, sum_over_ranks
from clipdro.llm.data import IGNORE_INDEX, PackedText
from clipdro.llm.model import lm_logits, predict_tau
from clipdro.llm.results import PERPLEXITY_SUMS
from clipdro.runtime import autocast_context
from clipdro.tempnet import LMTempNet

# Logits per chunk when scoring many constant taus at once: tokens x V <= this (32 MB per float64 tensor).
TAU_GRID_ELEMENTS = 1 << 22


def held_out_batches(lm: PreTrainedModel, modules: Sequence[torch.nn.Module], heldout: PackedText, batch_size: int,
                     precision: str, max_sequences: int | None):
    """(logits [T, V] float32, targets [T], documents [T], inputs [T]) of this rank's held-out sequences,
    non-ignored tokens only (``inputs``: the token each prediction follows), in stream order on one
    process, with every module in eval mode (their modes are restored afterwards)."""
    device = next(lm.parameters()).device
    rows = heldout.rows(slice(None, max_sequences)).rows(slice(get_rank(), None, get_world_size()))
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        for start in range(0, rows.inputs.shape[0], batch_size):
            inputs = rows.inputs[start:start + batch_size].to(device)
            targets = rows.targets[start:start + batch_size].to(device).flatten()
            documents = rows.documents[start:start + batch_size].to(device).flatten()
            with torch.no_grad(), autocast_context(precision, device):
                logits = lm_logits(lm, inputs)
            mask = targets != IGNORE_INDEX
            yield logits.float().flatten(0, 1)[mask], targets[mask], documents[mask], inputs.flatten()[mask]
    finally:
        for module, training in zip(modules, was_training, strict=True):
            module.train(training)


@dataclass
class DocumentSums:
    """Sums over each held-out document's target tokens (index = document, as loaded)."""

    sums: dict[str, np.ndarray]  # name -> [D] float64: tokens, cross_entropy[, cross_entropy_constant_tau,
    #                              cross_entropy_tempnet, tau, dro]
    constant_tau: float | None = None

    def total(self, name: str) -> float:
        return float(self.sums[name].sum())

    def metrics(self) -> dict[str, float]:
        """The metrics of the module docstring over all held-out tokens."""
        tokens = max(self.total("tokens"), 1.0)
        metrics = {"tokens": self.total("tokens"), "documents": int((self.sums["tokens"] > 0).sum())}
        for metric, name in PERPLEXITY_SUMS.items():
            if name in self.sums:
                metrics[metric] = math.exp(self.total(name) / tokens)
        if self.constant_tau is not None:
            metrics["constant_tau"] = self.constant_tau
        if "tau" in self.sums:
            metrics.update(tau_mean=self.total("tau") / tokens, dro_objective=self.total("dro") / tokens)
        return metrics


@torch.no_grad()
def heldout_sums(lm: PreTrainedModel, tempnet: LMTempNet | None, heldout: PackedText, rho: float | None,
                 batch_size: int = 8, precision: str = "fp32", max_sequences: int | None = None,
                 constant_tau: float | None = None) -> DocumentSums:
    """Per-document sums of the held-out token losses (the TempNet ones only with a TempNet, the
    constant-tau one only with ``constant_tau``)."""
    device = next(lm.parameters()).device
    num_documents = heldout.num_documents
    names = ["tokens", "cross_entropy"]
    if constant_tau is not None:
        names.append("cross_entropy_constant_tau")
    if tempnet is not None:
        names += ["cross_entropy_tempnet", "tau", "dro"]
    sums = torch.zeros(len(names), num_documents, dtype=torch.float64, device=device)
    modules = [lm] if tempnet is None else [lm, tempnet]
    for logits, targets, documents, _ in held_out_batches(lm, modules, heldout, batch_size, precision,
                                                          max_sequences):
        per_token = [torch.ones_like(targets, dtype=torch.float64),
                     F.cross_entropy(logits, targets, reduction="none")]
        if constant_tau is not None:
            per_token.append(F.cross_entropy(logits / constant_tau, targets, reduction="none"))
        if tempnet is not None:
            tau = predict_tau(tempnet, logits)
            tempered = F.cross_entropy(logits / tau[:, None], targets, reduction="none")
            # clipdro.losses.dro_token_loss per token: tau * CE(z / tau, y) + (rho - log V) * tau
            per_token += [tempered, tau, tau * tempered + (rho - math.log(logits.shape[-1])) * tau]
        for row, values in enumerate(per_token):
            sums[row].index_add_(0, documents, values.double())
    sums = sum_over_ranks(sums).cpu().numpy()
    return DocumentSums(dict(zip(names, sums, strict=True)), constant_tau)


def evaluate_heldout(lm: PreTrainedModel, tempnet: LMTempNet | None, heldout: PackedText, rho: float | None,
                     batch_size: int = 8, precision: str = "fp32",
                     max_sequences: int | None = None) -> dict[str, float]:
    """The metrics above (the TempNet ones only with a TempNet) over the whole held-out set."""
    return heldout_sums(lm, tempnet, heldout, rho, batch_size, precision, max_sequences).metrics()


@dataclass(frozen=True)
class ConstantTau:
    """The constant tau with the lowest mean CE(z / tau, y) on a validation split."""

    tau: float
    validation_perplexity: float  # exp(mean CE(z / tau', y)) there at the best grid point tau' (~ at tau)
    validation_tokens: int
    at_range_edge: bool  # the optimum lies at (or beyond) an end of the searched range


@torch.no_grad()
def best_constant_tau(lm: PreTrainedModel, validation: PackedText, tau_range: tuple[float, float] = (0.1, 10.0),
                      grid_points: int = 97, batch_size: int = 8, precision: str = "fp32",
                      max_sequences: int | None = None) -> ConstantTau:
    """The constant tau minimising the mean CE(z / tau, y) over the validation tokens, in one pass.

    With beta = 1 / tau, CE(beta z, y) = logsumexp(beta z) - beta z_y is convex in beta (its second
    derivative is the variance of z under softmax(beta z)), and so is its mean. One pass sums, at
    ``grid_points`` log-spaced betas, the mean CE and its derivative E_softmax(beta z)[z] - z_y; the
    minimum lies where the (increasing) derivative crosses 0, found between two grid points by linear
    interpolation of the derivative (error second order in the grid step, 4.9 % in tau by default).
    """
    tau_low, tau_high = tau_range
    if not 0 < tau_low < tau_high:
        raise ValueError(f"need 0 < tau_low < tau_high, got {tau_range}")
    device = next(lm.parameters()).device
    betas = torch.logspace(math.log10(1 / tau_high), math.log10(1 / tau_low), grid_points, dtype=torch.float64,
                           device=device)
    cross_entropy = torch.zeros(grid_points, dtype=torch.float64, device=device)
    derivative = torch.zeros(grid_points, dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    for logits, targets, _, _ in held_out_batches(lm, [lm], validation, batch_size, precision, max_sequences):
        tokens += targets.numel()
        rows = max(1, TAU_GRID_ELEMENTS // logits.shape[1])
        for start in range(0, targets.numel(), rows):
            chunk = logits[start:start + rows].double()
            target_logit = chunk.gather(1, targets[start:start + rows, None])  # [T, 1]
            for index, beta in enumerate(betas):
                scaled = beta * chunk
                log_normaliser = torch.logsumexp(scaled, dim=1, keepdim=True)
                cross_entropy[index] += (log_normaliser - beta * target_logit).sum()
                expected = (torch.softmax(scaled, dim=1) * chunk).sum(dim=1, keepdim=True)
                derivative[index] += (expected - target_logit).sum()
    tokens, cross_entropy, derivative = (sum_over_ranks(value) for value in (tokens, cross_entropy, derivative))
    count = max(float(tokens), 1.0)
    mean_ce, slope = (cross_entropy / count).cpu().numpy(), (derivative / count).cpu().numpy()
    beta_grid = betas.cpu().numpy()
    rising = np.flatnonzero(slope >= 0)
    if rising.size == 0 or rising[0] == 0:  # the minimum is at the coldest (slope < 0 throughout) or warmest end
        index = grid_points - 1 if rising.size == 0 else 0
        return ConstantTau(float(1 / beta_grid[index]), math.exp(mean_ce[index]), int(count), True)
    upper = rising[0]
    lower = upper - 1
    weight = slope[lower] / (slope[lower] - slope[upper])  # slope is 0 at this fraction between the two
    beta = beta_grid[lower] + weight * (beta_grid[upper] - beta_grid[lower])
    return ConstantTau(float(1 / beta), math.exp(min(mean_ce[lower], mean_ce[upper])), int(count), False)
