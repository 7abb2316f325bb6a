import pytest
import torch

from clipdro.state import _BITS, SampleTable, last_occurrence_mask, row_block
from tests.launch import REPO_ROOT, run_torchrun
from tests.workers import table_steps


def test_last_occurrence_mask():
    ids = torch.tensor([5, 3, 5, 7, 3, 3])
    assert last_occurrence_mask(ids).tolist() == [False, False, True, True, False, True]


def test_write_keeps_the_last_duplicate_and_marks_seen():
    table = SampleTable(8, {"s": 0.0, "b": 1.0})
    table.write(torch.tensor([2, 4, 2]), {"s": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([4.0, 5.0, 6.0])})
    assert table.s.tolist() == [0, 0, 3, 0, 2, 0, 0, 0]
    assert table.b.tolist() == [1, 1, 6, 1, 5, 1, 1, 1]
    assert table.seen.nonzero().flatten().tolist() == [2, 4]
    rows = table.read(torch.tensor([4, 0]))
    assert rows["s"].tolist() == [2.0, 0.0] and rows["seen"].tolist() == [True, False]


def test_write_needs_every_field():
    table = SampleTable(4, {"s": 0.0, "b": 0.0})
    with pytest.raises(KeyError):
        table.write(torch.tensor([0]), {"s": torch.tensor([1.0])})


def test_non_finite_rows_are_not_stored():
    table = SampleTable(4, {"s": 0.0, "b": 0.0})
    table.write(torch.tensor([0, 1]), {"s": torch.tensor([float("nan"), 2.0]), "b": torch.tensor([1.0, 1.0])})
    assert table.s.tolist() == [0.0, 2.0, 0.0, 0.0]
    assert table.seen.tolist() == [False, True, False, False]


def test_row_blocks_cover_the_table_once_in_dtensor_layout():
    for num_samples, world_size in [(11, 4), (5, 4), (3, 4), (16, 2), (7, 1)]:
        blocks = [row_block(num_samples, world_size, rank) for rank in range(world_size)]
        assert blocks[0][0] == 0 and blocks[-1][1] == num_samples
        assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:], strict=False))
        # torch.chunk's sizes (what DTensor's Shard(0) uses), empty trailing chunks included
        chunks = [len(chunk) for chunk in torch.arange(num_samples).chunk(world_size)]
        assert [stop - start for start, stop in blocks] == chunks + [0] * (world_size - len(chunks))


@pytest.mark.parametrize("world_size", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_sharded_tables_equal_one_process_bit_for_bit(tmp_path, world_size):
    output = tmp_path / "tables.pt"
    run_torchrun(str(REPO_ROOT / "tests" / "workers" / "table_steps.py"), str(output), nproc=world_size)
    sharded, single = torch.load(output), table_steps.run_steps()
    for dtype, reference in single.items():
        for step, (read, expected) in enumerate(zip(sharded[dtype]["reads"], reference["reads"], strict=True)):
            for name in expected:
                assert torch.equal(read[name].view(torch.int64), expected[name].view(torch.int64)), (dtype, step, name)
        for step, (table, expected) in enumerate(zip(sharded[dtype]["tables"], reference["tables"], strict=True)):
            for name in expected:
                assert table[name].dtype == expected[name].dtype
                bits = table[name] if name == "seen" else table[name].view(_BITS[table[name].element_size()])
                expected_bits = expected[name] if name == "seen" else expected[name].view(bits.dtype)
                assert torch.equal(bits, expected_bits), (dtype, step, name)
    stored = single[str(torch.float64)]["tables"][-1]
    assert stored["seen"].any() and not stored["seen"].all()  # some rows visited, some not
    assert torch.isfinite(stored["s"]).all() and torch.isfinite(stored["b"]).all()
