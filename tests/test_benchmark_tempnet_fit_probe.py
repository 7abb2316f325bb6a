"""The tau* computation of benchmarks/tempnet_fit_probe.py on small hand-made score rows."""


import torch

from benchmarks.tempnet_fit_probe import best_taus, competitor_scores, describe_targets
from clipdro.losses import kl_to_uniform


def test_competitor_scores_drop_the_positive():
    anchors = torch.eye(3)
    candidates = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    h = competitor_scores(anchors, candidates)  # s = candidates^T; row i: s_ij - s_ii for j != i
    assert torch.allclose(h, torch.tensor([[-0.5, -1.0], [-0.5, -0.5], [-1.0, -1.0]]))


def test_best_taus_solve_kl_equals_rho_then_clip():
    torch.manual_seed(0)
    h = -torch.rand(5, 255)
    tau = best_taus(h, rho=2.0, tau_min=1e-4, tau_max=10.0)
    assert torch.allclose(kl_to_uniform(h / tau[:, None]), torch.full((5,), 2.0), atol=1e-4)
    clipped = best_taus(h, rho=2.0, tau_min=0.5, tau_max=0.6)
    assert ((clipped >= 0.5) & (clipped <= 0.6)).all()


def test_describe_targets_splits_anchors_into_thirds_of_tau(capsys):
    targets = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    gaps = torch.tensor([[-0.5, -0.2], [-0.1, -0.3], [-0.2, 0.1], [-0.4, -0.1], [0.2, -0.1], [0.3, 0.1]])
    describe_targets(targets, gaps)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| coldest | 0.0150 | 1.00 | -0.150 |"
    assert lines[3] == "| middle | 0.0350 | 0.50 | +0.000 |"
    assert lines[4] == "| warmest | 0.0550 | 0.00 | +0.250 |"
