"""benchmarks/paper/validation_split.py and tempnet_lr_selection.py: what is set aside for validation, and
which TempNet learning rate is chosen (pure functions; the runs themselves are in pretrained_sweeps.sh)."""

from collections import Counter

import pytest

from benchmarks.paper.tempnet_lr_selection import choose, moved
from benchmarks.paper.validation_split import plan_validation


def test_the_validation_split_is_stratified_seeded_and_keeps_every_family():
    categories = ["stars"] * 60 + ["flags"] * 30 + ["logos"] * 9 + ["buttons"] * 1
    held_out = plan_validation(categories, size=20, seed=0)
    assert len(held_out) == 20 and held_out == plan_validation(categories, size=20, seed=0)
    assert held_out != plan_validation(categories, size=20, seed=1)
    per_family = Counter(categories[position] for position in held_out)
    # shares 12, 6, 1.8 and 0.2: largest remainders give logos the 20th; buttons keeps its only picture
    assert per_family == {"stars": 12, "flags": 6, "logos": 2}
    with pytest.raises(ValueError):
        plan_validation(categories, size=100, seed=0)


def test_a_rate_counts_as_moved_by_level_or_by_spread():
    assert moved(0.06, 0.054, 1.0)  # down 10 %
    assert moved(0.06, 0.066, 1.0)  # up 10 %
    assert not moved(0.06, 0.0575, 1.49)
    assert moved(0.06, 0.06, 1.5)  # the level stayed, the samples spread


def test_the_best_moved_rate_is_chosen_the_smaller_on_a_tie():
    candidates = [{"lr": 1e-3, "primary": 20.6, "moved": True}, {"lr": 3e-3, "primary": 20.6, "moved": True},
                  {"lr": 3e-5, "primary": 25.0, "moved": False}]
    assert choose(candidates)["lr"] == 1e-3
    assert choose([{"lr": 3e-5, "primary": 25.0, "moved": False}]) is None
