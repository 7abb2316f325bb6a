import math

import pytest
import torch
import torch.nn.functional as F

from clipdro.tempnet import BoundedTemperature, CLIPTempNet, LMTempNet, ParameterizedPooling


def test_clip_tempnet_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in CLIPTempNet(256, 256).parameters()) == 131_586


def test_pooling_initial_state_and_uniform_scores_give_the_middle_of_the_range():
    pooling = ParameterizedPooling(4, log_scale_init=math.log(0.01))
    assert torch.equal(pooling.readout.weight, torch.ones(1, 4))
    assert pooling.readout.bias.item() == 0.0
    assert pooling.log_scale.item() == pytest.approx(math.log(0.01))
    # Uniform scores: pi = 1/M everywhere, u = 0, tau = (tau_min + tau_max) / 2.
    score = pooling(torch.zeros(3, 4), torch.rand(3, 4))
    assert torch.equal(score, torch.zeros(3))
    assert BoundedTemperature(0.005, 0.05)(score).tolist() == pytest.approx([0.0275] * 3)


def test_pooling_matches_its_formula():
    torch.manual_seed(0)
    pooling = ParameterizedPooling(5, log_scale_init=0.3)
    scores, values = torch.randn(2, 5), torch.randn(2, 5)
    weights = torch.softmax(scores / math.exp(0.3), dim=-1)
    expected = ((weights - 0.2) * values).sum(-1)
    torch.testing.assert_close(pooling(scores, values), expected)


@pytest.mark.parametrize("scale", [0.0, 1.0, 1e4, -1e4])
def test_clip_tempnet_stays_in_range_for_extreme_inputs(scale):
    torch.manual_seed(0)
    net = CLIPTempNet(16, num_prototypes=8, tau_min=0.005, tau_max=0.05)
    with torch.no_grad():
        net.pooling.readout.weight.fill_(1e6 if scale >= 0 else -1e6)
    tau = net(torch.randn(32, 16) * scale)
    assert tau.shape == (32,)
    assert bool(((tau >= 0.005) & (tau <= 0.05)).all())


@pytest.mark.parametrize("scale", [1.0, 1e6, -1e6])
def test_lm_tempnet_stays_in_range_for_extreme_logits(scale):
    torch.manual_seed(0)
    net = LMTempNet(vocab_size=50, hidden=16, tau_min=0.5, tau_max=5.0)
    tau = net(torch.randn(2, 7, 50) * scale)
    assert tau.shape == (2, 7)
    assert bool(((tau >= 0.5) & (tau <= 5.0)).all())


def test_lm_tempnet_normalises_logits_so_their_scale_does_not_matter():
    torch.manual_seed(0)
    net = LMTempNet(vocab_size=50, hidden=16).eval()
    logits = torch.randn(4, 50)
    torch.testing.assert_close(net(logits), net(logits * 37.0))


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    net = CLIPTempNet(16, num_prototypes=8)
    x = F.normalize(torch.randn(64, 16), dim=-1)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
    lm = LMTempNet(vocab_size=30, hidden=8)
    logits = torch.randn(64, 30)
    lm.eval()
    assert torch.equal(lm(logits), lm(logits))
    lm.train()
    assert not torch.equal(lm(logits), lm(logits))


def test_prototypes_come_from_the_other_modality_when_the_batch_is_large_enough():
    net = CLIPTempNet(8, num_prototypes=4)
    before = net.prototypes.detach().clone()
    assert not net.init_prototypes(torch.randn(3, 8))
    assert torch.equal(net.prototypes, before)
    other = torch.randn(6, 8)
    assert net.init_prototypes(other)
    assert torch.equal(net.prototypes.detach(), other[:4])


def test_invalid_range_is_refused():
    with pytest.raises(ValueError):
        CLIPTempNet(8, tau_min=0.05, tau_max=0.01)


def test_clip_tempnet_forward_is_its_formula_exactly():
    torch.manual_seed(0)
    net = CLIPTempNet(16, num_prototypes=8).eval()
    embeddings = F.normalize(torch.randn(32, 16), dim=-1)
    x = torch.sigmoid(net.transform(embeddings))
    scores = x @ F.normalize(net.prototypes, dim=-1).t()
    weights = torch.softmax(scores / net.pooling.log_scale.exp(), dim=-1)
    expected = net.output(net.pooling.readout((weights - 1.0 / 8) * torch.sigmoid(scores)).squeeze(-1))
    assert torch.equal(net(embeddings), expected)
    assert torch.equal(net.pooling.weights(scores), weights)
