"""The training data section of a run's config (`data:` in the YAML), with no data-loading imports.

Kept apart from :mod:`clipdro.data.pipeline` so that reading or validating a config never
imports webdataset or PIL; the pipeline imports these dataclasses from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Shard URL schemes webdataset has no opener for -> a shell command writing the object to stdout
# ({url} becomes the shell-quoted URL); read through webdataset's ``pipe:`` opener.
DEFAULT_URL_COMMANDS: dict[str, str] = {"s3": "aws s3 cp {url} -"}


@dataclass
class DataSource:
    # A manifest.json, its folder, or a brace pattern of shards (paths or URLs: http(s)://, pipe:, s3://)
    # listed in a manifest: ``manifest`` when given, else the manifest in the shards' folder (paths only).
    shards: str
    weight: float = 1.0  # resampled mode: expected share of this source's samples in the stream
    manifest: str | None = None  # the manifest listing a brace pattern's shards; needed for URL patterns


@dataclass
class PipelineConfig:
    sources: list[DataSource]
    batch_size: int  # per rank
    epoch_samples: int | None = None  # all ranks together; required when resampled, optional cap when finite
    resampled: bool = True
    num_workers: int = 2
    seed: int = 0
    shuffle_buffer: int = 1000  # raw samples per worker; 1 keeps shard order
    shard_retries: int = 2  # a shard URL that fails part-way is re-opened this often, then skipped (bad_shard)
    # scheme -> command for URL schemes webdataset cannot open (merged over DEFAULT_URL_COMMANDS)
    url_commands: dict[str, str] = field(default_factory=dict)
