"""Token-level DRO loss for language models (method.md §4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipdro.losses.dro import check_rho


def dro_token_loss(logits: torch.Tensor, targets: torch.Tensor, tau: torch.Tensor, rho: float,
                   ignore_index: int = -100) -> torch.Tensor:
    """Mean over non-ignored tokens of tau * CE(z / tau, y) + (rho - log V) * tau.

    This equals tau * log mean_k exp((z_k - z_y) / tau) + rho * tau, the robust objective with
    the V vocabulary entries as competitors. Plain autograd gives the right gradients: the
    logits receive softmax(z / tau) - onehot(y), and tau receives rho - KL(softmax(z / tau) || U).

    ``logits`` [..., V], ``targets`` [...], ``tau`` [...] (one temperature per token).
    """
    vocab_size = logits.shape[-1]
    check_rho(rho, vocab_size, what="token DRO loss")
    # Logits are divided by tau and exponentiated: at least float32, even under autocast.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.reshape(-1, vocab_size).to(dtype)
    targets = targets.reshape(-1)
    tau = tau.reshape(-1).to(dtype)
    if tau.numel() != targets.numel():
        raise ValueError(f"need one temperature per token: {tau.numel()} for {targets.numel()} tokens")
    cross_entropy = F.cross_entropy(logits / tau[:, None], targets, reduction="none", ignore_index=ignore_index)
    per_token = tau * cross_entropy + (rho - math.log(vocab_size)) * tau
    mask = targets != ignore_index
    # Padding contributes neither loss nor gradient; an all-padding batch gives 0, not NaN.
    return (per_token * mask).sum() / mask.sum().clamp_min(1)
