"""benchmarks/paper/oracle_tau.py: the exact per-anchor temperatures and the loss that uses them."""

import torch
import torch.nn.functional as F

from benchmarks.paper.oracle_tau import OracleTauLoss
from clipdro.analysis import competitor_scores
from clipdro.losses import kl_to_uniform


def features(seed: int, rows: int = 32, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(rows, dim, generator=generator), dim=1)
    texts = F.normalize(images + 0.5 * torch.randn(rows, dim, generator=generator), dim=1)
    return images, texts


def test_oracle_taus_put_every_anchor_at_kl_equal_rho():
    images, texts = features(0)
    loss = OracleTauLoss(num_samples=32, rho=1.0, tau_min=1e-4, tau_max=10.0, level=None)
    taus = loss.anchor_taus(images, texts)
    kl = kl_to_uniform(competitor_scores(images, texts) / taus[:, None])
    assert torch.allclose(kl, torch.ones(32), atol=1e-3)
    assert taus.max() / taus.min() > 1.5  # anchors differ: the point of the oracle


def test_level_fixes_the_geometric_mean_and_keeps_the_ratios():
    images, texts = features(1)
    free = OracleTauLoss(32, rho=1.0, tau_min=1e-4, tau_max=10.0, level=None).anchor_taus(images, texts)
    levelled = OracleTauLoss(32, rho=1.0, tau_min=1e-4, tau_max=10.0, level=0.06).anchor_taus(images, texts)
    assert abs(levelled.log().mean().exp().item() - 0.06) < 1e-6
    assert torch.allclose(levelled / free, torch.full((32,), levelled[0].item() / free[0].item()), rtol=1e-5)
    clipped = OracleTauLoss(32, rho=1.0, tau_min=0.05, tau_max=0.07, level=0.06).anchor_taus(images, texts)
    assert clipped.min() >= 0.05 and clipped.max() <= 0.07


def test_the_loss_trains_the_encoders_with_the_oracle_taus():
    images, texts = features(2)
    images.requires_grad_(True)
    loss = OracleTauLoss(32, rho=1.0, tau_min=0.01, tau_max=0.1, level=None)
    output = loss(images, texts, sample_ids=torch.arange(32))
    output.loss.backward()
    assert torch.isfinite(output.loss) and images.grad.abs().sum() > 0
    assert torch.equal(output.image_tau, loss.anchor_taus(images.detach(), texts))
    assert int(loss.image_table.seen.sum()) == 32


def test_shuffle_keeps_the_batch_temperatures_and_changes_their_owners():
    images, texts = features(3)
    exact = OracleTauLoss(32, rho=1.0, tau_min=1e-4, tau_max=10.0, level=None).anchor_taus(images, texts)
    shuffled = OracleTauLoss(32, rho=1.0, tau_min=1e-4, tau_max=10.0, level=None,
                             shuffle_seed=0).anchor_taus(images, texts)
    assert torch.equal(shuffled.sort().values, exact.sort().values) and not torch.equal(shuffled, exact)


def test_strength_scales_the_log_spread_around_the_same_geometric_mean():
    images, texts = features(4)
    log_level = torch.tensor(0.06).log()
    exact = OracleTauLoss(32, rho=1.0, tau_min=1e-4, tau_max=10.0, level=0.06).anchor_taus(images, texts)
    for strength in (0.0, 0.5, -1.0):  # none, half the spread, the rule inverted
        taus = OracleTauLoss(32, rho=1.0, tau_min=1e-4, tau_max=10.0, level=0.06,
                             strength=strength).anchor_taus(images, texts)
        assert torch.allclose(taus.log() - log_level, strength * (exact.log() - log_level), atol=1e-5)


def test_the_oracle_is_a_registered_loss_built_from_its_options():
    from benchmarks.paper.oracle_tau import BASE_CONFIG
    from clipdro.config import load_config
    from clipdro.losses import build_loss
    from clipdro.train_config import TrainConfig

    config = load_config(TrainConfig, BASE_CONFIG, ["loss.name=oracle", "run.seed=3",
                                                    "loss.options={level: 0.05, strength: 0.5, shuffle: true}"])
    loss = build_loss(config, 10)
    assert isinstance(loss, OracleTauLoss) and (loss.level, loss.strength) == (0.05, 0.5)
    assert loss.shuffle is not None and (loss.tau_min, loss.tau_max, loss.oracle_rho) == (0.01, 0.1, 3.0)
    free = build_loss(load_config(TrainConfig, BASE_CONFIG, ["loss.name=oracle"]), 10)
    assert free.level is None and free.strength == 1.0 and free.shuffle is None


def test_config_option_is_the_base_config_of_the_run(monkeypatch):
    from benchmarks.paper import oracle_tau

    received = []
    monkeypatch.setattr(oracle_tau, "train_main", lambda argv: received.append(argv) or 0)
    assert oracle_tau.main(["--level", "0.06", "run.name=a"]) == 0
    assert oracle_tau.main(["--config", "configs/pretrained_demo.yaml", "--strength", "0.5", "run.name=b"]) == 0
    default, demo = received
    assert default[:2] == ["--config", str(oracle_tau.BASE_CONFIG)] and default[-1] == "run.name=a"
    assert demo[:2] == ["--config", "configs/pretrained_demo.yaml"] and "loss.options.strength=0.5" in demo
    assert demo[-1] == "run.name=b" and "loss.name=oracle" in demo
