import itertools

import pytest

from clipdro.data.plan import plan_finite, worker_batch_counts, worker_pieces
from clipdro.errors import UsageError


def samples_of(pieces, counts):
    """The (shard, raw index) pairs the pieces read, as a list (repeats stay visible)."""
    pairs = []
    for piece in pieces:
        end = counts[piece.url] if piece.stop is None else piece.stop
        assert end - piece.start == piece.planned > 0
        pairs += [(piece.url, index) for index in range(piece.start, end)]
    return pairs


@pytest.mark.parametrize("world_size, workers, batch_size", [(1, 1, 7), (3, 2, 5), (8, 4, 16), (41, 3, 4),
                                                             (64, 1, 2)])
def test_plan_reads_every_sample_once_and_leaves_out_less_than_a_global_batch(world_size, workers, batch_size):
    counts = {f"shard-{i}.tar": 37 + (i * 13) % 29 for i in range(11)}  # 11 uneven shards, 552 samples
    plan = plan_finite(list(counts), list(counts.values()), world_size, batch_size, seed=3)
    total = sum(counts.values())
    assert total - world_size * batch_size - world_size < plan.used_samples <= total
    every_sample = sorted((url, index) for url, count in counts.items() for index in range(count))
    assert sorted(samples_of([piece for rank in plan.rank_pieces for piece in rank], counts)) == every_sample
    for epoch, rank in itertools.product((0, 1), range(world_size)):
        parts = worker_pieces(plan, rank, workers, seed=3, epoch=epoch)
        assert sorted(samples_of([p for part in parts for p in part], counts)) == \
            sorted(samples_of(plan.rank_pieces[rank], counts))
        for part, batches in zip(parts, worker_batch_counts(plan.batches_per_rank, workers), strict=True):
            assert sum(piece.planned for piece in part) >= batches * batch_size


def test_plan_caps_the_epoch_and_refuses_what_cannot_fit():
    plan = plan_finite(["a", "b"], [10, 30], world_size=2, batch_size=4, seed=0, epoch_samples=16)
    assert plan.batches_per_rank == 2 and plan.used_samples == 16
    with pytest.raises(UsageError, match="finite mode allows 1..5"):
        plan_finite(["a", "b"], [10, 30], world_size=2, batch_size=4, seed=0, epoch_samples=100)
    with pytest.raises(UsageError, match="less than one batch"):
        plan_finite(["a"], [10], world_size=3, batch_size=4, seed=0)
