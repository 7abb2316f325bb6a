"""The joint LM + TempNet objective has no scale of its own (docs/llm.md, "What fixes the scale of tau"):
TempNet sees L2-normalised logits, so TempNet(c z) = TempNet(z), and the token DRO loss is homogeneous of
degree 1 in (logits, tau): loss(c z, c tau) = c loss(z, tau), hence (Euler) tau dL/dtau + sum_k z_k dL/dz_k = L."""

import torch

from clipdro.losses import dro_token_loss
from clipdro.tempnet import LMTempNet


def test_tempnet_does_not_see_the_scale_of_the_logits():
    torch.manual_seed(0)
    tempnet = LMTempNet(vocab_size=50, hidden=16, tau_min=0.5, tau_max=5.0, dropout=0.0).eval()
    logits = torch.randn(12, 50)
    for scale in (0.1, 3.0, 40.0):
        torch.testing.assert_close(tempnet(scale * logits), tempnet(logits))


def test_the_token_dro_loss_is_homogeneous_in_logits_and_tau():
    torch.manual_seed(1)
    logits, targets = torch.randn(30, 50, dtype=torch.float64), torch.randint(0, 50, (30,))
    tau = torch.rand(30, dtype=torch.float64) + 0.5
    rho = 2.0
    loss = dro_token_loss(logits, targets, tau, rho)
    for scale in (0.25, 2.0, 7.0):
        torch.testing.assert_close(dro_token_loss(scale * logits, targets, scale * tau, rho), scale * loss)
    # Euler's identity: the gradient along the ray (c z, c tau) is the loss itself, so the objective only
    # stops pulling the common scale when the loss is 0, i.e. mean CE(z / tau, y) = log V - rho.
    logits.requires_grad_(True)
    tau.requires_grad_(True)
    value = dro_token_loss(logits, targets, tau, rho)
    value.backward()
    torch.testing.assert_close((tau * tau.grad).sum() + (logits * logits.grad).sum(), value.detach())
