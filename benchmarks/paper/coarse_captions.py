"""A training split with planted false negatives: some captions replaced by their family's name.

    python -m benchmarks.paper.coarse_captions --fraction 0.3 --output runs/coarse-captions/train
    clipdro train --config benchmarks/paper/configs/reproduce.yaml loss.name=sogclr temperature.init=0.06 \\
        'data.sources=[{shards: runs/coarse-captions/train}]' run.name=coarse-sogclr

On the clean openclipart split the competitors that beat an anchor's positive are true negatives
(sibling captions such as "the 2 of spades" vs "the 4 of spades", docs/results.md), so the DRO
rule's warming of those anchors cannot help. This script builds the regime the rule is meant for:
a random ``--fraction`` of the training captions is replaced by a coarse caption naming only the
picture's family, its folder in the openclipart package ("clip art of stars", "clip art of
flags"). Two pictures of one family with coarse captions are then each other's false negatives:
the other's caption describes the picture exactly as well as its own. The held-out split is left
alone, so evaluation still asks for the fine captions.

Sample ids, images, order and shard sizes are those of the input, so runs on the two splits see
the same pictures in the same order; each changed sample's metadata keeps its ``original_caption``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import webdataset as wds

from clipdro.data.manifest import Manifest
from clipdro.data.writer import IMAGE_EXTS, ShardSample, write_shards

REPO_ROOT = Path(__file__).resolve().parents[2]


def family_caption(source: str) -> str:
    """'shapes/stars/star_15pt07step.svg' -> 'clip art of stars'; 'people/man.svg' -> 'clip art of people'."""
    folders = source.split("/")[:-1]
    return f"clip art of {folders[-1].replace('_', ' ')}"


def clean_samples(shards: Path) -> Iterator[tuple[int, ShardSample]]:
    """(position, sample) of a dense shard folder in order; the metadata keeps everything but sample_id."""
    position = 0
    for url in Manifest.load(shards).shard_urls():
        for raw in wds.tarfile_samples([{"url": url}]):
            metadata = json.loads(raw["json"])
            if metadata.pop("sample_id") != position:
                raise ValueError(f"{url}: sample ids are not dense in shard order at {position}")
            extension = next(ext for ext in IMAGE_EXTS if ext in raw)
            yield position, ShardSample(raw[extension], extension, raw["txt"].decode("utf-8"), metadata)
            position += 1


def rewritten(shards: Path, new_caption: Callable[[int, ShardSample], str | None]) -> Iterator[ShardSample]:
    """The samples of ``shards`` in order; where ``new_caption(position, sample)`` gives a caption it
    replaces the sample's, whose metadata then keeps the ``original_caption``."""
    for position, sample in clean_samples(shards):
        caption = new_caption(position, sample)
        if caption is not None:
            sample.metadata["original_caption"] = sample.caption
            sample = dataclasses.replace(sample, caption=caption)
        yield sample


def coarsened(shards: Path, fraction: float, seed: int) -> Iterator[ShardSample]:
    """The samples of ``shards`` in order, a seeded ``fraction`` of them with their family caption."""
    manifest = Manifest.load(shards)
    coarse_ids = set(random.Random(seed).sample(range(manifest.num_samples), round(fraction * manifest.num_samples)))
    return rewritten(shards, lambda position, sample:
                     family_caption(sample.metadata["source"]) if position in coarse_ids else None)


def write_like(samples: Iterator[ShardSample], shards: Path, output: Path) -> Manifest:
    """Write ``samples`` to ``output`` with the shard sizes of ``shards``."""
    sizes = [shard.num_samples for shard in Manifest.load(shards).shards]
    return write_shards(samples, output, samples_per_shard=max(sizes))


def split_arguments(argv: list[str] | None, description: str, fraction: float, fraction_help: str,
                    output: str) -> argparse.Namespace:
    """The command line every rewritten-split script shares: --shards, --fraction, --seed, --output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shards", type=Path, default=REPO_ROOT / "data" / "openclipart" / "train",
                        help="a shard folder with dense sample ids in shard order")
    parser.add_argument("--fraction", type=float, default=fraction, help=fraction_help)
    parser.add_argument("--seed", type=int, default=0, help="chooses which samples change")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "runs" / output / "train")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = split_arguments(argv, __doc__.split("\n\n")[0], 0.3, "share of captions replaced", "coarse-captions")
    if not 0.0 <= args.fraction <= 1.0:
        raise SystemExit(f"--fraction must be in [0, 1], got {args.fraction}")
    manifest = write_like(coarsened(args.shards, args.fraction, args.seed), args.shards, args.output)
    print(f"wrote {manifest.num_samples} samples ({args.fraction:.0%} with family captions) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
