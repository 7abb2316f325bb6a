"""The CLIP training run's config (`clipdro train`): its sections and their defaults.

Defaults follow the paper's CC3M setting (method.md §5) where it has one; configs/*.yaml override
what differs. The generic loader, ``run`` and ``optim`` come from :mod:`clipdro.config`, ``data``
from :mod:`clipdro.data.config`, ``loss`` and ``temperature`` from :mod:`clipdro.losses.config`.
"""

from __future__ import annotations

import dataclasses
import typing

from clipdro.config import OptimConfig, RunConfig
from clipdro.data.config import PipelineConfig
from clipdro.errors import UsageError
from clipdro.losses.config import LossConfig, TemperatureConfig


@dataclasses.dataclass
class ModelConfig:
    name: str = "clipdro-tiny-vit"  # an open_clip model name or a JSON config file
    pretrained: str | None = None  # open_clip pretrained tag or checkpoint path (downloads need network)
    pretrained_image: bool = False  # timm ImageNet weights for a timm vision trunk (the paper's RN50)
    grad_checkpointing: bool = False
    train_transform: typing.Literal["train", "eval"] = "train"  # "eval": no random augmentation in training
    # Local tower weights (clipdro.towers; a path or pip:MODULE/PATH), overriding the model config's own:
    image_weights: str | None = None  # a state-dict file for the timm image trunk
    image_weights_key_map: typing.Literal["names", "in_order"] | None = None  # in_order: names differ, order not
    text_weights: str | None = None  # a Hugging Face folder (or a .zip of one) for the text tower
    # Tower locking as open_clip does it; the projections and TempNets always train.
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0  # trailing layer groups of the image trunk left trainable
    lock_image_freeze_bn_stats: bool = False  # also keep BatchNorm running statistics fixed in locked groups
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0  # trailing encoder layers of the text tower left trainable
    lock_text_freeze_layer_norm: bool = True

    def validate(self) -> None:
        if self.lock_image_unlocked_groups < 0 or self.lock_text_unlocked_layers < 0:
            raise UsageError("model.lock_image_unlocked_groups and model.lock_text_unlocked_layers must be >= 0")


@dataclasses.dataclass
class TempNetConfig:
    num_prototypes: int = 256
    dropout: float = 0.5
    lr: float = 3e-5  # Adam, no weight decay (reference)
    lr_decay_per_epoch: float = 0.9  # lr * decay ** (epoch - start_epoch) (reference: start_epoch 0)
    start_epoch: int = 0  # TempNet lr is 0 before this epoch: tau stays at TempNet's initial output
    init_prototypes: bool = True  # from the other modality's first global batch (needs batch >= prototypes)

    def validate(self) -> None:
        if self.start_epoch < 0:
            raise UsageError(f"tempnet.start_epoch must be >= 0, got {self.start_epoch}")


@dataclasses.dataclass
class EvalConfig:
    retrieval: list[str] = dataclasses.field(default_factory=list)  # evaluation-set folders
    zeroshot: list[str] = dataclasses.field(default_factory=list)
    every_steps: int = 0  # 0: only at the end
    batch_size: int = 256
    recall_k: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10])


@dataclasses.dataclass
class CLIPOptimConfig(OptimConfig):
    """The shared AdamW section plus what only the CLIP trainer implements (the LLM trainer's optim
    section is the plain OptimConfig, so it refuses accum_steps instead of ignoring it)."""

    # Micro-batches per step: each rank's data.batch_size is embedded in accum_steps pieces, and the loss
    # still sees the whole global batch (clipdro.train.accumulated_clip_step): memory changes, the step not.
    accum_steps: int = 1

    def validate(self) -> None:
        if self.accum_steps < 1:
            raise UsageError(f"optim.accum_steps must be >= 1, got {self.accum_steps}")


@dataclasses.dataclass
class TrainConfig:
    data: PipelineConfig  # training shards, batch size per device, epoch length, workers, data seed
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    temperature: TemperatureConfig = dataclasses.field(default_factory=TemperatureConfig)
    tempnet: TempNetConfig = dataclasses.field(default_factory=TempNetConfig)
    optim: CLIPOptimConfig = dataclasses.field(default_factory=CLIPOptimConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def validate(self) -> None:
        if self.data.batch_size % self.optim.accum_steps:
            raise UsageError(f"optim.accum_steps ({self.optim.accum_steps}) must divide data.batch_size "
                             f"({self.data.batch_size}): every micro-batch has the same size")

