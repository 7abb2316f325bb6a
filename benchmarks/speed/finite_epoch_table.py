"""Samples used per finite-mode epoch: the sample-level plan (clipdro.data.plan) against whole shards per worker.

    python -m benchmarks.speed.finite_epoch_table                        # CC3M's 332 shards, modelled counts
    python -m benchmarks.speed.finite_epoch_table --manifest cc3m/manifest.json   # a real manifest's counts

Without --manifest the shard counts model CC3M as img2dataset writes it: 3,318,333 rows in 332
shards of 10,000 rows (the last 8,333), each row downloaded with probability --success-rate
(binomial draws, fixed seed). "whole shards" is the rule finite mode had before the sample-level
plan: shards go to (rank, worker) readers by striding, every reader stops at the smallest
reader's share, and fewer shards than readers is refused.
"""

from __future__ import annotations

import argparse

import numpy as np

from clipdro.data.manifest import Manifest
from clipdro.data.plan import plan_finite
from clipdro.errors import UsageError

CC3M_ROWS = 3_318_333
ROWS_PER_SHARD = 10_000


def modelled_cc3m_counts(success_rate: float, seed: int = 0) -> list[int]:
    rows = [ROWS_PER_SHARD] * (CC3M_ROWS // ROWS_PER_SHARD) + [CC3M_ROWS % ROWS_PER_SHARD]
    return [int(n) for n in np.random.default_rng(seed).binomial(rows, success_rate)]


def whole_shard_used(counts: list[int], world_size: int, workers: int, batch_size: int) -> int | None:
    """Samples per epoch under the whole-shards-per-reader rule (None: the layout is refused)."""
    readers = world_size * workers
    if len(counts) < readers:
        return None
    shares = [sum(counts[rank::world_size][worker::workers]) for rank in range(world_size) for worker in range(workers)]
    return min(shares) // batch_size * batch_size * readers


def table(counts: list[int], world_sizes: list[int], workers: int, batch_sizes: list[int]) -> list[str]:
    total = sum(counts)
    lines = ["| ranks W | workers/rank | batch/rank | global batch | whole shards per worker | "
             "sample-level plan | unused (plan) |", "|---|---|---|---|---|---|---|"]
    for world_size in world_sizes:
        for batch_size in batch_sizes:
            old = whole_shard_used(counts, world_size, workers, batch_size)
            old_text = "refused (fewer shards than readers)" if old is None else f"{old:,} ({old / total:.2%})"
            try:
                plan = plan_finite([f"{i:05d}.tar" for i in range(len(counts))], counts, world_size, batch_size, seed=0)
                new_text, unused = f"{plan.used_samples:,} ({plan.used_samples / total:.2%})", \
                    f"{total - plan.used_samples:,}"
            except UsageError as error:
                new_text, unused = f"refused ({error})", "-"
            lines.append(f"| {world_size} | {workers} | {batch_size} | {world_size * batch_size:,} | {old_text} | "
                         f"{new_text} | {unused} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="take the shard counts from this manifest instead of the CC3M model")
    parser.add_argument("--success-rate", type=float, default=0.87, help="modelled download success rate")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[8, 32, 64, 256])
    parser.add_argument("--workers", type=int, default=8, help="loader workers per rank")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()
    if args.manifest:
        counts = [shard.num_samples for shard in Manifest.load(args.manifest).shards]
        where = args.manifest
    else:
        counts = modelled_cc3m_counts(args.success_rate)
        where = f"CC3M modelled: {CC3M_ROWS:,} rows, success rate {args.success_rate}"
    print(f"{len(counts)} shards, {sum(counts):,} samples ({where})\n")
    print("\n".join(table(counts, args.world_sizes, args.workers, args.batch_sizes)))


if __name__ == "__main__":
    main()
