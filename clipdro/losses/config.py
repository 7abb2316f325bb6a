"""The ``loss`` and ``temperature`` sections of a run's config: what a contrastive loss is built from.

A loss reads these two sections only (:meth:`clipdro.losses.ContrastiveLoss.from_config`), never the
trainer's whole schema. Checked at load time for what each section can tell alone; the options of a
named loss are checked where the loss is built (:func:`clipdro.losses.build_loss`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clipdro.errors import UsageError


@dataclasses.dataclass
class TemperatureConfig:
    min: float = 0.005  # tempnet: output range; isogclr: clamp range
    max: float = 0.05
    init: float = 0.01  # sogclr: the fixed tau; isogclr: every sample's initial tau; clip: initial 1/logit_scale

    def validate(self) -> None:
        if not 0 < self.min < self.max:
            raise UsageError(f"temperature: need 0 < min < max, got min={self.min}, max={self.max}")


@dataclasses.dataclass
class LossConfig:
    # tempnet, sogclr, isogclr, clip, or a loss registered with clipdro.losses.register_loss
    name: str = "tempnet"
    rho: float = 7.0  # must be < log(global batch - 1); checked at start-up
    gamma: float = 0.8  # moving-average weight of the current batch
    isogclr_beta: float = 0.5
    isogclr_eta: float = 0.03
    # read by losses registered outside clipdro; checked against the loss's option_names where it is built
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
