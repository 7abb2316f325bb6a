"""Robust (KL-constrained DRO) losses: contrastive for CLIP, token-level for LLMs."""

from clipdro.losses.contrastive import (
    CONTRASTIVE_LOSSES,
    CLIPLoss,
    ContrastiveLoss,
    ContrastiveLossOutput,
    DROContrastiveLoss,
    ISogCLRLoss,
    SogCLRLoss,
    build_contrastive_loss,
    build_loss,
    loss_class,
    register_loss,
)
from clipdro.losses.dro import check_rho, kl_to_uniform, moving_average_estimate
from clipdro.losses.lm import dro_token_loss

__all__ = [
    "CONTRASTIVE_LOSSES",
    "CLIPLoss",
    "ContrastiveLoss",
    "ContrastiveLossOutput",
    "DROContrastiveLoss",
    "ISogCLRLoss",
    "SogCLRLoss",
    "build_contrastive_loss",
    "build_loss",
    "check_rho",
    "dro_token_loss",
    "kl_to_uniform",
    "loss_class",
    "moving_average_estimate",
    "register_loss",
]
