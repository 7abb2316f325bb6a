"""The caption and target descriptions of benchmarks/paper/tempnet_fit_probe.py on small hand-made rows.

Its tau* computation lives in clipdro.analysis (tests/test_analysis.py).
"""


import torch

from benchmarks.paper.tempnet_fit_probe import (
    caption_overlap,
    describe_targets,
    hardest_competitor_overlaps,
)


def test_caption_overlap_is_the_jaccard_of_lower_cased_words():
    assert caption_overlap("The 2 of Spades", "the 2 of spades") == 1.0
    assert caption_overlap("the 2 of spades", "the 6 of spades") == 3 / 5
    assert caption_overlap("heart", "red star, 5 points") == 0.0
    assert caption_overlap("", "") == 1.0


def test_hardest_competitor_overlaps_compare_each_anchor_with_its_top_other_caption():
    captions = ["the 2 of spades", "the 6 of spades", "a red heart"]
    scores = torch.tensor([[0.9, 0.8, 0.1],   # anchor 0: hardest competitor is caption 1
                           [0.2, 0.9, 0.95],  # anchor 1: caption 2 beats its own, the diagonal is skipped
                           [0.7, 0.1, 0.9]])  # anchor 2: caption 0
    overlaps = hardest_competitor_overlaps(scores, captions)
    assert torch.allclose(overlaps, torch.tensor([3 / 5, 0.0, 0.0]))
    assert scores[1, 1] == 0.9  # the caller's scores are left alone


def test_describe_targets_splits_anchors_into_thirds_of_tau(capsys):
    targets = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    gaps = torch.tensor([[-0.5, -0.2], [-0.1, -0.3], [-0.2, 0.1], [-0.4, -0.1], [0.2, -0.1], [0.3, 0.1]])
    overlaps = torch.tensor([0.0, 0.2, 0.5, 0.1, 0.6, 1.0])
    repeated = torch.tensor([False, False, True, False, True, True])
    describe_targets(targets, gaps, overlaps, repeated)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| coldest | 0.0150 | 1.00 | -0.150 | 0.100 | 0.00 | 0.00 | 0.00 |"
    assert lines[3] == "| middle | 0.0350 | 0.50 | +0.000 | 0.300 | 0.50 | 0.00 | 0.50 |"
    assert lines[4] == "| warmest | 0.0550 | 0.00 | +0.250 | 0.800 | 1.00 | 0.50 | 1.00 |"
