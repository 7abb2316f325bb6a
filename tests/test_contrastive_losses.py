"""The contrastive losses against brute-force autograd and a hand-rolled estimator loop."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipdro.errors import UsageError
from clipdro.losses import (
    CLIPLoss,
    DROContrastiveLoss,
    ISogCLRLoss,
    SogCLRLoss,
    build_contrastive_loss,
    check_rho,
    kl_to_uniform,
)

DTYPE = torch.float64


def make_batch(batch_size, dim=12, seed=0, tau_range=(0.02, 0.2)):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch_size, dim, generator=generator, dtype=DTYPE), dim=1)
    # Correlated text so positives score higher than most competitors, as in training.
    text = F.normalize(image + 0.8 * torch.randn(batch_size, dim, generator=generator, dtype=DTYPE), dim=1)
    low, high = tau_range
    image_tau = low + (high - low) * torch.rand(batch_size, generator=generator, dtype=DTYPE)
    text_tau = low + (high - low) * torch.rand(batch_size, generator=generator, dtype=DTYPE)
    return [t.requires_grad_() for t in (image, text, image_tau, text_tau)]


def exact_robust_objective(image, text, image_tau, text_tau, rho):
    """mean_i [tau_i log mean_{j != i} exp(h_ij / tau_i) + rho tau_i], both sides, by brute force."""
    scores = image @ text.t()  # s_ij = <image_i, text_j>
    batch_size = scores.shape[0]
    off_diagonal = ~torch.eye(batch_size, dtype=torch.bool)

    def side(gaps, tau):
        scaled = (gaps / tau[:, None]).masked_fill(~off_diagonal, -math.inf)
        log_mean = torch.logsumexp(scaled, dim=1) - math.log(batch_size - 1)
        return (tau * log_mean + rho * tau).mean()

    image_gaps = scores - scores.diagonal()[:, None]  # row i: s_ij - s_ii
    text_gaps = scores.t() - scores.diagonal()[:, None]  # row j: s_ij - s_jj over images i
    return side(image_gaps, image_tau) + side(text_gaps, text_tau)


def gradients(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def test_fresh_tables_give_the_exact_gradient_of_the_robust_objective():
    rho = 1.2
    inputs = make_batch(10)
    loss = DROContrastiveLoss(num_samples=50, rho=rho, table_dtype=DTYPE)
    output = loss(*inputs, sample_ids=torch.arange(3, 13))
    expected = exact_robust_objective(*inputs, rho)
    torch.testing.assert_close(output.loss, expected, atol=1e-10, rtol=0)
    for ours, reference in zip(gradients(output.loss, inputs), gradients(expected, inputs), strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_tau_gradient_is_rho_minus_kl_and_matches_finite_differences():
    rho, batch_size = 1.2, 9
    image, text, image_tau, text_tau = make_batch(batch_size, seed=1)
    loss = DROContrastiveLoss(num_samples=batch_size, rho=rho, table_dtype=DTYPE)
    output = loss(image, text, image_tau, text_tau, sample_ids=torch.arange(batch_size))
    (image_tau_grad,) = gradients(output.loss, [image_tau])
    # Per anchor: dF_i/dtau_i = rho - KL(softmax(h_i / tau_i) || uniform over the B - 1 competitors).
    with torch.no_grad():
        scores = image @ text.t()
        gaps = scores - scores.diagonal()[:, None]
        for i in range(batch_size):
            competitor_gaps = torch.cat([gaps[i, :i], gaps[i, i + 1:]])
            p = torch.softmax(competitor_gaps / image_tau[i], dim=0)
            kl = (p * torch.log(p * (batch_size - 1))).sum()
            assert image_tau_grad[i] * batch_size == pytest.approx(float(rho - kl), abs=1e-9)

            def objective(tau, gaps=competitor_gaps):
                return float(tau * (torch.logsumexp(gaps / tau, 0) - math.log(batch_size - 1)) + rho * tau)

            step = 1e-6
            tau_i = float(image_tau[i])
            finite_difference = (objective(tau_i + step) - objective(tau_i - step)) / (2 * step)
            assert finite_difference == pytest.approx(float(rho - kl), abs=1e-6)


class HandRolledEstimator:
    """method.md §2 steps 1-7 written anchor by anchor, with python dicts as tables."""

    def __init__(self, rho, gamma):
        self.rho, self.gamma = rho, gamma
        self.tables = {"image": {}, "text": {}}  # sample id -> (s, b)

    def side(self, name, gaps, tau, sample_ids):
        table, batch_size = self.tables[name], gaps.shape[0]
        surrogate, value = 0.0, 0.0
        new_rows = {}
        for i in range(batch_size):
            sample_id = int(sample_ids[i])
            scaled = [float(gaps[i, j].detach() / tau[i].detach()) for j in range(batch_size)]  # H_ij
            old_s, old_b = table.get(sample_id, (0.0, 0.0))
            b = max(old_b, max(scaled))  # step 1 (the diagonal H_ii = 0 is included)
            g = sum(math.exp(scaled[j] - b) for j in range(batch_size) if j != i)  # step 2
            if sample_id in table:  # step 3
                s = (1 - self.gamma) * old_s * math.exp(old_b - b) + self.gamma * g
            else:
                s = g
            new_rows[sample_id] = (s, b)
            s = max(s, 1e-14)
            weights = [math.exp(scaled[j] - b) / s if j != i else 0.0 for j in range(batch_size)]  # step 4
            log_mean = math.log(s / (batch_size - 1)) + b
            c = log_mean + self.rho - sum(w * h for w, h in zip(weights, scaled, strict=True))  # step 6
            surrogate = surrogate + sum(weights[j] * gaps[i, j] for j in range(batch_size)) + c * tau[i]
            value += float(tau[i].detach()) * (log_mean + self.rho)
        table.update(new_rows)
        surrogate, value = surrogate / batch_size, value / batch_size
        return value + surrogate - surrogate.detach()

    def __call__(self, image, text, image_tau, text_tau, sample_ids):
        scores = image @ text.t()
        image_side = self.side("image", scores - scores.diagonal()[:, None], image_tau, sample_ids)
        text_side = self.side("text", scores.t() - scores.diagonal()[:, None], text_tau, sample_ids)
        return image_side + text_side  # step 7


def test_three_steps_on_overlapping_ids_match_the_hand_rolled_estimator():
    rho, gamma = 1.0, 0.8
    loss = DROContrastiveLoss(num_samples=20, rho=rho, gamma=gamma, table_dtype=DTYPE)
    reference = HandRolledEstimator(rho, gamma)
    steps = [torch.arange(0, 8), torch.arange(4, 12), torch.tensor([0, 2, 4, 6, 8, 10, 12, 14])]
    for step, sample_ids in enumerate(steps):
        # Small temperatures make the bound move between steps, exercising the re-basing.
        inputs = make_batch(8, seed=10 + step, tau_range=(0.01, 0.05 * (step + 1)))
        ours = loss(*inputs, sample_ids=sample_ids).loss
        expected = reference(*inputs, sample_ids)
        torch.testing.assert_close(ours, expected, atol=1e-9, rtol=0)
        for grad, grad_expected in zip(gradients(ours, inputs), gradients(expected, inputs), strict=True):
            torch.testing.assert_close(grad, grad_expected, atol=1e-9, rtol=0)
        for side, table in (("image", loss.image_table), ("text", loss.text_table)):
            for sample_id, (s, b) in reference.tables[side].items():
                assert bool(table.seen[sample_id])
                assert float(table.s[sample_id]) == pytest.approx(s, rel=1e-10)
                assert float(table.b[sample_id]) == pytest.approx(b, rel=1e-10)
            assert int(table.seen.sum()) == len(reference.tables[side])


def test_second_visit_blends_with_gamma_after_rebasing():
    loss = DROContrastiveLoss(num_samples=4, rho=0.5, gamma=0.8, table_dtype=DTYPE)
    ids = torch.arange(4)
    image, text, image_tau, text_tau = make_batch(4, seed=3, tau_range=(0.01, 0.02))
    loss(image, text, image_tau, text_tau, sample_ids=ids)
    s_first, b_first = loss.image_table.s.clone(), loss.image_table.b.clone()
    image2, text2, _, _ = make_batch(4, seed=4)
    loss(image2, text2, image_tau * 0.5, text_tau, sample_ids=ids)
    with torch.no_grad():
        scores = image2 @ text2.t()
        scaled = (scores - scores.diagonal()[:, None]) / (image_tau * 0.5)[:, None]
        bound = torch.maximum(b_first, scaled.max(1).values)
        batch_sum = (torch.exp(scaled - bound[:, None]) * (1 - torch.eye(4, dtype=DTYPE))).sum(1)
        expected = 0.2 * s_first * torch.exp(b_first - bound) + 0.8 * batch_sum
    torch.testing.assert_close(loss.image_table.s, expected)
    torch.testing.assert_close(loss.image_table.b, bound)


def test_tables_round_trip_through_state_dict():
    loss = DROContrastiveLoss(num_samples=10, rho=1.0)
    loss(*make_batch(6), sample_ids=torch.arange(6))
    restored = DROContrastiveLoss(num_samples=10, rho=1.0)
    restored.load_state_dict(loss.state_dict())
    for key, value in loss.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    with pytest.raises(ValueError, match="samples"):
        DROContrastiveLoss(num_samples=11, rho=1.0).load_state_dict(loss.state_dict())


def test_out_of_range_ids_are_refused():
    loss = DROContrastiveLoss(num_samples=5, rho=1.0)
    with pytest.raises(RuntimeError, match=r"\[0, 5\)"):
        loss(*make_batch(6), sample_ids=torch.arange(6))


def test_rho_at_or_above_log_of_competitors_is_refused():
    check_rho(math.log(7) - 1e-3, 7)
    with pytest.raises(UsageError, match="rho"):
        check_rho(math.log(7), 7)
    loss = DROContrastiveLoss(num_samples=10, rho=2.0)  # global batch 8: log 7 = 1.95
    with pytest.raises(UsageError, match="log\\(7\\)"):
        loss(*make_batch(8), sample_ids=torch.arange(8))


def test_sogclr_is_the_estimator_with_a_fixed_temperature():
    inputs = make_batch(8, seed=5)
    image, text = inputs[:2]
    sogclr = SogCLRLoss(num_samples=8, tau=0.03, table_dtype=DTYPE)
    output = sogclr(image, text, sample_ids=torch.arange(8))
    fixed = torch.full((8,), 0.03, dtype=DTYPE)
    expected = exact_robust_objective(image, text, fixed, fixed, rho=0.0)
    torch.testing.assert_close(output.loss, expected)
    for ours, reference in zip(gradients(output.loss, [image, text]), gradients(expected, [image, text]),
                               strict=True):
        torch.testing.assert_close(ours, reference, atol=1e-9, rtol=0)
    assert torch.equal(output.image_tau, fixed.float())


def test_isogclr_moves_its_temperatures_by_its_rule():
    rho = 1.0
    isogclr = ISogCLRLoss(num_samples=8, rho=rho, tau_init=0.01, table_dtype=DTYPE)
    image, text = make_batch(8, seed=6)[:2]
    isogclr(image, text, sample_ids=torch.arange(8))
    # c from a TempNet-style loss evaluated at the same (initial) temperatures.
    tau = torch.full((8,), 0.01, dtype=DTYPE, requires_grad=True)
    reference = DROContrastiveLoss(num_samples=8, rho=rho, table_dtype=DTYPE)
    (grad,) = gradients(reference(image, text, tau, tau.detach(), sample_ids=torch.arange(8)).loss, [tau])
    c = grad * 8
    u = 0.5 * c.clamp(-5, 5)
    torch.testing.assert_close(isogclr.image_tau_table.u, u)
    torch.testing.assert_close(isogclr.image_tau_table.tau, (0.01 - 0.03 * u).clamp(0.005, 0.05))


def test_clip_loss_is_symmetric_infonce():
    image, text = make_batch(6, seed=7)[:2]
    tau = torch.tensor(0.07, dtype=DTYPE)
    output = CLIPLoss()(image, text, tau, sample_ids=torch.arange(6))
    logits = image @ text.t() / 0.07
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    torch.testing.assert_close(output.loss, expected)


def test_kl_to_uniform_limits():
    gaps = torch.tensor([[0.0, -1.0, -1.0, -1.0]], dtype=DTYPE)
    assert kl_to_uniform(gaps / 1e3).item() < 1e-6  # hot: uniform
    assert abs(kl_to_uniform(gaps / 1e-3).item() - math.log(4)) < 1e-9  # cold: one-hot


def test_clip_loss_reports_the_competitor_kl_the_dro_losses_hold_at_rho():
    image, text = make_batch(6, seed=7)[:2]
    tau = torch.tensor(0.07, dtype=DTYPE)
    clip_metrics = CLIPLoss()(image, text, tau, sample_ids=torch.arange(6)).metrics
    logits = (image @ text.t()).detach() / 0.07
    competitors = ~torch.eye(6, dtype=torch.bool)
    for side, side_logits in (("image", logits), ("text", logits.t())):
        p = side_logits[competitors].view(6, 5).softmax(dim=1)
        torch.testing.assert_close(clip_metrics[f"{side}_kl"], (p * (5 * p).log()).sum(dim=1).mean())
    # the DRO loss at the same temperature (fresh tables: exact) reports the same KL
    dro = DROContrastiveLoss(num_samples=6, rho=1.0, table_dtype=DTYPE)
    dro_metrics = dro(image, text, tau.expand(6), tau.expand(6), sample_ids=torch.arange(6)).metrics
    for key in ("image_kl", "text_kl"):
        torch.testing.assert_close(clip_metrics[key], dro_metrics[key])


def test_build_by_name_and_errors():
    assert isinstance(build_contrastive_loss("tempnet", 10, rho=1.0), DROContrastiveLoss)
    assert isinstance(build_contrastive_loss("clip", 10), CLIPLoss)
    assert build_contrastive_loss("sogclr", 10, tau=0.02).tau == 0.02
    with pytest.raises(UsageError, match="unknown loss"):
        build_contrastive_loss("infonce", 10)
    with pytest.raises(UsageError, match="sogclr"):
        build_contrastive_loss("sogclr", 10, rho=1.0)


def test_duplicate_ids_in_one_step_keep_the_last_occurrence():
    loss = DROContrastiveLoss(num_samples=10, rho=1.0, table_dtype=DTYPE)
    sample_ids = torch.tensor([0, 1, 2, 1, 4, 5])
    loss(*make_batch(6, seed=8), sample_ids=sample_ids)
    single = DROContrastiveLoss(num_samples=10, rho=1.0, table_dtype=DTYPE)
    single(*make_batch(6, seed=8), sample_ids=torch.arange(6))  # same rows, distinct ids
    assert float(loss.image_table.s[1]) == float(single.image_table.s[3])
    assert float(loss.image_table.s[1]) != float(single.image_table.s[1])
