"""The training data section of a run's config (`data:` in the YAML), with no data-loading imports.

Kept apart from :mod:`clipdro.data.pipeline` so that reading or validating a config never
imports webdataset or PIL; the pipeline imports these dataclasses from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataSource:
    shards: str  # a manifest.json, its folder, or a brace pattern of shards listed in that folder's manifest
    weight: float = 1.0  # resampled mode: expected share of this source's samples in the stream


@dataclass
class PipelineConfig:
    sources: list[DataSource]
    batch_size: int  # per rank
    epoch_samples: int | None = None  # all ranks together; required when resampled, optional cap when finite
    resampled: bool = True
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 1000  # raw samples per worker; 1 keeps shard order
