"""Held-out metrics of an LM with and without its TempNet (`clipdro llm eval`, and during training).

Over all non-ignored held-out tokens:

* ``perplexity``: exp(mean CE(z, y)), the LM alone (tau = 1);
* ``perplexity_tempnet``: exp(mean CE(z / tau, y)) with TempNet's per-token tau;
* ``tau_mean``: the mean of those taus;
* ``dro_objective``: mean of tau * CE(z / tau, y) + (rho - log V) * tau, the training objective.

Under torch.distributed each rank takes every W-th sequence and the sums are all-reduced, so
the numbers are those of the whole held-out set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from clipdro.distributed import get_rank, get_world_size, sum_over_ranks
from clipdro.llm.data import IGNORE_INDEX
from clipdro.llm.model import lm_logits, predict_tau
from clipdro.losses import dro_token_loss
from clipdro.runtime import autocast_context
from clipdro.tempnet import LMTempNet


@torch.no_grad()
def evaluate_heldout(lm: PreTrainedModel, tempnet: LMTempNet | None, inputs: torch.Tensor, targets: torch.Tensor,
                     rho: float, batch_size: int = 8, precision: str = "fp32",
                     max_sequences: int | None = None) -> dict[str, float]:
    """The metrics above (the TempNet ones only with a TempNet). Puts both nets in eval mode and
    restores their previous modes."""
    device = next(lm.parameters()).device
    if max_sequences is not None:
        inputs, targets = inputs[:max_sequences], targets[:max_sequences]
    inputs, targets = inputs[get_rank()::get_world_size()], targets[get_rank()::get_world_size()]
    modules = [module for module in (lm, tempnet) if module is not None]
    was_training = [module.training for module in modules]
    for module in modules:
        module.eval()
    # [tokens, sum CE(z, y), sum CE(z / tau, y), sum tau, sum DRO per-token loss]
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    for start in range(0, inputs.shape[0], batch_size):
        batch_inputs = inputs[start:start + batch_size].to(device)
        batch_targets = targets[start:start + batch_size].to(device)
        with autocast_context(precision, device):
            logits = lm_logits(lm, batch_inputs)
        logits, flat_targets = logits.float().flatten(0, 1), batch_targets.flatten()
        mask = flat_targets != IGNORE_INDEX
        tokens = int(mask.sum())
        sums[0] += tokens
        sums[1] += F.cross_entropy(logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum").double()
        if tempnet is not None:
            tau = predict_tau(tempnet, logits)
            sums[2] += F.cross_entropy(logits / tau[:, None], flat_targets, ignore_index=IGNORE_INDEX,
                                       reduction="sum").double()
            sums[3] += tau[mask].sum().double()
            sums[4] += dro_token_loss(logits, flat_targets, tau, rho, IGNORE_INDEX).double() * tokens
    for module, training in zip(modules, was_training, strict=True):
        module.train(training)
    sums = sum_over_ranks(sums)
    count = max(float(sums[0]), 1.0)
    metrics = {"tokens": float(sums[0]), "perplexity": math.exp(float(sums[1]) / count)}
    if tempnet is not None:
        metrics.update(perplexity_tempnet=math.exp(float(sums[2]) / count), tau_mean=float(sums[3]) / count,
                       dro_objective=float(sums[4]) / count)
    return metrics
