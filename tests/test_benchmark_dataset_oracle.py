"""benchmarks/paper/dataset_oracle.py: dataset-scope tau* and the loss that trains with it."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.paper.dataset_oracle import (
    SOLVE_TAU_BOUNDS,
    DatasetOracleLoss,
    competitor_kl,
    dataset_taus,
    main,
    matched_dataset_taus,
    tempered_gap_variances,
)
from clipdro.analysis import best_taus, competitor_scores
from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.errors import UsageError
from tests.launch import REPO_ROOT
from tests.shard_factory import write_dense


def features(seed: int, rows: int = 40, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(rows, dim, generator=generator), dim=1)
    return images, F.normalize(images + 0.7 * torch.randn(rows, dim, generator=generator), dim=1)


def test_dataset_taus_solve_the_kl_constraint_over_every_competitor_in_chunks():
    images, texts = features(0)
    taus = dataset_taus(images, texts, rho=1.0, tau_min=1e-4, tau_max=10.0, chunk=7)
    assert torch.allclose(taus, best_taus(competitor_scores(images, texts), 1.0, 1e-4, 10.0), rtol=1e-5)
    assert torch.allclose(competitor_kl(images, texts, taus), torch.ones(40), atol=1e-3)
    assert taus.max() / taus.min() > 1.2  # samples differ


def train_two_epochs(tmp_path, *overrides: str) -> int:
    """The dataset oracle's entry point on 16 generated samples, 2 epochs of 2 steps, in tmp_path/run."""
    shards = tmp_path / "shards"
    write_dense(shards, count=16, per_shard=8, size=32)
    return main(["--config", str(REPO_ROOT / "configs" / "demo.yaml"), f"data.sources=[{{shards: {shards}}}]",
                 "data.batch_size=8", "data.epoch_samples=16", "data.num_workers=0", "data.shuffle_buffer=1",
                 "loss.rho=1.0", "temperature.init=0.05", "eval.retrieval=[]", "eval.zeroshot=[]", "run.epochs=2",
                 "run.log_every=1", f"run.output_dir={tmp_path}", "run.name=run", *overrides])


def test_training_refreshes_the_tables_at_every_epoch_start(tmp_path):
    status = train_two_epochs(tmp_path, "temperature.min=0.01", "temperature.max=0.5",
                              "loss.options={smoothing: 0.5}")
    assert status == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert state["config"]["loss"]["name"] == "dataset-oracle"
    assert int(state["loss"]["steps_taken"]) == 4  # 2 epochs of 2 steps: refreshed before steps 1 and 3
    for side in ("image_taus", "text_taus"):
        taus = state["loss"][side]
        assert ((taus >= 0.01) & (taus <= 0.5)).all() and not torch.allclose(taus, torch.full_like(taus, 0.05))


def test_reproduce_table_runs_it_through_its_own_entry_point():
    from benchmarks.paper.reproduce_table import BASE_CONFIG, run_overrides, train_command

    overrides = run_overrides("dataset-oracle", 0, BASE_CONFIG.parent, [])
    assert train_command("dataset-oracle", overrides)[1:3] == ["-m", "benchmarks.paper.dataset_oracle"]
    assert "loss.name=dataset-oracle" in overrides


def test_dataset_tau_falls_as_rho_grows_at_the_rate_the_tempered_variance_gives():
    images, texts = features(1)
    rhos = [0.5, 1.0, 2.0, 3.0]
    taus = torch.stack([dataset_taus(images, texts, rho, *SOLVE_TAU_BOUNDS) for rho in rhos])
    assert (taus[1:] < taus[:-1]).all()  # every row's tau*, so the geometric mean too
    assert (taus.log().mean(1).diff() < 0).all()
    # d log tau*_i / d rho = -1 / Var_p(h_i / tau*_i)
    step = 1e-3
    finite_difference = (dataset_taus(images, texts, 2.0 + step, *SOLVE_TAU_BOUNDS).log() - taus[2].log()) / step
    assert torch.allclose(finite_difference, -1 / tempered_gap_variances(images, texts, taus[2]), rtol=2e-2)


def test_matched_taus_have_the_level_as_geometric_mean_and_kl_equal_to_the_matched_rho():
    images, texts = features(0)
    for level in (0.066, 0.3):
        matched = matched_dataset_taus(images, texts, level, start_rho=4.92, tolerance=1e-4, chunk=16)
        assert abs(matched.taus.log().mean().item() - math.log(level)) < 1e-4
        assert 0 < matched.rho < math.log(39) and matched.steps <= 10
        assert torch.allclose(competitor_kl(images, texts, matched.taus), torch.full((40,), matched.rho), atol=1e-4)
        low, high = SOLVE_TAU_BOUNDS
        assert ((matched.taus > low * 1.001) & (matched.taus < high / 1.001)).all()  # none on the search bounds


def test_a_level_no_rho_reaches_is_a_usage_error():
    images, texts = features(0)
    for level in (20.0, 1e-5):
        with pytest.raises(UsageError, match=rf"level {level}.*\(0\.0001, 10\.0\)"):
            matched_dataset_taus(images, texts, level, start_rho=1.0)
    with pytest.raises(UsageError, match="level_by=rho needs loss.options.level"):
        DatasetOracleLoss(8, 1.0, 0.01, 0.1, 0.05, 1, data=None, model_name="x", level_by="rho")
    with pytest.raises(UsageError, match="level_by must be one of rescale, rho"):
        DatasetOracleLoss(8, 1.0, 0.01, 0.1, 0.05, 1, data=None, model_name="x", level=0.05, level_by="margin")


@pytest.mark.slow  # trains 2 epochs with 2 solves per refresh
def test_matched_training_records_rho_prime_at_every_refresh(tmp_path):
    status = train_two_epochs(tmp_path, "temperature.min=0.049", "temperature.max=0.051",
                              "loss.options={level: 0.05, level_by: rho}")
    assert status == 0
    state = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])["loss"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "image_matched_rho" in record]
    assert len(steps) == 4 and steps[-1]["image_matched_rho"] == pytest.approx(float(state["image_matched_rho"]))
    for side in ("image", "text"):
        taus = state[f"{side}_taus"]
        assert abs(taus.log().mean().item() - math.log(0.05)) < 1e-4  # the level, by the margin alone
        assert float(state[f"{side}_matched_rho"]) != 1.0 and int(state[f"{side}_matched_at_bounds"]) == 0
        assert taus.min() < 0.049 and taus.max() > 0.051  # not clipped to [temperature.min, temperature.max]


def test_reproduce_table_runs_the_matched_oracle_at_sogclrs_level():
    from benchmarks.paper.reproduce_table import BASE_CONFIG, DATASET_ORACLES, run_overrides, train_command
    from clipdro.config import load_config
    from clipdro.train_config import TrainConfig

    overrides = run_overrides("dataset-oracle-matched", 0, BASE_CONFIG.parent, [])
    assert "dataset-oracle-matched" in DATASET_ORACLES
    assert train_command("dataset-oracle-matched", overrides)[1:3] == ["-m", "benchmarks.paper.dataset_oracle"]
    config = load_config(TrainConfig, BASE_CONFIG, overrides)
    assert config.loss.name == "dataset-oracle"
    assert config.loss.options == {"level_by": "rho", "level": config.temperature.init}
