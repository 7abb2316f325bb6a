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
epochs; 1, the default, replaces it) and ``level`` (rescale each refresh to this geometric-mean
tau, isolating the spread from the level; default: none). Between refreshes the taus are fixed.
The tables are buffers of the loss, so they are checkpointed with it.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

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


def dataset_taus(anchors: torch.Tensor, candidates: torch.Tensor, rho: float, tau_min: float, tau_max: float,
                 chunk: int = 1024) -> torch.Tensor:
    """tau*_i for every row i of ``anchors`` [N, d] against all other rows of ``candidates`` [N, d]
    (row i of each is a positive pair), in chunks of rows: [N]."""
    taus = []
    for start in range(0, len(anchors), chunk):
        rows = torch.arange(start, min(start + chunk, len(anchors)))
        scores = anchors[rows] @ candidates.t()  # [chunk, N]
        gaps = scores - scores[torch.arange(len(rows)), rows][:, None]
        competitors = torch.ones_like(gaps, dtype=torch.bool)
        competitors[torch.arange(len(rows)), rows] = False
        taus.append(best_taus(gaps[competitors].view(len(rows), -1), rho, tau_min, tau_max))
    return torch.cat(taus)


@register_loss
class DatasetOracleLoss(SogCLRLoss):
    """SogCLR's estimator with each sample's dataset-scope tau*, refreshed at every epoch start."""

    name = "dataset-oracle"
    option_names = ("smoothing", "level")
    config_sections = ("loss", "temperature", "data", "model")  # the model section: its name

    def __init__(self, num_samples: int, rho: float, tau_min: float, tau_max: float, tau_init: float,
                 steps_per_epoch: int, data: PipelineConfig, model_name: str, smoothing: float = 1.0,
                 level: float | None = None, gamma: float = 0.8):
        super().__init__(num_samples, tau=tau_init, gamma=gamma)
        if not 0.0 < smoothing <= 1.0:
            raise UsageError(f"dataset-oracle: loss.options.smoothing must lie in (0, 1], got {smoothing}")
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
                   gamma=loss.gamma)

    def prepare_model(self, clip: torch.nn.Module) -> None:
        super().prepare_model(clip)
        self._clip = clip  # embedded at every epoch start

    def forward(self, image_features, text_features, image_tau=None, text_tau=None, sample_ids=None):
        if int(self.steps_taken) % self.steps_per_epoch == 0:
            self.refresh()
        self.steps_taken += 1
        return super().forward(image_features, text_features, image_tau, text_tau, sample_ids)

    def anchor_temperatures(self, sample_ids, image_tau, text_tau):
        return self.image_taus[sample_ids], self.text_taus[sample_ids]

    @torch.no_grad()
    def refresh(self) -> None:
        """Embed every training pair with the current encoders and set each sample's tau*."""
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
        ids_tensor = torch.tensor(ids, device=device)
        image_embeddings, text_embeddings = torch.cat(images), torch.cat(texts)
        for table, anchors, candidates in ((self.image_taus, image_embeddings, text_embeddings),
                                           (self.text_taus, text_embeddings, image_embeddings)):
            fresh = dataset_taus(anchors, candidates, self.oracle_rho, 1e-4, 10.0)
            if self.level is not None:
                fresh = fresh * (self.level / fresh.log().mean().exp())
            fresh = fresh.clamp(self.tau_min, self.tau_max)
            previous = table[ids_tensor].to(fresh)
            mixed = (self.smoothing * fresh.log() + (1 - self.smoothing) * previous.log()).exp()
            table[ids_tensor] = mixed.to(table)


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
