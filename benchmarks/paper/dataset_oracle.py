"""A TempNet-realisable oracle: each sample's tau* against the whole training set, refreshed per epoch.

    python -m benchmarks.paper.dataset_oracle --config benchmarks/paper/configs/pretrained.yaml \\
        run.name=dataset-oracle-seed0 run.output_dir=runs/pretrained
    python -m benchmarks.paper.dataset_oracle --config ... loss.options.smoothing=0.5   # EMA over epochs

The in-batch oracle (``oracle_tau``) gives each anchor the tau that solves its KL constraint
within its own batch: that depends on which competitors the batch happens to hold, which no
TempNet (it sees one sample) can know. This oracle removes that: at the start of every epoch it
embeds all N training pairs with the current encoders (eval mode) and gives each image and each
caption its tau*_i with KL(softmax(h_i / tau) || uniform) = rho over all N - 1 competitors of
the training set (:func:`clipdro.analysis.best_taus`), clipped to ``temperature.min`` /
``temperature.max``. A temperature that depends on the sample alone is exactly what a TempNet can
represent, so training with it is the evidence for or against "a per-sample temperature could
help here" at a given rho. Training uses SogCLR's estimator (the same as the tempnet loss) with
these temperatures.

``loss.options``: ``smoothing`` (weight of the new tau* in a log-space moving average across
epochs; 1, the default, replaces it), ``level`` (a geometric-mean tau, isolating the spread from the
level; default: none) and ``level_by``, how a refresh is brought to that level:

- ``rescale`` (default): tau*_i at rho, multiplied by level / (geometric mean), then clipped to
  [``temperature.min``, ``temperature.max``];
- ``rho``: tau*_i at the margin rho' whose tau* has geometric mean ``level``, found anew at every
  refresh (:func:`matched_dataset_taus`), neither rescaled nor clipped: every sample's temperature is
  the DRO rule itself, KL = rho', at the one margin that gives the level. ``loss.rho`` is then only the
  first refresh's starting guess. Each side's rho' and how many of its tau* sit on the search bounds
  are buffers (``image_matched_rho``, ``text_matched_at_bounds``, ...) and logged metrics.

    python -m benchmarks.paper.dataset_oracle --config ... loss.options.level=0.066 loss.options.level_by=rho

Between refreshes the taus are fixed. The tables are buffers of the loss, so they are checkpointed with it.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clipdro.analysis import best_taus
from clipdro.data.config import PipelineConfig
from clipdro.data.pipeline import read_samples
from clipdro.engine import rng_preserved
from clipdro.errors import UsageError
from clipdro.eval.embed import inference_mode
from clipdro.losses import SogCLRLoss, register_loss
from clipdro.losses.config import LossConfig, TemperatureConfig
from clipdro.losses.dro import kl_to_uniform
from clipdro.models import resolve_model_name
from clipdro.train import main as train_main
from clipdro.train_config import ModelConfig

BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "pretrained.yaml"
EMBED_BATCH = 256
log = logging.getLogger("clipdro.dataset_oracle")


def competitor_gap_chunks(anchors: torch.Tensor, candidates: torch.Tensor, chunk: int = 1024):
    """Yield (rows, h) for chunks of rows of ``anchors`` [N, d] against ``candidates`` [N, d] (row i of each is a
    positive pair): h = the gaps s_ij - s_ii of each row's N - 1 competitors j != i, [len(rows), N - 1]."""
    for start in range(0, len(anchors), chunk):
        rows = torch.arange(start, min(start + chunk, len(anchors)))
        scores = anchors[rows] @ candidates.t()  # [chunk, N]
        gaps = scores - scores[torch.arange(len(rows)), rows][:, None]
        competitors = torch.ones_like(gaps, dtype=torch.bool)
        competitors[torch.arange(len(rows)), rows] = False
        yield rows, gaps[competitors].view(len(rows), -1)


def dataset_taus(anchors: torch.Tensor, candidates: torch.Tensor, rho: float, tau_min: float, tau_max: float,
                 chunk: int = 1024) -> torch.Tensor:
    """tau*_i for every row i of ``anchors`` [N, d] against all other rows of ``candidates`` [N, d]
    (row i of each is a positive pair), in chunks of rows: [N]."""
    return torch.cat([best_taus(gaps, rho, tau_min, tau_max)
                      for _, gaps in competitor_gap_chunks(anchors, candidates, chunk)])


def tempered_gap_variances(anchors: torch.Tensor, candidates: torch.Tensor, taus: torch.Tensor,
                           chunk: int = 1024) -> torch.Tensor:
    """Var_{p_i}(h_i / tau_i) per row, p_i = softmax(h_i / tau_i) over the N - 1 competitors: [N].

    With x = h / tau and KL(tau) = sum_j p_j x_j - log sum_j exp(x_j) + log m, dKL/dx_j = p_j (x_j - E_p x) and
    dx / d(log tau) = -x, so dKL / d(log tau) = -Var_p(x) <= 0: the KL falls as tau grows (strictly unless the
    gaps are all equal), so tau*_i(rho) falls as rho grows, with d log tau*_i / d rho = -1 / Var_p(x) at tau*_i.
    """
    variances = []
    for rows, gaps in competitor_gap_chunks(anchors, candidates, chunk):
        tempered = gaps / taus[rows, None]
        p = torch.softmax(tempered, dim=-1)
        mean = (p * tempered).sum(-1, keepdim=True)
        variances.append((p * (tempered - mean) ** 2).sum(-1))
    return torch.cat(variances)


class MatchedTaus(NamedTuple):
    rho: float  # the margin rho' whose dataset-scope tau* has the target geometric mean
    taus: torch.Tensor  # tau*_i(rho') per row, unclipped (searched in SOLVE_TAU_BOUNDS) [N]
    steps: int  # evaluations of dataset_taus it took


# tau* is searched in best_taus' own bracket, so the reachable geometric means are the open interval between.
SOLVE_TAU_BOUNDS = (1e-4, 10.0)


def check_matchable_level(level: float) -> None:
    """UsageError unless some rho' in (0, log(N - 1)) gives the geometric mean ``level``: as rho -> 0 every
    tau*_i -> infinity (KL -> 0 needs a flat softmax) and as rho -> log(N - 1) every tau*_i -> 0, so with the
    search bracket SOLVE_TAU_BOUNDS the reachable geometric means are exactly the open interval between them."""
    low, high = SOLVE_TAU_BOUNDS
    if not low < level < high:
        raise UsageError(f"dataset-oracle: no rho' reaches the geometric-mean level {level}: the dataset-scope "
                         f"tau* reachable over rho' in (0, log(N - 1)) has geometric means in ({low}, {high})")


def matched_dataset_taus(anchors: torch.Tensor, candidates: torch.Tensor, level: float, start_rho: float,
                         tolerance: float = 1e-4, max_steps: int = 40, chunk: int = 1024) -> MatchedTaus:
    """The margin rho' at which the dataset-scope tau*_i (KL(softmax(h_i / tau) || uniform_{N-1}) = rho') have
    geometric mean ``level``, |mean_i log tau*_i - log level| < ``tolerance``, and those tau*_i.

    g(rho) = mean_i log tau*_i(rho) falls as rho grows (:func:`tempered_gap_variances`), from log of the upper
    search bound at rho -> 0 to log of the lower one at rho -> log(N - 1), so the root of g - log level is kept
    in a bracket (low, high) that starts as (0, log(N - 1)) and only shrinks: a bisection. Each evaluation is one
    :func:`dataset_taus` over N x (N - 1) gaps (60 KL passes), so instead of halving the bracket each trial rho is
    the Newton step from the last one, g' = -mean_i 1 / Var_p(h_i / tau*_i) (rows on a search bound do not move,
    and count 0), and the bracket's midpoint whenever that step leaves the bracket: the bisection's guarantee at
    a few evaluations when started near the answer (``start_rho``: the previous refresh's rho').
    """
    check_matchable_level(level)
    low, high = 0.0, math.log(len(candidates) - 1)
    rho = start_rho if low < start_rho < high else (low + high) / 2
    tau_low, tau_high = SOLVE_TAU_BOUNDS
    for step in range(1, max_steps + 1):
        taus = dataset_taus(anchors, candidates, rho, tau_low, tau_high, chunk)
        miss = taus.log().mean().item() - math.log(level)  # > 0: too warm, rho' is larger
        if abs(miss) < tolerance:
            return MatchedTaus(rho, taus, step)
        low, high = (rho, high) if miss > 0 else (low, rho)
        moving = (taus > tau_low * 1.001) & (taus < tau_high / 1.001)
        slope = -(moving / tempered_gap_variances(anchors, candidates, taus, chunk).clamp_min(1e-12)).mean().item()
        newton = rho - miss / slope if slope < 0 else math.nan
        rho = newton if low < newton < high else (low + high) / 2
    raise RuntimeError(f"dataset-oracle: no rho' matched the level {level} within {tolerance} in {max_steps} "
                       f"evaluations (last rho' {rho}, bracket ({low}, {high}))")


LEVEL_RULES = ("rescale", "rho")  # loss.options.level_by


@register_loss
class DatasetOracleLoss(SogCLRLoss):
    """SogCLR's estimator with each sample's dataset-scope tau*, refreshed at every epoch start."""

    name = "dataset-oracle"
    option_names = ("smoothing", "level", "level_by")
    config_sections = ("loss", "temperature", "data", "model")  # the model section: its name

    def __init__(self, num_samples: int, rho: float, tau_min: float, tau_max: float, tau_init: float,
                 steps_per_epoch: int, data: PipelineConfig, model_name: str, smoothing: float = 1.0,
                 level: float | None = None, gamma: float = 0.8, level_by: str = "rescale"):
        super().__init__(num_samples, tau=tau_init, gamma=gamma)
        if not 0.0 < smoothing <= 1.0:
            raise UsageError(f"dataset-oracle: loss.options.smoothing must lie in (0, 1], got {smoothing}")
        if level_by not in LEVEL_RULES:
            raise UsageError(f"dataset-oracle: loss.options.level_by must be one of {', '.join(LEVEL_RULES)}, "
                             f"got {level_by!r}")
        self.matched = level_by == "rho"
        if self.matched:
            if level is None:
                raise UsageError("dataset-oracle: loss.options.level_by=rho needs loss.options.level")
            check_matchable_level(level)
            for side in ("image", "text"):  # rho' of the last refresh (the first one starts its search at rho)
                self.register_buffer(f"{side}_matched_rho", torch.tensor(float(rho)))
                self.register_buffer(f"{side}_matched_at_bounds", torch.zeros((), dtype=torch.long))
        self.oracle_rho, self.tau_min, self.tau_max = rho, tau_min, tau_max
        self.steps_per_epoch, self.smoothing, self.level = steps_per_epoch, smoothing, level
        self.data, self.model_name = data, model_name
        self.register_buffer("image_taus", torch.full((num_samples,), tau_init))
        self.register_buffer("text_taus", torch.full((num_samples,), tau_init))
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))
        self._clip: torch.nn.Module | None = None

    @classmethod
    def from_config(cls, num_samples: int, *, loss: LossConfig, temperature: TemperatureConfig,
                    data: PipelineConfig, model: ModelConfig) -> DatasetOracleLoss:
        if data.epoch_samples is None:
            raise UsageError("dataset-oracle needs data.epoch_samples (it refreshes tau* at every epoch start)")
        options = loss.options
        level = options.get("level")
        return cls(num_samples, loss.rho, temperature.min, temperature.max, temperature.init,
                   data.epoch_samples // data.batch_size, data, resolve_model_name(model.name),
                   smoothing=float(options.get("smoothing", 1.0)), level=None if level is None else float(level),
                   gamma=loss.gamma, level_by=str(options.get("level_by", "rescale")))

    def prepare_model(self, clip: torch.nn.Module) -> None:
        super().prepare_model(clip)
        self._clip = clip  # embedded at every epoch start

    def forward(self, image_features, text_features, image_tau=None, text_tau=None, sample_ids=None):
        if int(self.steps_taken) % self.steps_per_epoch == 0:
            self.refresh()
        self.steps_taken += 1
        output = super().forward(image_features, text_features, image_tau, text_tau, sample_ids)
        if self.matched:  # logged with every log line: the rho' of the epoch's refresh
            output.metrics |= {f"{side}_{key}": getattr(self, f"{side}_{key}").detach().float()
                               for side in ("image", "text") for key in ("matched_rho", "matched_at_bounds")}
        return output

    def anchor_temperatures(self, sample_ids, image_tau, text_tau):
        return self.image_taus[sample_ids], self.text_taus[sample_ids]

    @torch.no_grad()
    def embed_training_set(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every training pair embedded with the current encoders (eval mode): sample ids [N], image and
        text embeddings [N, d], L2-normalised."""
        if self._clip is None:
            raise RuntimeError("dataset-oracle: prepare_model was not called")
        if os.environ.get("WORLD_SIZE", "1") != "1":
            raise UsageError("dataset-oracle runs in one process")
        clip = self._clip
        device = next(clip.parameters()).device
        preprocess = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
        tokenizer = open_clip.get_tokenizer(self.model_name)
        ids, images, texts = [], [], []
        with rng_preserved(), inference_mode(clip):  # eval mode: no dropout, no BatchNorm statistics update
            samples = list(read_samples(self.data.sources))
            for start in range(0, len(samples), EMBED_BATCH):
                chunk = samples[start:start + EMBED_BATCH]
                pixels = torch.stack([preprocess(Image.open(io.BytesIO(s.image)).convert("RGB")) for s in chunk])
                images.append(F.normalize(clip.encode_image(pixels.to(device)).float(), dim=-1))
                texts.append(F.normalize(clip.encode_text(tokenizer([s.caption for s in chunk]).to(device)).float(),
                                         dim=-1))
                ids += [sample.sample_id for sample in chunk]
        return torch.tensor(ids, device=device), torch.cat(images), torch.cat(texts)

    def fresh_taus(self, side: str, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """One side's tau* of this refresh. level_by=rescale: at rho, rescaled to the geometric mean ``level``
        (when set) and clipped to [temperature.min, temperature.max]. level_by=rho: at the rho' whose tau* has
        geometric mean ``level`` (:func:`matched_dataset_taus`), neither rescaled nor clipped."""
        if not self.matched:
            fresh = dataset_taus(anchors, candidates, self.oracle_rho, *SOLVE_TAU_BOUNDS)
            if self.level is not None:
                fresh = fresh * (self.level / fresh.log().mean().exp())
            return fresh.clamp(self.tau_min, self.tau_max)
        matched_rho = getattr(self, f"{side}_matched_rho")
        solved = matched_dataset_taus(anchors, candidates, self.level, float(matched_rho))
        at_bounds = int(((solved.taus <= SOLVE_TAU_BOUNDS[0] * 1.001) |
                         (solved.taus >= SOLVE_TAU_BOUNDS[1] / 1.001)).sum())
        matched_rho.fill_(solved.rho)
        getattr(self, f"{side}_matched_at_bounds").fill_(at_bounds)
        log.info("dataset-oracle %s: rho' %.5f gives geometric mean %.5f (level %g) in %d evaluations; tau* "
                 "%.4g-%.4g, %d on the search bounds %s", side, solved.rho, solved.taus.log().mean().exp(),
                 self.level, solved.steps, solved.taus.min(), solved.taus.max(), at_bounds, SOLVE_TAU_BOUNDS)
        return solved.taus

    @torch.no_grad()
    def refresh(self) -> None:
        """Embed every training pair with the current encoders and set each sample's tau*."""
        ids, image_embeddings, text_embeddings = self.embed_training_set()
        for side, table, anchors, candidates in (("image", self.image_taus, image_embeddings, text_embeddings),
                                                 ("text", self.text_taus, text_embeddings, image_embeddings)):
            fresh = self.fresh_taus(side, anchors, candidates)
            previous = table[ids].to(fresh)
            mixed = (self.smoothing * fresh.log() + (1 - self.smoothing) * previous.log()).exp()
            table[ids] = mixed.to(table)


def competitor_kl(anchors: torch.Tensor, candidates: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """KL(softmax(h_i / tau_i) || uniform) over all N - 1 competitors, per row (for tests and checks)."""
    scores = anchors @ candidates.t()
    gaps = scores - scores.diag()[:, None]
    mask = ~torch.eye(len(scores), dtype=torch.bool)
    return kl_to_uniform(gaps[mask].view(len(scores), -1) / taus[:, None])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=BASE_CONFIG, help="base training config")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. run.seed=1 loss.rho=3.0")
    args = parser.parse_args(argv)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise SystemExit("dataset_oracle runs in one process")
    overrides = ["loss.name=dataset-oracle", *args.overrides]
    return train_main(["--config", str(args.config), *overrides])


if __name__ == "__main__":
    sys.exit(main())
