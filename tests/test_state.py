import pytest
import torch

from clipdro.state import SampleTable, last_occurrence_mask


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
