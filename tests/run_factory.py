"""A tiny trained run on generated shards (clipdro-tiny-vit, 48 samples, one epoch of 6 steps of 8).

Captions draw words from a small vocabulary with Zipf-like frequencies, so caption commonness
varies from sample to sample (the temperature report bins and correlates it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdro.config import load_config
from clipdro.data.manifest import Manifest
from clipdro.data.writer import ShardSample, write_shards
from clipdro.train import train
from clipdro.train_config import TrainConfig
from tests.shard_factory import image_bytes

NUM_SAMPLES = 48
# The headings every `clipdro report` of a per-sample run has (a labelled set adds "## Mean temperature per class").
REPORT_SECTIONS = ["# Learned temperatures", "## Temperature distributions", "## Temperature vs caption commonness",
                   "## Captions with the lowest and highest tau"]
BATCH = 8  # train_overrides' batch: one epoch of the `shards` fixture (tests/conftest.py) is 6 steps
VOCABULARY = ["red", "blue", "cat", "dog", "tree", "house", "car", "moon", "star", "boat", "fish", "bird"]


@dataclass
class TinyRun:
    run_dir: Path
    manifest: Manifest
    captions: list[str]  # by sample id


def tiny_captions(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(VOCABULARY) + 1)
    weights /= weights.sum()
    return [" ".join(rng.choice(VOCABULARY, size=int(rng.integers(2, 5)), replace=False, p=weights))
            for _ in range(count)]


def train_overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny, deterministic training run on ``shards`` in ``run_dir``: no loader workers, no shuffling,
    no TempNet dropout, no random augmentation, a log record every step; ``extra`` overrides added last."""
    return [f"data.sources=[{{shards: {shards}}}]", f"data.batch_size={BATCH}", "data.num_workers=0",
            "data.resampled=false", "data.shuffle_buffer=1", "loss.rho=1.0", "tempnet.dropout=0.0",
            "model.train_transform=eval", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
            "run.log_every=1", *extra]


def config_for(shards: Path, run_dir: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, train_overrides(shards, run_dir, *extra))


def step_losses(run_dir: Path) -> dict[int, float]:
    """{step: logged loss} of a run's metrics.jsonl."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in lines if "loss" in record}


def train_tiny_run(folder: Path, loss_name: str) -> TinyRun:
    captions = tiny_captions(NUM_SAMPLES)
    samples = [ShardSample(image=image_bytes(i, 32), image_ext="jpg", caption=caption)
               for i, caption in enumerate(captions)]
    manifest = write_shards(samples, folder / "shards", samples_per_shard=16)
    run_dir = folder / "run"
    train(load_config(TrainConfig, None, [
        f"data.sources=[{{shards: {folder / 'shards'}}}]", "data.batch_size=8", "data.num_workers=0",
        "data.resampled=false", "data.shuffle_buffer=1", f"loss.name={loss_name}", "loss.rho=1.0",
        "tempnet.dropout=0.0", "model.train_transform=eval", "run.epochs=1",
        f"run.output_dir={folder}", f"run.name={run_dir.name}"]))
    return TinyRun(run_dir, manifest, captions)
