"""clipdro: CLIP training with learned per-sample temperatures under a KL-constrained DRO loss."""

__version__ = "0.1.0"
