"""benchmarks/paper/dataset_oracle.py: dataset-scope tau* and the loss that trains with it."""

import torch
import torch.nn.functional as F

from benchmarks.paper.dataset_oracle import competitor_kl, dataset_taus, main
from clipdro.analysis import best_taus, competitor_scores
from clipdro.checkpoint import list_checkpoints, load_checkpoint
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


def test_training_refreshes_the_tables_at_every_epoch_start(tmp_path):
    shards = tmp_path / "shards"
    write_dense(shards, count=16, per_shard=8, size=32)
    status = main(["--config", str(REPO_ROOT / "configs" / "demo.yaml"), f"data.sources=[{{shards: {shards}}}]",
                   "data.batch_size=8", "data.epoch_samples=16", "data.num_workers=0", "data.shuffle_buffer=1",
                   "loss.rho=1.0", "temperature.min=0.01", "temperature.max=0.5", "temperature.init=0.05",
                   "loss.options={smoothing: 0.5}", "eval.retrieval=[]", "eval.zeroshot=[]", "run.epochs=2",
                   "run.log_every=1", f"run.output_dir={tmp_path}", "run.name=run"])
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
