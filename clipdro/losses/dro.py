"""The robust (KL-constrained DRO) math shared by the contrastive and token losses (method.md §1).

For one anchor with m competitor gaps l_j and temperature tau,

    F(tau) = tau * log( (1/m) * sum_j exp(l_j / tau) ) + rho * tau,

whose tau-derivative is rho - KL(softmax(l / tau) || uniform_m). KL lies in [0, log m], so
rho >= log m makes the derivative non-negative everywhere and tau collapses to tau_min:
:func:`check_rho` refuses such settings at start-up.

:func:`moving_average_estimate` is the SogCLR estimator of the inner mean (method.md §2,
steps 1-4): a per-sample moving average s with a persistent overflow bound b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from clipdro.errors import UsageError

ESTIMATE_FLOOR = 1e-14


def check_rho(rho: float, num_competitors: int, what: str = "contrastive loss") -> None:
    """Raise :class:`UsageError` unless 0 <= rho < log(num_competitors)."""
    if num_competitors < 2:
        raise UsageError(f"{what}: needs at least 2 competitors per anchor, got {num_competitors}")
    limit = math.log(num_competitors)
    if rho < 0 or rho >= limit:
        raise UsageError(
            f"{what}: rho={rho} must lie in [0, log({num_competitors}) = {limit:.4f}); "
            f"with rho >= log(m) every temperature collapses to tau_min (m = number of competitors: "
            f"global batch - 1 for CLIP, vocabulary size for LLMs)"
        )


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Per row, KL(softmax(logits) || uniform) over the row's m entries, in [0, log m].

    For tempered competitor gaps l_j / tau this is the KL the robust objective bounds by rho, so
    it tells where a temperature sits relative to a candidate rho (docs/results.md).
    """
    log_p = torch.log_softmax(logits, dim=-1)
    return (log_p.exp() * (log_p + math.log(logits.shape[-1]))).sum(dim=-1)


@dataclass
class RobustEstimate:
    """One step of the moving-average estimator for a block of anchors (all detached)."""

    bound: torch.Tensor  # b_i after the step
    estimate: torch.Tensor  # s_i after the step, unclamped (what the table stores)
    weights: torch.Tensor  # p_hat_ij = exp(H_ij - b_i) / s_i, zero on non-competitors
    log_mean_exp: torch.Tensor  # log(s_i / m) + b_i: the estimate of log mean_j exp(H_ij)
    tau_gradient: torch.Tensor  # c_i = log_mean_exp_i + rho - sum_j p_hat_ij H_ij, estimates rho - KL


@torch.no_grad()
def moving_average_estimate(
    scaled_gaps: torch.Tensor,
    competitor_mask: torch.Tensor,
    previous_bound: torch.Tensor,
    previous_estimate: torch.Tensor,
    seen: torch.Tensor,
    gamma: float,
    rho: float,
) -> RobustEstimate:
    """SogCLR moving average of sum_j exp(H_ij) over competitors j, one row per anchor.

    ``scaled_gaps`` H = h / tau (detached, [n, N]); ``competitor_mask`` marks the m = N - 1
    competitors of each row (the positive is excluded). The first visit of a sample takes the
    batch sum as is; later visits blend (1 - gamma) * old + gamma * batch after re-basing the
    old estimate from the old bound onto the new one.
    """
    num_competitors = competitor_mask.sum(dim=1)
    # The row max includes the positive (H = 0), so b >= 0 and exp() below never overflows.
    bound = torch.maximum(previous_bound, scaled_gaps.max(dim=1).values)
    exp_gaps = torch.exp(scaled_gaps - bound[:, None]).masked_fill(~competitor_mask, 0.0)
    batch_sum = exp_gaps.sum(dim=1)
    rebased = previous_estimate * torch.exp(previous_bound - bound)
    estimate = torch.where(seen, (1.0 - gamma) * rebased + gamma * batch_sum, batch_sum)
    clamped = estimate.clamp_min(ESTIMATE_FLOOR)
    weights = exp_gaps / clamped[:, None]
    log_mean_exp = torch.log(clamped / num_competitors) + bound
    tau_gradient = log_mean_exp + rho - (weights * scaled_gaps).sum(dim=1)
    return RobustEstimate(bound, estimate, weights, log_mean_exp, tau_gradient)
