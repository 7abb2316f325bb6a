"""Write (image, caption) samples as WebDataset shards in img2dataset layout plus a manifest.

Each sample becomes three tar members sharing one KEY: ``KEY.<jpg|png|webp>`` (the
encoded image bytes as given), ``KEY.txt`` (the caption, UTF-8) and ``KEY.json``
(``{"sample_id": id, **metadata}``). Ids are dense, in input order, and KEY is the id
zero-padded to :data:`KEY_DIGITS` digits, so the ``key`` and ``dense`` id rules agree
on our own shards.

Shards are byte-reproducible (fixed mtime, owner and mode in every tar header), so a
data set committed to the repository does not change when it is rebuilt. Each shard is
written under a temporary name and renamed when complete, and ``manifest.json`` is
written last: a folder with a manifest holds complete shards only.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdro.data.manifest import FILENAME, Manifest, ShardInfo
from clipdro.errors import UsageError

IMAGE_EXTS = ("jpg", "png", "webp")
KEY_DIGITS = 9  # img2dataset's default key width (5 shard digits + 4 row digits)


@dataclass
class ShardSample:
    image: bytes
    image_ext: str  # one of IMAGE_EXTS; names the encoding of ``image``
    caption: str
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable; "sample_id" is reserved


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _member_payloads(sample: ShardSample, sample_id: int) -> list[tuple[str, bytes]]:
    if sample.image_ext not in IMAGE_EXTS:
        raise UsageError(f"sample {sample_id}: image_ext {sample.image_ext!r}, expected one of {IMAGE_EXTS}")
    if not sample.caption.strip():
        raise UsageError(f"sample {sample_id}: empty caption")
    if "sample_id" in sample.metadata:
        raise UsageError(f"sample {sample_id}: metadata may not set 'sample_id' (the writer assigns it)")
    record = {"sample_id": sample_id, **sample.metadata}
    return [(sample.image_ext, sample.image),
            ("txt", sample.caption.encode("utf-8")),
            ("json", json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"))]


def _write_shard(path: Path, samples: list[tuple[int, ShardSample]]) -> None:
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample_id, sample in samples:
            key = f"{sample_id:0{KEY_DIGITS}d}"
            for ext, data in _member_payloads(sample, sample_id):
                _add_member(tar, f"{key}.{ext}", data)
    os.replace(partial, path)


def write_shards(samples: Iterable[ShardSample], out_dir: Path, samples_per_shard: int = 1000,
                 prefix: str = "train") -> Manifest:
    """Write ``samples`` to ``out_dir/{prefix}-NNNNNN.tar`` shards and ``out_dir/manifest.json``.

    Streams: at most one shard's samples are held in memory. Refuses a folder that already
    holds a manifest or shards with this prefix, so a rerun never mixes two data sets.
    """
    out_dir = Path(out_dir)
    if samples_per_shard < 1:
        raise UsageError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if (out_dir / FILENAME).exists() or any(out_dir.glob(f"{prefix}-*.tar")):
        raise UsageError(f"{out_dir} already holds a manifest or {prefix}-*.tar shards; use an empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    shards: list[ShardInfo] = []
    pending: list[tuple[int, ShardSample]] = []

    def flush() -> None:
        name = f"{prefix}-{len(shards):06d}.tar"
        _write_shard(out_dir / name, pending)
        shards.append(ShardInfo(path=name, num_samples=len(pending)))
        pending.clear()

    for sample_id, sample in enumerate(samples):
        pending.append((sample_id, sample))
        if len(pending) == samples_per_shard:
            flush()
    if pending:
        flush()
    if not shards:
        raise UsageError(f"no samples to write to {out_dir}")
    manifest = Manifest(num_samples=sum(s.num_samples for s in shards), id_rule="dense", shards=shards,
                        root=out_dir, extra={"key_digits": KEY_DIGITS})
    manifest.save()
    return manifest
