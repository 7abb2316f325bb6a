"""Analysis of the DRO temperature rule, used by the paper experiments (``benchmarks/paper``).

Under the KL-constrained DRO loss (method.md §1) each anchor i has one best temperature when the
encoders are held fixed: tau*_i with KL(softmax(h_i / tau*_i) || uniform) = rho, where h_i are the
anchor's competitor gaps s_ij - s_ii. A TempNet is trained to approximate that minimiser, so these
helpers compute the targets (:func:`competitor_scores`, :func:`best_taus`) and describe what a
trained TempNet actually does stage by stage (:func:`dissect_tempnet`). Nothing here is used in
training; the oracle-temperature runs and the TempNet fit probe of ``benchmarks.paper`` build on it.
"""

from __future__ import annotations

import torch

from clipdro.losses import kl_to_uniform
from clipdro.tempnet import CLIPTempNet


def competitor_scores(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """h_ij = s_ij - s_ii for the B - 1 competitors j != i of each anchor i: [B, B - 1]."""
    scores = anchors @ candidates.t()
    off_diagonal = ~torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    return (scores - scores.diag()[:, None])[off_diagonal].view(len(scores), -1)


def best_taus(h: torch.Tensor, rho: float, tau_min: float, tau_max: float) -> torch.Tensor:
    """tau* per row with KL = rho (KL falls as tau grows), by bisection in log space, then clipped."""
    low, high = h.new_full((len(h),), 1e-4), h.new_full((len(h),), 10.0)
    for _ in range(60):
        middle = (low * high).sqrt()
        too_flat = kl_to_uniform(h / middle[:, None]) < rho
        high, low = torch.where(too_flat, middle, high), torch.where(too_flat, low, middle)
    return middle.clamp(tau_min, tau_max)


@torch.no_grad()
def dissect_tempnet(net: CLIPTempNet, embeddings: torch.Tensor) -> dict[str, float]:
    """How sample-dependent each stage of a trained CLIP TempNet is, on ``embeddings`` [N, d].

    Runs :meth:`CLIPTempNet.stages` in eval mode (dropout off; the net's mode is restored after).
    The keys, in table order: the mean and the spread over samples (std over rows, averaged over
    features) of the transformed input x = sigmoid(Linear(e)); the spread of the prototype scores
    a over prototypes and over samples; how many distinct prototypes win the pooling softmax and
    the mean of the winning weight; the pooling scale exp(sigma); the mean tau and its p95 / p5.
    """
    training = net.training
    net.eval()
    try:
        stages = net.stages(embeddings)
    finally:
        net.train(training)
    x, scores, weights, tau = stages.x, stages.scores, stages.weights, stages.tau
    return {
        "mean x": x.mean().item(),
        "std of x over samples": x.std(0).mean().item(),
        "std of scores over prototypes": scores.std(1).mean().item(),
        "std of scores over samples": scores.std(0).mean().item(),
        "distinct winning prototypes": float(weights.argmax(1).unique().numel()),
        "mean top pooling weight": weights.max(1).values.mean().item(),
        "pooling scale": net.pooling.log_scale.exp().item(),
        "tau mean": tau.mean().item(),
        "tau p95/p5": (tau.quantile(0.95) / tau.quantile(0.05)).item(),
    }
