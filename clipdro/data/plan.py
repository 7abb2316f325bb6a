"""Finite-mode epoch plan: which samples of which shards each rank and each loader worker reads.

Whole shards per worker waste data (every worker stops at the smallest worker's share) and need
a shard per worker. Here the shards are cut at the sample level instead:

1. The shards, in an order fixed by the run seed (so every rank mixes every source), form one
   sequence of T samples (the manifest counts). Rank r owns the contiguous range
   ``[T*r // W, T*(r+1) // W)``: a fixed partition for the whole run, independent of the epoch
   and of the loader workers, so per-rank state (e.g. rank-local per-sample tables) can follow it.
2. Every rank takes the same number of batches, ``N = (T // W) // batch_size`` (equal step
   counts keep DDP in lock-step), so at most one global batch (plus W - 1 samples) is unused
   per epoch, at any W and any number of workers.
3. Per epoch, a rank shuffles its pieces and cuts them into one range per loader worker, sized in
   proportion to the worker's batches (the DataLoader takes rank batch b from worker b % workers).

A piece is ``(url, start, stop)`` in *raw* tar samples of the shard (webdataset's samples in tar
order, including ones the loader will later skip); the last piece of a shard reads to its end, so
no sample of a shard is left out when its manifest count differs from its raw count. Pieces of
one shard never overlap, so no sample is read twice in a pass. Sample ids come from the samples
themselves (:mod:`clipdro.data.manifest`), so the cut does not change them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from typing import Any

from clipdro.errors import UsageError


def derive_seed(*parts: Any) -> int:
    """A 64-bit seed from the run seed and a position (epoch, rank, worker, purpose)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


@dataclass(frozen=True)
class ShardPiece:
    url: str
    start: int  # first raw sample (tar order) of the shard that this piece reads
    stop: int | None  # end, exclusive; None: to the end of the shard
    planned: int  # samples the manifest promises in [start, stop)


@dataclass(frozen=True)
class FinitePlan:
    """The rank partition and the epoch length of finite mode."""

    rank_pieces: list[list[ShardPiece]]  # rank r reads only rank_pieces[r], every epoch
    batches_per_rank: int
    batch_size: int
    shard_samples: int  # T: samples in all shards (manifest counts)

    @property
    def world_size(self) -> int:
        return len(self.rank_pieces)

    @property
    def used_samples(self) -> int:
        """Samples read per epoch, all ranks together."""
        return self.batches_per_rank * self.batch_size * self.world_size


def plan_finite(urls: list[str], counts: list[int], world_size: int, batch_size: int, seed: int,
                epoch_samples: int | None = None) -> FinitePlan:
    """The finite-mode plan for shards ``urls`` holding ``counts`` samples (see the module doc).

    ``epoch_samples`` (all ranks together) caps the epoch; it must allow 1..capacity batches per rank.
    """
    order = list(range(len(urls)))
    random.Random(derive_seed(seed, "shard order")).shuffle(order)
    pieces = [ShardPiece(urls[i], 0, None, counts[i]) for i in order if counts[i] > 0]
    total = sum(counts)
    rank_sizes = [total * (rank + 1) // world_size - total * rank // world_size for rank in range(world_size)]
    capacity = min(rank_sizes) // batch_size
    if capacity == 0:
        raise UsageError(f"the shards hold {total} samples: less than one batch of {batch_size} for each of "
                         f"{world_size} ranks")
    batches = capacity if epoch_samples is None else epoch_samples // (world_size * batch_size)
    if not 0 < batches <= capacity:
        raise UsageError(f"epoch_samples {epoch_samples} needs {batches} batches per rank; finite mode allows "
                         f"1..{capacity} ({total} samples in the shards, {world_size} ranks, batch {batch_size})")
    return FinitePlan(_cut(pieces, rank_sizes), batches, batch_size, total)


def worker_batch_counts(batches_per_rank: int, workers: int) -> list[int]:
    """Batches of each loader worker: rank batch b comes from worker b % workers."""
    return [batches_per_rank // workers + (worker < batches_per_rank % workers) for worker in range(workers)]


def worker_pieces(plan: FinitePlan, rank: int, workers: int, seed: int, epoch: int) -> list[list[ShardPiece]]:
    """Rank ``rank``'s pieces of epoch ``epoch``, shuffled and cut into one range per loader worker.

    Worker w's range holds about ``rank samples * batches_w / batches_per_rank`` samples, at least
    its batches' worth; the rank's spare samples (fewer than a batch plus one) are spread over the
    workers and absorb skipped samples before a worker has to read its pieces a second time.
    """
    pieces = list(plan.rank_pieces[rank])
    random.Random(derive_seed(seed, epoch, rank, "pieces")).shuffle(pieces)
    rank_samples = sum(piece.planned for piece in pieces)
    ends = [0]
    for count in worker_batch_counts(plan.batches_per_rank, workers):
        ends.append(ends[-1] + count)
    bounds = [rank_samples * end // plan.batches_per_rank for end in ends]
    return _cut(pieces, [high - low for low, high in zip(bounds, bounds[1:], strict=False)])


def _cut(pieces: list[ShardPiece], sizes: list[int]) -> list[list[ShardPiece]]:
    """``pieces`` read one after another, cut into consecutive parts of ``sizes`` planned samples.

    ``sum(sizes)`` must equal the pieces' planned total; a piece that straddles a cut is split there.
    """
    assert sum(sizes) == sum(piece.planned for piece in pieces), "the parts must cover the pieces exactly"
    parts: list[list[ShardPiece]] = []
    remaining = iter(pieces)
    current: ShardPiece | None = None
    for size in sizes:
        part: list[ShardPiece] = []
        while size > 0:
            current = current or next(remaining)
            if current.planned <= size:
                part.append(current)
                size -= current.planned
                current = None
            else:
                middle = current.start + size
                part.append(ShardPiece(current.url, current.start, middle, size))
                current = replace(current, start=middle, planned=current.planned - size)
                size = 0
        parts.append(part)
    return parts
