"""A training split with a few exact duplicates: some captions given to one or two other pictures.

    python -m benchmarks.paper.duplicate_captions --fraction 0.2 --output runs/duplicate-captions/train
    python -m benchmarks.paper.reproduce_table --config benchmarks/paper/configs/pretrained.yaml \\
        --methods clip sogclr tempnet --output-dir runs/pretrained-duplicates tempnet.start_epoch=0 \\
        'data.sources=[{shards: runs/duplicate-captions/train}]'

The regime the paper's DRO rule is meant for is a handful of false negatives per anchor: a
competitor whose caption describes the anchor's picture exactly as well as its own. This script
plants exactly that: a random ``--fraction`` of the training pictures (the anchors) each get one
or two partners (half of them one, half two, at random), other pictures whose caption is
replaced by the anchor's caption. Anchor and partners then carry identical captions: for the
anchor's picture, k = 1 or 2 competitors are tied with its positive, and likewise for each
partner. Partners are drawn from the pictures that are neither anchors nor partners already. The
held-out split is left alone, so evaluation still asks for each picture's own caption.

Sample ids, images, order and shard sizes are those of the input (as in coarse_captions); each
changed sample's metadata keeps its ``original_caption`` and names its ``duplicate_of`` anchor.
"""

from __future__ import annotations

import random
import sys

from benchmarks.paper.coarse_captions import clean_samples, rewritten, split_arguments, write_like
from clipdro.data.manifest import Manifest


def plan_duplicates(num_samples: int, fraction: float, seed: int) -> dict[int, int]:
    """{partner position: anchor position}: round(fraction * N) anchors with 1 or 2 partners each."""
    rng = random.Random(seed)
    order = list(range(num_samples))
    rng.shuffle(order)
    anchors = order[:round(fraction * num_samples)]
    free = order[len(anchors):]
    partners: dict[int, int] = {}
    for anchor in anchors:
        for _ in range(rng.choice((1, 2))):
            if not free:
                raise ValueError(f"--fraction {fraction} leaves too few pictures to give every anchor its partners")
            partners[free.pop()] = anchor
    return partners


def main(argv: list[str] | None = None) -> int:
    args = split_arguments(argv, __doc__.split("\n\n")[0], 0.2, "share of pictures that get duplicates",
                           "duplicate-captions")
    if not 0.0 <= args.fraction <= 1.0 / 3.0:
        raise SystemExit(f"--fraction must be in [0, 1/3] (anchors and up to two partners each), got {args.fraction}")
    partners = plan_duplicates(Manifest.load(args.shards).num_samples, args.fraction, args.seed)
    anchors = set(partners.values())
    captions = {position: sample.caption for position, sample in clean_samples(args.shards) if position in anchors}

    def new_caption(position: int, sample) -> str | None:
        if position not in partners:
            return None
        sample.metadata["duplicate_of"] = partners[position]
        return captions[partners[position]]

    manifest = write_like(rewritten(args.shards, new_caption), args.shards, args.output)
    print(f"wrote {manifest.num_samples} samples to {args.output}: {len(anchors)} anchors, {len(partners)} partners "
          f"carrying an anchor's caption")
    return 0


if __name__ == "__main__":
    sys.exit(main())
