"""A validation split carved from the training split: what hyper-parameters are chosen on.

    python -m benchmarks.paper.validation_split --output runs/openclipart-valid
    # -> runs/openclipart-valid/train (shards, the rest of the training split)
    #    runs/openclipart-valid/valid (an evaluation set: images, captions, family labels)

The held-out test split (data/openclipart/test) answers the comparison; choosing a setting on it
as well would make its numbers optimistic for the setting chosen. This script sets aside
``--size`` training samples (default 1,000, the test split's size, so that retrieval over the
validation gallery is as hard as over the test gallery), drawn per family in proportion to the
family's share of the training split (every family keeps at least one training sample), with a
seeded generator. The rest is written as a new shard folder with dense sample ids in the original
order; the set-aside samples become an evaluation set in clipdro's format (docs/evaluation.md)
with the test split's class names and templates, each picture labelled with its family
(``category`` in the sample's metadata), so the same retrieval and zero-shot metrics apply.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.paper.coarse_captions import REPO_ROOT, clean_samples, write_like
from clipdro.data.evalset import EvalSet
from clipdro.data.writer import ShardSample

TEST_SPLIT = REPO_ROOT / "data" / "openclipart" / "test"
TRAIN_SPLIT = REPO_ROOT / "data" / "openclipart" / "train"


def plan_validation(categories: list[str], size: int, seed: int) -> set[int]:
    """Positions to set aside: per category round(size * share) by largest remainders, each category
    keeping at least one training sample; exactly ``size`` in all."""
    if not 0 < size < len(categories):
        raise ValueError(f"--size must be in [1, {len(categories) - 1}], got {size}")
    by_category: dict[str, list[int]] = defaultdict(list)
    for position, category in enumerate(categories):
        by_category[category].append(position)
    names = sorted(by_category)
    quotas = {name: size * len(by_category[name]) / len(categories) for name in names}
    counts = {name: min(int(quotas[name]), len(by_category[name]) - 1) for name in names}
    # Largest remainders first (ties by name), never taking a category's last sample.
    for name in sorted(names, key=lambda name: (counts[name] - quotas[name], name)):
        if sum(counts.values()) == size:
            break
        if counts[name] < len(by_category[name]) - 1:
            counts[name] += 1
    if sum(counts.values()) != size:
        raise ValueError(f"cannot set aside {size} samples and keep one of each category for training")
    rng = random.Random(seed)
    return {position for name in names for position in rng.sample(by_category[name], counts[name])}


def write_validation_set(samples: list[ShardSample], root: Path, test_split: Path) -> EvalSet:
    """``samples`` as an evaluation set at ``root``, labelled by family with the test split's class names."""
    test = EvalSet.load(test_split)
    folder_names = sorted({sample.metadata["category"] for sample in samples})
    label_of_category = labels_by_category(test, folder_names)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for index, sample in enumerate(samples):
        image = f"images/{index:06d}.{sample.image_ext}"
        (root / image).write_bytes(sample.image)
        images.append(image)
    evalset = EvalSet(root=root, name=f"{test.name.removesuffix('-test')}-valid", images=images,
                      captions=[[sample.caption] for sample in samples],
                      labels=[label_of_category[sample.metadata["category"]] for sample in samples],
                      classnames=test.classnames, templates=test.templates)
    evalset.save()
    return evalset


def labels_by_category(test: EvalSet, categories: list[str]) -> dict[str, int]:
    """The test split's label of each training category: its classnames are the sorted category
    folders' names (data_tools/build_openclipart.py), so category i of the sorted list is label i."""
    stats = json.loads((TEST_SPLIT.parent / "build_stats.json").read_text())["per_category"]
    folders = sorted(stats)
    if [stats[folder]["classname"] for folder in folders] != test.classnames:
        raise ValueError("the test split's classnames are not build_stats.json's sorted categories")
    return {category: folders.index(category) for category in categories}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=TRAIN_SPLIT, help="the training split (dense sample ids)")
    parser.add_argument("--size", type=int, default=1000, help="samples set aside for validation")
    parser.add_argument("--seed", type=int, default=0, help="chooses which samples are set aside")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "runs" / "openclipart-valid")
    args = parser.parse_args(argv)
    if (args.output / "train").exists() or (args.output / "valid").exists():
        raise SystemExit(f"{args.output} already holds a split; remove it or choose another --output")
    samples = [sample for _, sample in clean_samples(args.shards)]
    held_out = plan_validation([sample.metadata["category"] for sample in samples], args.size, args.seed)
    manifest = write_like((sample for position, sample in enumerate(samples) if position not in held_out),
                          args.shards, args.output / "train")
    write_validation_set([samples[position] for position in sorted(held_out)], args.output / "valid", TEST_SPLIT)
    print(f"wrote {manifest.num_samples} training samples to {args.output / 'train'} and {len(held_out)} "
          f"validation pictures to {args.output / 'valid'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
