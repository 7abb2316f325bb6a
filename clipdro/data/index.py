"""Build a manifest (``key`` id rule) for existing img2dataset shards.

img2dataset names sample KEY = shard * 10**k + row (zero-padded to shard digits + k),
skips failed downloads (gaps) and writes ``{shard}_stats.json`` with ``count`` (rows
tried) and ``successes`` (samples written). With a stats file for every shard we open
no tar except to read the first KEY (which gives k); otherwise we scan member names.
Either way ``num_samples`` bounds every key + 1, so each id fits the DRO tables.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import webdataset as wds

from clipdro.data.manifest import FILENAME, Manifest, ShardInfo, is_url
from clipdro.errors import UsageError

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}


def local_shards(location: str | Path) -> list[Path]:
    """A folder's ``*.tar`` (sorted) or the files a brace pattern names; all must exist."""
    if is_url(str(location)):
        raise UsageError(f"{location}: indexing reads local shards; copy or mount them first")
    if Path(location).is_dir():
        shards = sorted(Path(location).glob("*.tar"))
        if not shards:
            raise UsageError(f"no *.tar shards in {location}")
        return shards
    shards = [Path(url) for url in wds.shardlists.expand_urls(str(location))]
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        raise UsageError(f"shard {missing[0]} does not exist ({len(missing)} of {len(shards)} missing)")
    return shards


def _split_member(name: str) -> tuple[str, str]:
    """'dir/000010005.jpg' -> ('000010005', 'jpg'), splitting like webdataset at the first dot."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext.lower()


def _scan(shard: Path) -> tuple[int, int]:
    """(samples with an image, largest integer key) of one shard."""
    keys_with_image: set[str] = set()
    with tarfile.open(shard) as tar:
        for member in tar:
            key, ext = _split_member(member.name)
            if member.isreg() and ext in IMAGE_EXTS:
                keys_with_image.add(key)
    try:
        return len(keys_with_image), max((int(key) for key in keys_with_image), default=-1)
    except ValueError:
        raise UsageError(f"{shard}: keys are not integers, so the key id rule cannot apply") from None


def _first_key(shard: Path) -> str:
    with tarfile.open(shard) as tar:
        for member in tar:
            return _split_member(member.name)[0]
    raise UsageError(f"{shard} is empty")


def _from_stats(shards: list[Path]) -> tuple[list[int], int, int] | None:
    """(counts, num_samples, key digits) from the stats files, or None if any is missing."""
    stats_files = [shard.with_name(f"{shard.stem}_stats.json") for shard in shards]
    if not all(path.is_file() for path in stats_files) or not all(s.stem.isdigit() for s in shards):
        return None
    stats = [json.loads(path.read_text()) for path in stats_files]
    first_nonempty = next((s for s, st in zip(shards, stats, strict=True) if st["successes"] > 0), None)
    if first_nonempty is None:
        raise UsageError("every shard's stats report 0 successes")
    key_digits = len(_first_key(first_nonempty)) - len(first_nonempty.stem)
    # Row r of shard s has key s * 10**k + r with r < count, so this bounds every key + 1.
    num_samples = max(int(shard.stem) * 10**key_digits + st["count"]
                      for shard, st in zip(shards, stats, strict=True))
    return [st["successes"] for st in stats], num_samples, key_digits


def index_shards(location: str | Path, out: str | Path) -> Manifest:
    """Write and return the manifest of the img2dataset shards at ``location``.

    ``out`` is the manifest file or its folder; shard paths are stored relative to it.
    """
    shards = local_shards(location)
    out = Path(out)
    if out.suffix != ".json":
        out = out / FILENAME
    root = out.parent
    from_stats = _from_stats(shards)
    if from_stats is not None:
        counts, num_samples, key_digits = from_stats
        extra = {"source": "img2dataset stats", "key_digits": key_digits}
    else:
        scans = [_scan(shard) for shard in shards]
        counts = [count for count, _ in scans]
        num_samples = max(largest for _, largest in scans) + 1
        extra = {"source": "member scan"}
    if num_samples < 1:
        raise UsageError(f"no samples in the shards at {location}")
    manifest = Manifest(num_samples=num_samples, id_rule="key", root=root, extra=extra,
                        shards=[ShardInfo(os.path.relpath(shard, root), count)
                                for shard, count in zip(shards, counts, strict=True)])
    manifest.save(out)
    return manifest
