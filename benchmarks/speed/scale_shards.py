"""WebDataset shards in img2dataset layout whose keys reach N: a few thousand real samples, ids spread to N.

    python -m benchmarks.speed.scale_shards --source data/openclipart/train --num-ids 1e8 --samples 2048 \
        --shards 4 --output /tmp/scale-shards-1e8

Settings:

* ``--source``: a shard folder with a clipdro manifest (``clipdro data from-csv`` or our writer made it); its
  samples are copied in manifest order, image bytes and captions unchanged.
* ``--num-ids N``: the key range. Keys are ``i * (N - 1) // (S - 1)`` for ``i`` in ``0..S-1``: evenly spaced,
  sorted, distinct (so ``N >= S``), the first 0 and the last exactly ``N - 1``. ``1e8`` notation is accepted.
* ``--samples S``: samples written; the source's samples are repeated when S exceeds them.
* ``--shards K``: tars ``00000.tar`` .. ``{K-1:05d}.tar``; shard k holds the k-th of K contiguous blocks of the
  sorted keys (block sizes differ by at most one).
* ``--output``: a new or empty folder.

Each sample is three members sharing KEY, as img2dataset writes them: ``KEY.<ext>`` (the source image, with its
extension), ``KEY.txt`` (the caption) and ``KEY.json`` (``{"key", "status": "success", "copied_from"}``, no
``sample_id``). KEY is zero-padded to img2dataset's 9 digits, or to the digits of ``N - 1`` when those are more.

The manifest is clipdro's own: :func:`clipdro.data.index.index_shards` (what ``clipdro data index`` runs) scans
the members and sets ``num_samples = max key + 1 = N`` under the ``key`` id rule, so ``clipdro train`` on the
folder sizes its per-sample tables to exactly N rows and reads each sample's id as ``int(KEY)``.

No ``{shard}_stats.json`` files are written, on purpose: with them, the index takes img2dataset's layout
(KEY = shard * 10**k + row) for granted and computes ``num_samples`` from the shard numbers and row counts,
which these spread keys do not follow (their shard prefix is not the tar's number).
"""

from __future__ import annotations

import argparse
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from clipdro.data.cli import index_summary
from clipdro.data.index import IMAGE_EXTS, ShardIndex, index_shards
from clipdro.data.manifest import FILENAME, Manifest
from clipdro.data.tar_samples import tar_samples
from clipdro.data.writer import KEY_DIGITS, _add_member
from clipdro.errors import UsageError


@dataclass
class SourceSample:
    image_ext: str  # the source member's extension (jpg, png, webp, ...)
    image: bytes
    caption: bytes  # the source's KEY.txt, unchanged
    origin: str  # "SHARD/KEY" in the source


def count_arg(text: str) -> int:
    """A positive integer, also written as a float such as ``1e8`` or ``4.13e8`` (it must be a whole number)."""
    value = float(text)
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(value)


def spread_keys(num_ids: int, samples: int) -> list[int]:
    """``samples`` distinct sorted keys in [0, num_ids): evenly spaced, the last exactly ``num_ids - 1``."""
    if not 1 <= samples <= num_ids:
        raise UsageError(f"need 1 <= samples <= num_ids for distinct keys, got {samples} samples, {num_ids} ids")
    if samples == 1:
        return [num_ids - 1]
    return [index * (num_ids - 1) // (samples - 1) for index in range(samples)]


def read_source(source: Path, limit: int) -> list[SourceSample]:
    """Up to ``limit`` samples of the shards in ``source``'s manifest, in manifest order."""
    manifest = Manifest.load(source)
    samples: list[SourceSample] = []
    for url in manifest.shard_urls():
        errors: list[Exception] = []
        with open(url, "rb") as stream:
            for sample in tar_samples(stream, url, errors):
                image_ext = next((ext for ext in sample if ext in IMAGE_EXTS), None)
                if image_ext is None or "txt" not in sample:
                    raise UsageError(f"{url}: sample {sample['__key__']} lacks an image or a caption")
                samples.append(SourceSample(image_ext, sample[image_ext], sample["txt"],
                                            f"{Path(url).name}/{sample['__key__']}"))
                if len(samples) == limit:
                    return samples
        if errors:
            raise UsageError(f"{url}: {errors[0]}")
    if not samples:
        raise UsageError(f"no samples in {source}")
    return samples


def write_tar(path: Path, keys: list[int], samples: list[SourceSample], key_width: int) -> None:
    """One shard: sample ``i`` of ``samples`` under key ``keys[i]``; written under a temporary name, then renamed."""
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, sample in zip(keys, samples, strict=True):
            name = f"{key:0{key_width}d}"
            record = {"key": name, "status": "success", "copied_from": sample.origin}
            _add_member(tar, f"{name}.{sample.image_ext}", sample.image)
            _add_member(tar, f"{name}.txt", sample.caption)
            _add_member(tar, f"{name}.json", json.dumps(record, sort_keys=True).encode("utf-8"))
    partial.replace(path)


def write_scaled_shards(source: Path, output: Path, num_ids: int, samples: int, shards: int) -> ShardIndex:
    """Write the shards (see the module docstring) and their manifest; returns the index's result."""
    if not 1 <= shards <= samples:
        raise UsageError(f"need 1 <= shards <= samples, got {shards} shards for {samples} samples")
    output = Path(output)
    if (output / FILENAME).exists() or any(output.glob("*.tar")):
        raise UsageError(f"{output} already holds a manifest or shards; use an empty folder")
    keys = spread_keys(num_ids, samples)
    originals = read_source(Path(source), samples)
    copies = [originals[index % len(originals)] for index in range(samples)]
    key_width = max(KEY_DIGITS, len(str(num_ids - 1)))
    output.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        block = slice(shard * samples // shards, (shard + 1) * samples // shards)
        write_tar(output / f"{shard:05d}.tar", keys[block], copies[block], key_width)
    result = index_shards(output, output)
    if result.manifest.num_samples != num_ids:  # the index's rule, max key + 1, must give N back
        raise RuntimeError(f"{output}: the index gave num_samples {result.manifest.num_samples}, not {num_ids}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("data/openclipart/train"),
                        help="shard folder with a manifest whose samples are copied (default: %(default)s)")
    parser.add_argument("--num-ids", type=count_arg, required=True, help="N: keys spread over [0, N)")
    parser.add_argument("--samples", type=count_arg, default=2048, help="S: samples written (default: %(default)s)")
    parser.add_argument("--shards", type=count_arg, default=4, help="K: tar files (default: %(default)s)")
    parser.add_argument("--output", type=Path, required=True, help="new or empty folder")
    args = parser.parse_args(argv)
    result = write_scaled_shards(args.source, args.output, args.num_ids, args.samples, args.shards)
    for line in index_summary(result):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
