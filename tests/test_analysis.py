"""clipdro.analysis: the per-anchor tau* of the DRO rule and the stage-by-stage dissection of a CLIPTempNet."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipdro.analysis import best_taus, competitor_scores, dissect_tempnet
from clipdro.losses import kl_to_uniform
from clipdro.tempnet import CLIPTempNet


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


def test_stages_tau_is_exactly_the_forward_output():
    torch.manual_seed(0)
    net = CLIPTempNet(16, num_prototypes=8).eval()
    embeddings = F.normalize(torch.randn(32, 16), dim=-1)
    stages = net.stages(embeddings)
    assert torch.equal(stages.tau, net(embeddings))
    assert stages.x.shape == (32, 16) and stages.scores.shape == stages.weights.shape == (32, 8)
    torch.testing.assert_close(stages.weights.sum(1), torch.ones(32))


def one_hot_net() -> tuple[CLIPTempNet, torch.Tensor]:
    """A 4-d net with 4 prototypes: x = sigmoid(10 e), so each one-hot input row's score peaks at its own
    prototype e_k; rows [0, 1, 2, 0, 1] make 3 distinct winners among 4 prototypes."""
    net = CLIPTempNet(4, num_prototypes=4, tau_min=0.01, tau_max=0.1)
    with torch.no_grad():
        net.transform.weight.copy_(10.0 * torch.eye(4))
        net.transform.bias.zero_()
        net.prototypes.copy_(torch.eye(4))
    return net, torch.eye(4)[[0, 1, 2, 0, 1]]


def test_dissect_tempnet_on_a_hand_made_net():
    net, embeddings = one_hot_net()
    net.train()
    statistics = dissect_tempnet(net, embeddings)
    assert net.training  # the net's mode is restored
    assert list(statistics) == ["mean x", "std of x over samples", "std of scores over prototypes",
                                "std of scores over samples", "distinct winning prototypes", "mean top pooling weight",
                                "pooling scale", "tau mean", "tau p95/p5"]
    assert statistics["distinct winning prototypes"] == 3.0
    net.eval()  # dropout off, as in the dissection
    tau = net(embeddings)
    assert statistics["tau mean"] == tau.mean().item()
    assert statistics["tau p95/p5"] == pytest.approx(1.0)  # every row is a permutation of the same scores
    assert statistics["pooling scale"] == pytest.approx(0.01)  # exp of the initial log scale
    high, low = torch.sigmoid(torch.tensor(10.0)).item(), 0.5  # x: one entry sigmoid(10), three sigmoid(0)
    assert statistics["mean x"] == pytest.approx((high + 3 * low) / 4)
    # With a pooling scale of 0.01 and score gaps of about 0.5, the own prototype takes all the weight.
    assert statistics["mean top pooling weight"] == pytest.approx(1.0)
    assert statistics["std of scores over prototypes"] == pytest.approx(
        torch.tensor([high, low, low, low]).std().item(), rel=1e-5)
    assert math.isfinite(statistics["std of scores over samples"])
