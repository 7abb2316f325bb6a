import math

import pytest
import torch

from clipdro.errors import UsageError
from clipdro.losses import dro_token_loss


def make_tokens(seed=0, batch=2, length=5, vocab=11):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, vocab, (batch, length), generator=generator)
    tau = (0.3 + torch.rand(batch, length, generator=generator, dtype=torch.float64)).requires_grad_()
    return logits, targets, tau


def test_equals_tau_log_mean_exp_of_gaps_plus_rho_tau():
    logits, targets, tau = make_tokens()
    rho = 1.5
    loss = dro_token_loss(logits, targets, tau, rho)
    target_logit = logits.gather(-1, targets[..., None])
    per_token = tau * torch.log(torch.exp((logits - target_logit) / tau[..., None]).mean(-1)) + rho * tau
    torch.testing.assert_close(loss, per_token.mean())


def test_tau_gradient_is_rho_minus_kl():
    logits, targets, tau = make_tokens(seed=1)
    rho, vocab = 1.5, logits.shape[-1]
    (tau_grad,) = torch.autograd.grad(dro_token_loss(logits, targets, tau, rho), [tau])
    with torch.no_grad():
        p = torch.softmax(logits / tau[..., None], dim=-1)
        kl = (p * torch.log(p * vocab)).sum(-1)
    torch.testing.assert_close(tau_grad * targets.numel(), rho - kl, atol=1e-9, rtol=0)


def test_logit_gradient_is_softmax_minus_onehot():
    logits, targets, tau = make_tokens(seed=2)
    (logit_grad,) = torch.autograd.grad(dro_token_loss(logits, targets, tau, 1.0), [logits])
    with torch.no_grad():
        expected = torch.softmax(logits / tau[..., None], -1) - torch.nn.functional.one_hot(targets, 11)
    torch.testing.assert_close(logit_grad * targets.numel(), expected, atol=1e-9, rtol=0)


def test_padding_contributes_nothing():
    logits, targets, tau = make_tokens(seed=3)
    padded = targets.clone()
    padded[0, 3:] = -100
    loss = dro_token_loss(logits, padded, tau, 1.0)
    keep = padded != -100
    unpadded = dro_token_loss(logits[keep], targets[keep], tau[keep], 1.0)
    torch.testing.assert_close(loss, unpadded)
    logit_grad, tau_grad = torch.autograd.grad(loss, [logits, tau])
    assert torch.count_nonzero(logit_grad[0, 3:]) == 0
    assert torch.count_nonzero(tau_grad[0, 3:]) == 0
    all_padding = torch.full_like(targets, -100)
    assert dro_token_loss(logits, all_padding, tau, 1.0).item() == 0.0


def test_rho_at_or_above_log_vocabulary_is_refused():
    logits, targets, tau = make_tokens()
    dro_token_loss(logits, targets, tau, math.log(11) - 1e-3)
    with pytest.raises(UsageError, match="token DRO loss"):
        dro_token_loss(logits, targets, tau, math.log(11))
