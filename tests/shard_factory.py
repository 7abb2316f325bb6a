"""Tiny shard sets for the data tests: dense shards from our writer, img2dataset-style shards
with gappy keys, and raw tars for corrupt members. Images are 16 px JPEGs whose colour
encodes the sample id, so a test can tell samples apart after decoding."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image

from clipdro.data.manifest import Manifest
from clipdro.data.writer import ShardSample, write_shards


def image_bytes(index: int, size: int = 16, fmt: str = "JPEG") -> bytes:
    colour = (index * 37 % 256, index * 91 % 256, index * 13 % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def dense_samples(count: int, size: int = 16) -> list[ShardSample]:
    return [ShardSample(image=image_bytes(i, size), image_ext="jpg", caption=f"picture number {i}",
                        metadata={"index": i}) for i in range(count)]


def write_dense(folder: Path, count: int, per_shard: int, size: int = 16) -> Manifest:
    return write_shards(dense_samples(count, size), folder, samples_per_shard=per_shard)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, index: int, caption: bytes | None = None) -> list[tuple[str, bytes]]:
    """Members of one well-formed img2dataset sample (no sample_id in the json)."""
    text = caption if caption is not None else f"picture number {index}".encode()
    return [(f"{key}.jpg", image_bytes(index)), (f"{key}.txt", text),
            (f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())]


def write_img2dataset(folder: Path, rows_per_shard: list[list[int]], rows_digits: int = 4,
                      stats: bool = True) -> list[int]:
    """Shards ``{shard:05d}.tar`` holding the given rows (gaps = failed downloads); returns the keys."""
    keys = []
    for shard, rows in enumerate(rows_per_shard):
        members = []
        for row in rows:
            key = shard * 10**rows_digits + row
            keys.append(key)
            members += sample_members(f"{key:0{5 + rows_digits}d}", key)
        write_tar(folder / f"{shard:05d}.tar", members)
        if stats:
            (folder / f"{shard:05d}_stats.json").write_text(
                json.dumps({"count": 10**rows_digits, "successes": len(rows)}))
    return keys
