"""Two-sided contrastive losses behind one interface (method.md §2).

* ``tempnet`` (:class:`DROContrastiveLoss`): per-sample tau from the TempNets, the robust
  objective with SogCLR's moving-average estimator; gradients reach both encoders and TempNets.
* ``sogclr`` (:class:`SogCLRLoss`): the same estimator with one fixed global tau.
* ``isogclr`` (:class:`ISogCLRLoss`): per-sample tau stored in tables, updated by its own rule.
* ``clip`` (:class:`CLIPLoss`): symmetric InfoNCE with open_clip's learnable global temperature.

The losses are looked up by name in a registry that code outside clipdro can add to
(:func:`register_loss`); the trainer never branches on a loss name. What it needs to know comes
from hooks on the loss: :meth:`~ContrastiveLoss.from_config` (its options from the run's config),
:attr:`~ContrastiveLoss.uses_tempnets` (whether the model needs TempNets),
:meth:`~ContrastiveLoss.prepare_model` (what happens to open_clip's ``logit_scale``),
:meth:`~ContrastiveLoss.temperatures` (what is passed as ``image_tau`` / ``text_tau``),
:meth:`~ContrastiveLoss.check_batch_size` (start-up checks) and
:meth:`~ContrastiveLoss.after_optimizer_step`.

Every loss takes this rank's L2-normalised image and text features (row i of each is a
positive pair), the anchors' temperatures where the loss does not own them, and the stable
sample ids. Under torch.distributed the loss is *local*: rows are this rank's anchors,
columns are all ranks' candidates gathered with an autograd-aware all-gather, so that DDP's
gradient averaging reproduces the single-process gradient of the global batch exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from clipdro.distributed import (
    all_gather_with_grad,
    check_equal_local_batches,
    get_rank,
    is_distributed,
)
from clipdro.errors import UsageError
from clipdro.losses.config import LossConfig, TemperatureConfig
from clipdro.losses.dro import check_rho, kl_to_uniform, moving_average_estimate
from clipdro.state import SampleTable

LossT = TypeVar("LossT", bound="ContrastiveLoss")
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's trainer clamps the learnable scale to <= log(100)


class ModelOutput(Protocol):
    """What :meth:`ContrastiveLoss.temperatures` reads of the model's forward output
    (clipdro.models.ModelOutput), without the losses knowing the model library."""

    logit_scale: torch.Tensor  # open_clip's exp(logit_scale) = 1 / tau
    image_tau: torch.Tensor | None  # [n] from the image TempNet, None without TempNets
    text_tau: torch.Tensor | None


CONTRASTIVE_LOSSES: dict[str, type[ContrastiveLoss]] = {}  # loss.name -> class, see register_loss


def register_loss(cls: type[LossT]) -> type[LossT]:
    """Make ``cls`` the loss called ``cls.name`` (``loss.name`` in configs); usable as a class decorator.

    Code outside clipdro registers its own losses this way (benchmarks/paper/oracle_tau.py does);
    registering a second class under a taken name is refused.
    """
    registered = CONTRASTIVE_LOSSES.get(cls.name)
    if registered is not None and registered is not cls:
        raise ValueError(f"a loss named {cls.name!r} is already registered ({registered.__qualname__})")
    CONTRASTIVE_LOSSES[cls.name] = cls
    return cls


@dataclass
class ContrastiveLossOutput:
    loss: torch.Tensor  # scalar to call backward() on
    image_tau: torch.Tensor  # detached temperatures of this rank's image anchors, [n]
    text_tau: torch.Tensor  # detached temperatures of this rank's text anchors, [n]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars for logging


@dataclass
class GlobalBatch:
    """Columns of the local-rows x global-columns score matrices."""

    images: torch.Tensor  # all ranks' image features, rank-major, with autograd
    texts: torch.Tensor  # all ranks' text features
    positive_columns: torch.Tensor  # global column of each local anchor's positive

    @property
    def size(self) -> int:
        return self.images.shape[0]


class ContrastiveLoss(nn.Module):
    """Interface shared by every contrastive loss, and the hooks the trainer calls.

    A loss is constructed as ``cls(num_samples, **options)`` (``num_samples`` sizes per-sample
    tables) and from a run's ``loss`` and ``temperature`` sections by :meth:`from_config`. Its ``forward(image_features,
    text_features, image_tau, text_tau, sample_ids)`` returns a :class:`ContrastiveLossOutput`.
    """

    name: ClassVar[str]
    uses_tempnets: ClassVar[bool] = False  # the model must carry image and text TempNets
    option_names: ClassVar[tuple[str, ...]] = ()  # the keys of loss.options that from_config reads
    # The sections of a run's config that from_config receives, as keyword arguments of these names
    # (a loss registered from outside clipdro may name others: dataset_oracle.py reads data and model).
    config_sections: ClassVar[tuple[str, ...]] = ("loss", "temperature")

    def __init__(self) -> None:
        super().__init__()
        self._checked_local_rows: int | None = None

    @classmethod
    def from_config(cls, num_samples: int, *, loss: LossConfig, temperature: TemperatureConfig) -> ContrastiveLoss:
        """The loss built from the run's config sections named by :attr:`config_sections`. By default
        ``cls(num_samples, **loss.options)``: a loss registered from outside clipdro takes its
        constructor's keyword arguments from ``loss.options`` (the built-in losses read the named
        fields of the ``loss`` and ``temperature`` sections instead)."""
        try:
            return cls(num_samples, **loss.options)
        except TypeError as error:
            raise UsageError(f"loss {cls.name!r}: {error}") from None

    def prepare_model(self, clip: nn.Module) -> None:
        """Called once on the open_clip model before training: by default the temperatures come
        from elsewhere, so open_clip's learnable ``logit_scale`` is frozen."""
        clip.logit_scale.requires_grad_(False)

    def temperatures(self, output: ModelOutput) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(image_tau, text_tau) to pass to :meth:`forward` from the model's output; None where
        the loss keeps its own temperatures."""
        return None, None

    def check_batch_size(self, global_batch_size: int) -> None:
        """A start-up check of the global batch size (refuse settings the loss cannot train with)."""

    def after_optimizer_step(self, clip: nn.Module) -> None:
        """Called after every optimizer step (for example to clamp a learnable temperature)."""

    def gather_global_batch(self, image_features: torch.Tensor, text_features: torch.Tensor) -> GlobalBatch:
        local_rows = image_features.shape[0]
        if text_features.shape[0] != local_rows:
            raise ValueError(f"{local_rows} image features but {text_features.shape[0]} text features")
        if is_distributed() and self._checked_local_rows != local_rows:
            check_equal_local_batches(local_rows, image_features.device)
            self._checked_local_rows = local_rows
        offset = get_rank() * local_rows
        positive_columns = torch.arange(offset, offset + local_rows, device=image_features.device)
        return GlobalBatch(all_gather_with_grad(image_features), all_gather_with_grad(text_features),
                           positive_columns)


def _compute_dtype(features: torch.Tensor) -> torch.dtype:
    # Scores are divided by tau ~ 0.01 and exponentiated: never do that in half precision.
    return torch.promote_types(features.dtype, torch.float32)


@register_loss
class DROContrastiveLoss(ContrastiveLoss):
    """The TempNet loss: two-sided KL-constrained DRO with per-sample temperatures.

    Per side (image anchors against all texts, text anchors against all images) the value is
    mean_i [tau_i * (log(s_i / (B - 1)) + b_i) + rho * tau_i], the estimated robust objective.
    Its gradient is replaced by that of the surrogate

        mean_i [ sum_{j != i} p_hat_ij * h_ij  +  c_i * tau_i ]

    with p_hat and c detached: the encoders see the softmax weights over competitors and
    each tau sees c_i, the estimate of dF_i / dtau_i = rho - KL. With fresh tables both are
    exact gradients of the robust objective on the batch.
    """

    name = "tempnet"
    uses_tempnets = True

    def __init__(self, num_samples: int, rho: float = 7.0, gamma: float = 0.8,
                 table_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not 0.0 < gamma <= 1.0:
            raise UsageError(f"gamma must lie in (0, 1], got {gamma}")
        self.num_samples = num_samples
        self.rho = rho
        self.gamma = gamma
        self.image_table = SampleTable(num_samples, {"s": 0.0, "b": 0.0}, dtype=table_dtype)
        self.text_table = SampleTable(num_samples, {"s": 0.0, "b": 0.0}, dtype=table_dtype)
        self._checked_batch_size: int | None = None

    @classmethod
    def from_config(cls, num_samples: int, *, loss: LossConfig, temperature: TemperatureConfig) -> DROContrastiveLoss:
        return cls(num_samples, rho=loss.rho, gamma=loss.gamma)

    def temperatures(self, output: ModelOutput) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return output.image_tau, output.text_tau

    def check_batch_size(self, global_batch_size: int) -> None:
        """rho < log(B - 1): above it no temperature can meet the KL constraint (method.md §1)."""
        if global_batch_size != self._checked_batch_size:
            check_rho(self.rho, global_batch_size - 1, what=f"{self.name} loss")
            self._checked_batch_size = global_batch_size

    def anchor_temperatures(self, sample_ids: torch.Tensor, image_tau: torch.Tensor | None,
                            text_tau: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if image_tau is None or text_tau is None:
            raise ValueError(f"the {self.name} loss needs image_tau and text_tau from the TempNets")
        return image_tau, text_tau

    def after_side(self, side: str, sample_ids: torch.Tensor, tau_gradient: torch.Tensor) -> None:
        """Hook for losses that keep their own temperatures (iSogCLR)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                image_tau: torch.Tensor | None = None, text_tau: torch.Tensor | None = None,
                sample_ids: torch.Tensor | None = None) -> ContrastiveLossOutput:
        if sample_ids is None:
            raise ValueError(f"the {self.name} loss needs the sample ids of the batch")
        batch = self.gather_global_batch(image_features, text_features)
        self.check_batch_size(batch.size)
        image_tau, text_tau = self.anchor_temperatures(sample_ids, image_tau, text_tau)
        image_side = self._anchor_side("image", image_features, batch.texts, batch.positive_columns,
                                       image_tau, sample_ids, self.image_table)
        text_side = self._anchor_side("text", text_features, batch.images, batch.positive_columns,
                                      text_tau, sample_ids, self.text_table)
        metrics = {f"{side}_{key}": value for side, (_, side_metrics) in
                   (("image", image_side), ("text", text_side)) for key, value in side_metrics.items()}
        tau_shape = image_features.shape[:1]
        return ContrastiveLossOutput(
            loss=image_side[0] + text_side[0],
            image_tau=image_tau.detach().expand(tau_shape),
            text_tau=text_tau.detach().expand(tau_shape),
            metrics=metrics,
        )

    def _anchor_side(self, side: str, anchors: torch.Tensor, candidates: torch.Tensor,
                     positive_columns: torch.Tensor, tau: torch.Tensor, sample_ids: torch.Tensor,
                     table: SampleTable) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dtype = _compute_dtype(anchors)
        rows = torch.arange(anchors.shape[0], device=anchors.device)
        scores = anchors.to(dtype) @ candidates.to(dtype).t()  # [n local anchors, N global candidates]
        gaps = scores - scores[rows, positive_columns][:, None]  # h_ij; the positive column is 0
        tau = tau.to(dtype).reshape(-1)
        if tau.numel() == 1:
            tau = tau.expand(anchors.shape[0])
        competitor_mask = torch.ones_like(gaps, dtype=torch.bool)
        competitor_mask[rows, positive_columns] = False

        previous = table.read(sample_ids)
        estimate = moving_average_estimate(
            gaps.detach() / tau.detach()[:, None], competitor_mask,
            previous["b"].to(dtype), previous["s"].to(dtype), previous["seen"], self.gamma, self.rho,
        )
        table.write(sample_ids, {"s": estimate.estimate, "b": estimate.bound})
        self.after_side(side, sample_ids, estimate.tau_gradient)

        value = (tau.detach() * (estimate.log_mean_exp + self.rho)).mean()
        surrogate = (estimate.weights * gaps).sum(dim=1).mean() + (estimate.tau_gradient * tau).mean()
        loss = value + surrogate - surrogate.detach()
        metrics = {"objective": value, "kl": (self.rho - estimate.tau_gradient).mean()}
        return loss, metrics


@register_loss
class SogCLRLoss(DROContrastiveLoss):
    """SogCLR: the moving-average estimator with one fixed global temperature (reference 0.01).

    rho plays no role (tau is not learned), so it is 0 and the value is
    mean_i tau * log mean_j exp(h_ij / tau) per side.
    """

    name = "sogclr"
    uses_tempnets = False

    def __init__(self, num_samples: int, tau: float = 0.01, gamma: float = 0.8,
                 table_dtype: torch.dtype = torch.float32):
        super().__init__(num_samples, rho=0.0, gamma=gamma, table_dtype=table_dtype)
        if tau <= 0:
            raise UsageError(f"sogclr: tau must be positive, got {tau}")
        self.tau = tau

    @classmethod
    def from_config(cls, num_samples: int, *, loss: LossConfig, temperature: TemperatureConfig) -> SogCLRLoss:
        return cls(num_samples, tau=temperature.init, gamma=loss.gamma)

    def temperatures(self, output: ModelOutput) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def anchor_temperatures(self, sample_ids, image_tau, text_tau):
        fixed = torch.full(sample_ids.shape, self.tau, device=sample_ids.device)
        return fixed, fixed


@register_loss
class ISogCLRLoss(DROContrastiveLoss):
    """iSogCLR: per-sample temperatures kept in tables and moved by their own rule.

    After each step, with c_i the same estimate of rho - KL that trains the TempNet:
    u_i <- (1 - beta) u_i + beta * clip(c_i, -5, 5);  tau_i <- clamp(tau_i - eta * u_i).
    """

    name = "isogclr"
    uses_tempnets = False
    GRADIENT_CLIP = 5.0

    def __init__(self, num_samples: int, rho: float = 7.0, gamma: float = 0.8, tau_init: float = 0.01,
                 tau_min: float = 0.005, tau_max: float = 0.05, beta: float = 0.5, eta: float = 0.03,
                 table_dtype: torch.dtype = torch.float32):
        super().__init__(num_samples, rho=rho, gamma=gamma, table_dtype=table_dtype)
        if not 0 < tau_min <= tau_init <= tau_max:
            raise UsageError(f"isogclr: need 0 < tau_min <= tau_init <= tau_max, got "
                             f"{tau_min}, {tau_init}, {tau_max}")
        self.tau_min, self.tau_max, self.beta, self.eta = tau_min, tau_max, beta, eta
        self.image_tau_table = SampleTable(num_samples, {"tau": tau_init, "u": 0.0}, dtype=table_dtype)
        self.text_tau_table = SampleTable(num_samples, {"tau": tau_init, "u": 0.0}, dtype=table_dtype)

    @classmethod
    def from_config(cls, num_samples: int, *, loss: LossConfig, temperature: TemperatureConfig) -> ISogCLRLoss:
        return cls(num_samples, rho=loss.rho, gamma=loss.gamma, tau_init=temperature.init, tau_min=temperature.min,
                   tau_max=temperature.max, beta=loss.isogclr_beta, eta=loss.isogclr_eta)

    def temperatures(self, output: ModelOutput) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

    def anchor_temperatures(self, sample_ids, image_tau, text_tau):
        return self.image_tau_table.read(sample_ids)["tau"], self.text_tau_table.read(sample_ids)["tau"]

    def after_side(self, side: str, sample_ids: torch.Tensor, tau_gradient: torch.Tensor) -> None:
        table = self.image_tau_table if side == "image" else self.text_tau_table
        previous = table.read(sample_ids)
        clipped = tau_gradient.clamp(-self.GRADIENT_CLIP, self.GRADIENT_CLIP)
        momentum = (1.0 - self.beta) * previous["u"].to(clipped) + self.beta * clipped
        tau = (previous["tau"].to(clipped) - self.eta * momentum).clamp(self.tau_min, self.tau_max)
        table.write(sample_ids, {"tau": tau, "u": momentum})


@register_loss
class CLIPLoss(ContrastiveLoss):
    """open_clip's symmetric InfoNCE with one learnable global temperature.

    ``image_tau`` = ``text_tau`` = 1 / logit_scale.exp() (a scalar with autograd);
    the loss is (CE(image rows) + CE(text rows)) / 2 over local rows and global columns.
    It also reports ``image_kl`` / ``text_kl``: the mean KL to uniform of each anchor's softmax
    over its competitors at the learned tau, the quantity the DRO losses hold at rho, so a clip
    run tells which rho asks for the temperature level CLIP itself learns.
    """

    name = "clip"

    def __init__(self, num_samples: int = 0, tau_init: float | None = None):
        """``num_samples`` is unused (no per-sample state; every loss is built alike); ``tau_init``
        sets open_clip's learnable temperature before training (None keeps open_clip's 0.07)."""
        super().__init__()
        if tau_init is not None and tau_init <= 0:
            raise UsageError(f"clip: the initial tau must be positive, got {tau_init}")
        self.tau_init = tau_init

    @classmethod
    def from_config(cls, num_samples: int, *, loss: LossConfig, temperature: TemperatureConfig) -> CLIPLoss:
        return cls(num_samples, tau_init=temperature.init)

    def prepare_model(self, clip: nn.Module) -> None:
        if self.tau_init is not None:
            with torch.no_grad():
                clip.logit_scale.fill_(math.log(1.0 / self.tau_init))

    def temperatures(self, output: ModelOutput) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        tau = 1.0 / output.logit_scale.float()  # open_clip returns exp(logit_scale)
        return tau, tau

    def after_optimizer_step(self, clip: nn.Module) -> None:
        with torch.no_grad():
            clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def forward(self, image_features, text_features, image_tau=None, text_tau=None, sample_ids=None):
        if image_tau is None:
            raise ValueError("the clip loss needs the temperature 1 / logit_scale.exp() as image_tau")
        text_tau = image_tau if text_tau is None else text_tau
        batch = self.gather_global_batch(image_features, text_features)
        dtype = _compute_dtype(image_features)
        image_logits = image_features.to(dtype) @ batch.texts.to(dtype).t() / image_tau.to(dtype)
        text_logits = text_features.to(dtype) @ batch.images.to(dtype).t() / text_tau.to(dtype)
        image_loss = F.cross_entropy(image_logits, batch.positive_columns)
        text_loss = F.cross_entropy(text_logits, batch.positive_columns)
        competitors = torch.ones_like(image_logits, dtype=torch.bool)
        competitors[torch.arange(len(image_logits), device=image_logits.device), batch.positive_columns] = False
        metrics = {"image_objective": image_loss.detach(), "text_objective": text_loss.detach()}
        for side, logits in (("image", image_logits), ("text", text_logits)):
            competitor_logits = logits.detach()[competitors].view(len(logits), -1)
            metrics[f"{side}_kl"] = kl_to_uniform(competitor_logits).mean()
        tau_shape = image_features.shape[:1]
        return ContrastiveLossOutput(
            loss=(image_loss + text_loss) / 2,
            image_tau=image_tau.detach().reshape(()).expand(tau_shape),
            text_tau=text_tau.detach().reshape(()).expand(tau_shape),
            metrics=metrics,
        )


def loss_class(name: str) -> type[ContrastiveLoss]:
    """The registered loss called ``name`` (an unknown name is a usage error listing the known ones)."""
    if name not in CONTRASTIVE_LOSSES:
        raise UsageError(f"unknown loss {name!r}; choose one of {sorted(CONTRASTIVE_LOSSES)}")
    return CONTRASTIVE_LOSSES[name]


def build_loss(config: Any, num_samples: int) -> ContrastiveLoss:
    """The loss named by ``config.loss.name``, given only the sections of the run's ``config`` that it
    names (:attr:`ContrastiveLoss.config_sections`); its ``loss.options`` are checked here, where the
    loss is built (an option it does not read is a usage error naming those it does)."""
    loss = config.loss
    cls = loss_class(loss.name)
    unknown = sorted(set(loss.options) - set(cls.option_names))
    if unknown:
        raise UsageError(f"loss.options.{unknown[0]}: the {loss.name} loss reads "
                         f"{', '.join(cls.option_names) if cls.option_names else 'no loss.options'}")
    return cls.from_config(num_samples, **{name: getattr(config, name) for name in cls.config_sections})


def build_contrastive_loss(name: str, num_samples: int, **options) -> ContrastiveLoss:
    """The loss called ``name`` with its options (unknown names or options are usage errors)."""
    cls = loss_class(name)
    try:
        return cls(num_samples, **options)
    except TypeError as error:
        raise UsageError(f"loss {name!r}: {error}") from None
