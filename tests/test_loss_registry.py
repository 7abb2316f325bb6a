"""Losses plug in: a loss registered from outside clipdro trains through the unchanged trainer."""

import json

import pytest
import torch
import torch.nn.functional as F

from clipdro import cli
from clipdro.config import load_config
from clipdro.errors import UsageError
from clipdro.losses import CONTRASTIVE_LOSSES, ContrastiveLoss, ContrastiveLossOutput, build_loss, register_loss
from clipdro.train import train
from clipdro.train_config import TrainConfig
from tests.run_factory import train_overrides


class FixedTauInfoNCE(ContrastiveLoss):
    """A plug-in: symmetric InfoNCE at one fixed tau, read from loss.options; counts its calls."""

    name = "test-fixed-infonce"
    option_names = ("tau",)
    calls = 0

    def __init__(self, num_samples: int, tau: float = 0.1):
        super().__init__()
        self.tau = tau

    @classmethod
    def from_config(cls, num_samples: int, *, loss, temperature) -> "FixedTauInfoNCE":
        return cls(num_samples, tau=float(loss.options.get("tau", 0.1)))

    def forward(self, image_features, text_features, image_tau=None, text_tau=None, sample_ids=None):
        type(self).calls += 1
        batch = self.gather_global_batch(image_features, text_features)
        logits = image_features @ batch.texts.t() / self.tau
        loss = (F.cross_entropy(logits, batch.positive_columns)
                + F.cross_entropy(text_features @ batch.images.t() / self.tau, batch.positive_columns)) / 2
        taus = torch.full(image_features.shape[:1], self.tau)
        return ContrastiveLossOutput(loss=loss, image_tau=taus, text_tau=taus)




class ScaledInfoNCE(FixedTauInfoNCE):
    """A plug-in without its own from_config: loss.options become its constructor's keywords."""

    name = "test-scaled-infonce"

    from_config = classmethod(ContrastiveLoss.from_config.__func__)


@pytest.fixture(autouse=True)
def registered():
    register_loss(FixedTauInfoNCE)
    FixedTauInfoNCE.calls = 0
    yield
    CONTRASTIVE_LOSSES.pop(FixedTauInfoNCE.name)


def test_a_registered_loss_trains_with_its_options_and_no_tempnets(shards, tmp_path):
    run_dir = tmp_path / "run"
    config = load_config(TrainConfig, None, train_overrides(shards, run_dir, f"loss.name={FixedTauInfoNCE.name}",
                                                       "loss.options={tau: 0.2}", "run.epochs=1"))
    train(config)
    assert FixedTauInfoNCE.calls == 6  # 48 samples, batch 8
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["image_tau_mean"] for record in records if "loss" in record] == pytest.approx([0.2] * 6)
    assert "tempnet_lr" not in records[-1]  # the loss uses no TempNets, so the model has none
    assert "options:\n    tau: 0.2" in (run_dir / "config.yaml").read_text()


def test_unknown_names_and_options_are_refused_with_status_2(shards, tmp_path, capsys):
    assert cli.main(["train", *train_overrides(shards, tmp_path / "a"), "loss.name=no-such-loss"]) == 2
    assert "unknown loss 'no-such-loss'" in capsys.readouterr().err
    assert cli.main(["train", *train_overrides(shards, tmp_path / "b"), f"loss.name={FixedTauInfoNCE.name}",
                     "loss.options={taus: 1}"]) == 2
    assert "loss.options.taus" in capsys.readouterr().err
    # tempnet reads no loss.options
    assert cli.main(["train", *train_overrides(shards, tmp_path / "c"), "loss.options={tau: 1}"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_taken_name_cannot_be_registered_twice():
    class Impostor(FixedTauInfoNCE):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_loss(Impostor)
    with pytest.raises(UsageError, match="unknown loss"):
        build_loss(load_config(TrainConfig, None, ["data.sources=[]", "data.batch_size=1", "loss.name=missing"]), 8)


def test_the_default_from_config_passes_loss_options_to_the_constructor(shards):
    register_loss(ScaledInfoNCE)
    try:
        overrides = train_overrides(shards, shards / "unused", f"loss.name={ScaledInfoNCE.name}",
                                    "loss.options={tau: 0.3}")
        config = load_config(TrainConfig, None, overrides)
        assert build_loss(config, 8).tau == 0.3
    finally:
        CONTRASTIVE_LOSSES.pop(ScaledInfoNCE.name)
