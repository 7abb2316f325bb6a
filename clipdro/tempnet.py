"""Temperature networks (method.md §3): a small net maps a detached input to a temperature.

Both kinds end in the same two blocks, implemented once:

* :class:`ParameterizedPooling`: pi = softmax(a / exp(sigma)) over M scores a, then
  u = Linear(M -> 1)((pi - 1/M) * q) with the Linear's weights initialised to 1 and bias to 0.
  Subtracting 1/M makes u = 0 (the middle of the range) whenever the scores are uniform.
* :class:`BoundedTemperature`: tau = tau_min + (tau_max - tau_min) * sigmoid(u).

:class:`CLIPTempNet` scores a normalised embedding against M learnable prototypes;
:class:`LMTempNet` maps a token's vocabulary logits to M features through an MLP.
:meth:`CLIPTempNet.stages` is the forward pass with its intermediate tensors, for inspection
(:func:`clipdro.analysis.dissect_tempnet`); ``forward`` is that pass's temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ParameterizedPooling(nn.Module):
    """Softmax-weighted pooling of M features with a learnable sharpness, then a scalar."""

    def __init__(self, num_features: int, log_scale_init: float):
        super().__init__()
        self.num_features = num_features
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale_init)))
        self.readout = nn.Linear(num_features, 1)
        nn.init.ones_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        """pi = softmax(a / exp(sigma)) over the last dimension's M scores a."""
        return torch.softmax(scores / self.log_scale.exp(), dim=-1)

    def pool(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """u = Linear(M -> 1)((pi - 1/M) * q) for pooling weights pi (from :meth:`weights`) and values q."""
        return self.readout((weights - 1.0 / self.num_features) * values).squeeze(-1)

    def forward(self, scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.pool(self.weights(scores), values)


class BoundedTemperature(nn.Module):
    """Maps an unbounded score u to tau in [tau_min, tau_max]."""

    def __init__(self, tau_min: float, tau_max: float):
        super().__init__()
        if not 0.0 < tau_min < tau_max:
            raise ValueError(f"need 0 < tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        self.tau_min = tau_min
        self.tau_max = tau_max

    def forward(self, score: torch.Tensor) -> torch.Tensor:
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(score)

    def extra_repr(self) -> str:
        return f"tau_min={self.tau_min}, tau_max={self.tau_max}"


@dataclass(frozen=True)
class CLIPTempNetStages:
    """The intermediate tensors of one :class:`CLIPTempNet` pass over N embeddings (see its docstring)."""

    x: torch.Tensor  # [N, d]: Dropout(sigmoid(Linear(e)))
    scores: torch.Tensor  # [N, M]: a = x @ normalize_rows(P)^T
    weights: torch.Tensor  # [N, M]: the pooling weights pi = softmax(a / exp(sigma))
    tau: torch.Tensor  # [N]: bounded(pool(a, sigmoid(a))), what forward returns


class CLIPTempNet(nn.Module):
    """Per-sample temperature from a detached, L2-normalised CLIP embedding (one net per modality).

    x = Dropout(sigmoid(Linear(d -> d)(e))); a = x @ normalize_rows(P)^T for M prototypes P;
    tau = bounded(pool(a, sigmoid(a))). With d = M = 256 this has 131,586 parameters.
    """

    def __init__(self, feature_dim: int, num_prototypes: int = 256, tau_min: float = 0.005,
                 tau_max: float = 0.05, dropout: float = 0.5):
        super().__init__()
        self.feature_dim = feature_dim
        self.num_prototypes = num_prototypes
        self.transform = nn.Linear(feature_dim, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, feature_dim))
        self.pooling = ParameterizedPooling(num_prototypes, log_scale_init=math.log(0.01))
        self.output = BoundedTemperature(tau_min, tau_max)

    def init_args(self) -> dict[str, int | float]:
        """The constructor arguments that rebuild this net: ``CLIPTempNet(**net.init_args())``."""
        return {"feature_dim": self.feature_dim, "num_prototypes": self.num_prototypes,
                "tau_min": self.output.tau_min, "tau_max": self.output.tau_max, "dropout": self.dropout.p}

    @torch.no_grad()
    def init_prototypes(self, embeddings: torch.Tensor) -> bool:
        """Copy the first M rows of ``embeddings`` (the *other* modality's first training batch)
        into the prototypes. Returns False, leaving the random init, when fewer than M rows exist."""
        if embeddings.shape[0] < self.num_prototypes:
            return False
        self.prototypes.copy_(embeddings[: self.num_prototypes].to(self.prototypes))
        return True

    def stages(self, embeddings: torch.Tensor) -> CLIPTempNetStages:
        """The forward pass with its intermediate tensors (``forward`` returns this pass's ``tau``)."""
        x = self.dropout(torch.sigmoid(self.transform(embeddings)))
        scores = x @ F.normalize(self.prototypes, dim=-1).t()
        values = torch.sigmoid(scores)
        weights = self.pooling.weights(scores)
        return CLIPTempNetStages(x=x, scores=scores, weights=weights,
                                 tau=self.output(self.pooling.pool(weights, values)))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.stages(embeddings).tau


class LMTempNet(nn.Module):
    """Per-token temperature from a language model's own (detached) vocabulary logits.

    z is L2-normalised over the vocabulary, with no max-shift, in training and generation
    alike (normalisation is not shift-invariant, so one convention must hold everywhere);
    x = Linear(256 -> 256)(Dropout(sigmoid(Linear(V -> 256)(z)))); tau = bounded(pool(x, x)).
    """

    def __init__(self, vocab_size: int, hidden: int = 256, tau_min: float = 0.01, tau_max: float = 2.0,
                 dropout: float = 0.5):
        super().__init__()
        self.vocab_size = vocab_size
        self.projection = nn.Sequential(
            nn.Linear(vocab_size, hidden), nn.Sigmoid(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.pooling = ParameterizedPooling(hidden, log_scale_init=0.0)
        self.output = BoundedTemperature(tau_min, tau_max)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = self.projection(F.normalize(logits, dim=-1))
        return self.output(self.pooling(x, x))
