"""A Zipf-resampled training split: the long-tail regime the paper motivates TempNet with.

    python -m benchmarks.paper.zipf_split --output runs/openclipart-zipf [--exponent 1.0 --seed 0 --size N]
    # -> runs/openclipart-zipf/train             (shards, dense sample ids)
    #    runs/openclipart-zipf/zipf_summary.json (per family: counts before / after, head or tail)

A family is a training sample's ``category`` (its top folder in the openclipart package: shapes,
computer, signs_and_symbols, ...; the test split's labels name the same 22 families). Families are
ranked by their count in the training split ``--shards``, largest first, ties by name
(:func:`family_ranking`); the family of rank r gets weight r^-exponent, and a split of ``--size``
samples (default: as many as the training split) gives each family its share of ``--size`` by
those weights, rounded by largest remainders (ties: the better-ranked family first) so that the
counts add up to ``--size`` exactly (:func:`zipf_quotas`). A family whose rounded share is 0 gets
one sample, taken from the family with the most; so every family stays in the training data.

Within a family (:func:`draw_family`), a quota no larger than the family is drawn without
replacement; a larger one repeats every picture quota // n times and draws quota % n distinct
pictures once more (with replacement, but spread as evenly as possible, so no picture is left
out and none is repeated more than once beyond the others). The summary says which families were
repeated and how often. The drawn samples are written in a seeded random order, not family by
family: the training pipeline's shuffle buffer (2,000 samples in the pretrained config) could not
undo a sorted order. Each sample keeps its metadata, plus ``zipf_source_id``, its sample id in
``--shards``. One ``--seed`` makes every draw; the same arguments give the same split.

Head and tail (:func:`head_and_tail`, the one rule that this script and
benchmarks/paper/family_recall.py both use): families ranked by their count in the Zipf split
(largest first, ties by name); the first ceil(F / 2) of the F families are the head, the other
floor(F / 2), the last half of the families, are the tail. The Zipf counts fall with the
training-split rank, so the same families are head and tail in the original training split as
well: family_recall.py splits recall of runs trained on either split the same way.

The test split (data/openclipart/test) is unchanged; the summary records each family's label and
classname there and its number of test pictures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.paper.coarse_captions import REPO_ROOT, clean_samples, write_like
from benchmarks.paper.validation_split import TEST_SPLIT, TRAIN_SPLIT, labels_by_category
from clipdro.data.evalset import EvalSet

SUMMARY = "zipf_summary.json"


def family_ranking(counts: dict[str, int]) -> list[str]:
    """Family names by count, largest first, ties by name."""
    return sorted(counts, key=lambda family: (-counts[family], family))


def head_and_tail(counts: dict[str, int]) -> tuple[list[str], list[str]]:
    """(head, tail) of families by their count in the Zipf split: the first ceil(F / 2) of
    :func:`family_ranking` are the head, the last floor(F / 2) the tail."""
    ranked = family_ranking(counts)
    cut = math.ceil(len(ranked) / 2)
    return ranked[:cut], ranked[cut:]


def zipf_quotas(train_counts: dict[str, int], size: int, exponent: float) -> dict[str, int]:
    """Samples per family in the Zipf split: ``size`` shared by weight rank^-exponent (rank in
    :func:`family_ranking` of ``train_counts``, from 1), largest remainders, at least one each."""
    ranked = family_ranking(train_counts)
    if size < len(ranked):
        raise ValueError(f"--size {size} is smaller than the number of families ({len(ranked)})")
    weights = [(rank + 1) ** -exponent for rank in range(len(ranked))]
    exact = [size * weight / sum(weights) for weight in weights]
    counts = [math.floor(share) for share in exact]
    by_remainder = sorted(range(len(ranked)), key=lambda rank: (counts[rank] - exact[rank], rank))
    for rank in by_remainder[:size - sum(counts)]:
        counts[rank] += 1
    for rank in range(len(ranked)):
        if counts[rank] == 0:
            counts[rank] = 1
            counts[counts.index(max(counts))] -= 1  # the first family with the most samples
    return dict(zip(ranked, counts, strict=True))


def draw_family(positions: list[int], quota: int, rng: random.Random) -> list[int]:
    """``quota`` of a family's ``positions``: without replacement when it has enough, else every
    position quota // n times and quota % n distinct ones once more."""
    repeats, extra = divmod(quota, len(positions))
    return positions * repeats + rng.sample(positions, extra)


def draw_split(categories: list[str], size: int, exponent: float, seed: int) -> tuple[list[int], dict[str, int]]:
    """Positions (into ``categories``, the training samples' families) of the Zipf split in their
    written order, and each family's quota."""
    by_family: dict[str, list[int]] = defaultdict(list)
    for position, family in enumerate(categories):
        by_family[family].append(position)
    quotas = zipf_quotas({family: len(positions) for family, positions in by_family.items()}, size, exponent)
    rng = random.Random(seed)
    drawn = [position for family in family_ranking(quotas) for position in draw_family(by_family[family],
                                                                                     quotas[family], rng)]
    rng.shuffle(drawn)
    return drawn, quotas


def summary(categories: list[str], drawn: list[int], quotas: dict[str, int], test: EvalSet,
            labels: dict[str, int], settings: dict) -> dict:
    """zipf_summary.json: the settings, per family (in training rank order) its counts, weight,
    sampling, group and test-split label, and the head / tail lists with their sample counts."""
    train_counts = Counter(categories)
    copies_by_family: dict[str, list[int]] = defaultdict(list)  # per family: how often each drawn picture is
    for position, copies in Counter(drawn).items():
        copies_by_family[categories[position]].append(copies)
    head, tail = head_and_tail(quotas)
    test_counts = Counter(test.labels or [])
    families = []
    for rank, family in enumerate(family_ranking(train_counts), start=1):
        repeated = quotas[family] > train_counts[family]
        families.append({"family": family, "rank": rank, "weight": rank ** -settings["exponent"],
                         "train_count": train_counts[family], "zipf_count": quotas[family],
                         "distinct_pictures": len(copies_by_family[family]),
                         "sampling": "with replacement (every picture repeated)" if repeated
                         else "without replacement", "max_copies_of_a_picture": max(copies_by_family[family]),
                         "group": "head" if family in head else "tail", "test_label": labels[family],
                         "test_classname": test.classnames[labels[family]],
                         "test_pictures": test_counts[labels[family]]})
    return {**settings, "families": families, "head": head, "tail": tail,
            "head_samples": sum(quotas[family] for family in head),
            "tail_samples": sum(quotas[family] for family in tail),
            "rule": "families ranked by zipf_count (largest first, ties by name): the first ceil(F/2) are the head, "
                    "the last floor(F/2) the tail (benchmarks.paper.zipf_split.head_and_tail)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, default=TRAIN_SPLIT, help="the training split (dense sample ids)")
    parser.add_argument("--test", type=Path, default=TEST_SPLIT, help="the test split whose labels name the families")
    parser.add_argument("--exponent", type=float, default=1.0, help="family of rank r gets weight r^-exponent")
    parser.add_argument("--size", type=int, help="samples in the Zipf split (default: as many as --shards)")
    parser.add_argument("--seed", type=int, default=0, help="makes every draw")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "runs" / "openclipart-zipf")
    args = parser.parse_args(argv)
    if (args.output / "train").exists():
        raise SystemExit(f"{args.output} already holds a split; remove it or choose another --output")
    samples = [sample for _, sample in clean_samples(args.shards)]
    categories = [sample.metadata["category"] for sample in samples]
    size = args.size or len(samples)
    drawn, quotas = draw_split(categories, size, args.exponent, args.seed)
    manifest = write_like((dataclasses.replace(samples[position], metadata={**samples[position].metadata,
                                                                           "zipf_source_id": position})
                           for position in drawn), args.shards, args.output / "train")
    test = EvalSet.load(args.test)
    settings = {"shards": str(args.shards), "exponent": args.exponent, "size": size, "seed": args.seed,
                "train_samples": len(samples), "written": str(args.output / "train")}
    report = summary(categories, drawn, quotas, test, labels_by_category(test, sorted(quotas)), settings)
    (args.output / SUMMARY).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {manifest.num_samples} samples of {len(quotas)} families to {args.output / 'train'}: "
          f"head {len(report['head'])} families / {report['head_samples']} samples, tail {len(report['tail'])} "
          f"families / {report['tail_samples']} samples ({args.output / SUMMARY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
