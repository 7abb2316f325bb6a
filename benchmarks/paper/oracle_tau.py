"""What would perfect per-sample temperatures buy? Train with each anchor's exact in-batch optimum.

    python -m benchmarks.paper.oracle_tau run.name=oracle-seed0 temperature.min=0.04
    python -m benchmarks.paper.oracle_tau --level 0.06 run.name=oracle-level-seed0
    python -m benchmarks.paper.oracle_tau --level 0.06 --strength 0.5 run.name=oracle-half-seed0
    python -m benchmarks.paper.oracle_tau --config configs/pretrained_demo.yaml --level 0.066 run.name=oracle-demo

A TempNet approximates the per-anchor minimisation over tau of the robust objective (method.md §1):
tau*_i is where KL(softmax(h_i / tau) || uniform) = rho. This script removes the approximation: it
trains the ``sogclr`` estimator of ``--config`` (default ``benchmarks/paper/configs/reproduce.yaml``: same
estimator, same data order and budget as the reproduction table) but gives every image and text anchor of every
batch its exact tau*_i (with the config's ``loss.rho``), found by bisection on the batch's gaps
(:func:`clipdro.analysis.best_taus`) and clipped to ``temperature.min`` / ``temperature.max``. With
``--level L`` the batch's tau* are rescaled so that their geometric mean is L before clipping: the temperature *level*
is then fixed (as in sogclr with tau = L) and only the redistribution across samples remains, which
isolates what personalisation alone is worth. ``--shuffle`` is the control for that: each batch's
temperatures are permuted across its anchors, so the spread stays and the DRO's assignment goes.
``--strength s`` raises each anchor's ratio to the batch's geometric mean to the power s: 1 is the exact
rule, 0 one temperature for all (sogclr at the level), 0.5 half the spread on a log scale (what a TempNet
that learns a smoothed tau* gives), and a negative s inverts the rule (cools the anchors it warms).

If these oracle runs do not beat the one-temperature baselines, no TempNet can be expected to at this
scale, whatever its optimiser: see docs/results.md. Extra arguments are dotted config overrides; the
run goes to ``runs/oracle/<run.name>`` unless ``run.output_dir`` is given.

The oracle is a loss registered from outside clipdro (``loss.name=oracle``, clipdro.losses.register_loss):
the flags become its ``loss.options`` (level, strength, shuffle), which the run's config.yaml records.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from clipdro.analysis import best_taus, competitor_scores
from clipdro.config import RunConfig
from clipdro.losses import SogCLRLoss, register_loss
from clipdro.losses.config import LossConfig, TemperatureConfig
from clipdro.train import main as train_main

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "reproduce.yaml"


@register_loss
class OracleTauLoss(SogCLRLoss):
    """SogCLR's estimator with each anchor's exact in-batch tau* instead of one fixed tau.

    Registered as ``loss.name=oracle`` (importing this module registers it); its settings are
    ``loss.options``: ``level`` (None: the free oracle), ``strength`` (default 1) and ``shuffle``.
    """

    name = "oracle"
    option_names = ("level", "strength", "shuffle")
    config_sections = ("loss", "temperature", "run")  # run.seed seeds the shuffled variant

    def __init__(self, num_samples: int, rho: float, tau_min: float, tau_max: float, level: float | None,
                 gamma: float = 0.8, shuffle_seed: int | None = None, strength: float = 1.0):
        super().__init__(num_samples, tau=tau_max, gamma=gamma)
        self.oracle_rho, self.tau_min, self.tau_max, self.level = rho, tau_min, tau_max, level
        self.strength = strength
        self.shuffle = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
        self._taus: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, num_samples: int, *, loss: LossConfig, temperature: TemperatureConfig,
                    run: RunConfig) -> OracleTauLoss:
        """loss.rho and temperature.min/max are the oracle's; the options select the variant."""
        options = loss.options
        level = options.get("level")
        return cls(num_samples, loss.rho, temperature.min, temperature.max,
                   None if level is None else float(level), gamma=loss.gamma,
                   shuffle_seed=run.seed if options.get("shuffle", False) else None,
                   strength=float(options.get("strength", 1.0)))

    @torch.no_grad()
    def anchor_taus(self, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        taus = best_taus(competitor_scores(anchors, candidates), self.oracle_rho, 1e-4, 10.0)
        geometric_mean = taus.log().mean().exp()
        if self.strength != 1.0:  # same geometric mean, each ratio to it raised to the strength
            taus = geometric_mean * (taus / geometric_mean) ** self.strength
        if self.level is not None:
            taus = taus * (self.level / geometric_mean)
        if self.shuffle is not None:  # the control: the same temperatures, given to random anchors
            taus = taus[torch.randperm(len(taus), generator=self.shuffle).to(taus.device)]
        return taus.clamp(self.tau_min, self.tau_max)

    def forward(self, image_features, text_features, image_tau=None, text_tau=None, sample_ids=None):
        images, texts = image_features.detach().float(), text_features.detach().float()
        self._taus = self.anchor_taus(images, texts), self.anchor_taus(texts, images)
        return super().forward(image_features, text_features, image_tau, text_tau, sample_ids)

    def anchor_temperatures(self, sample_ids, image_tau, text_tau):
        return self._taus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=BASE_CONFIG,
                        help="base training config (default benchmarks/paper/configs/reproduce.yaml)")
    parser.add_argument("--level", type=float, default=None, help="fix the batch's geometric-mean tau")
    parser.add_argument("--shuffle", action="store_true",
                        help="control: permute each batch's taus across its anchors (same values, random owners)")
    parser.add_argument("--strength", type=float, default=None,
                        help="exponent on each tau's ratio to the batch's geometric mean: 1 exact (default), "
                             "0 none, <0 inverted")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. run.seed=1 data.seed=1")
    args = parser.parse_args(argv)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise SystemExit("oracle_tau runs in one process (its bisection sees the local batch only)")
    options = [f"loss.options.level={'null' if args.level is None else args.level}"]
    if args.strength is not None:
        options.append(f"loss.options.strength={args.strength}")
    if args.shuffle:
        options.append("loss.options.shuffle=true")
    # The overrides come last: loss.options.* given there win over the flags.
    overrides = ["loss.name=oracle", *options, f"run.output_dir={REPO_ROOT / 'runs' / 'oracle'}", *args.overrides]
    return train_main(["--config", str(args.config), *overrides])


if __name__ == "__main__":
    sys.exit(main())
