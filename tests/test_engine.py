"""The run engine's guarantees that both trainers rely on (clipdro/engine.py)."""

import pytest
import torch

from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.config import OptimConfig
from clipdro.engine import rng_preserved, warmup_cosine_lr
from clipdro.train import train
from tests.run_factory import config_for, step_losses


def test_an_interrupted_and_resumed_run_reproduces_the_uninterrupted_run(shards, labelled_evalset, tmp_path):
    # Everything random is on: TempNet dropout, the shuffle buffer, random augmentation; each must continue
    # from the checkpoint. Dropout draws from the torch RNG every step; an evaluation that consumed it (a
    # DataLoader draws its base seed) would make the run depend on whether the evaluation ran between
    # checkpoint and resume. (Signals and separate processes: tests/test_faults_run.py.)
    common = ("run.epochs=2", "tempnet.dropout=0.5", "data.shuffle_buffer=16", "model.train_transform=train",
              f"eval.retrieval=[{labelled_evalset}]", "eval.every_steps=2", "eval.batch_size=4")
    full = tmp_path / "full"
    train(config_for(shards, full, *common))
    parts = tmp_path / "parts"
    train(config_for(shards, parts, *common, "run.stop_after=4"))
    train(config_for(shards, parts, *common), resume="latest")
    assert step_losses(parts) == pytest.approx(step_losses(full), abs=0, rel=1e-12)
    assert [path.name for path in list_checkpoints(parts)][:1] == ["step_000000004"]
    final_full, final_parts = (load_checkpoint(list_checkpoints(run)[-1]) for run in (full, parts))
    for section in ("model", "loss"):
        for key, value in final_full[section].items():
            assert torch.equal(final_parts[section][key], value), f"{section}.{key}"


def test_in_training_evaluation_uses_the_run_precision(shards, labelled_evalset, tmp_path, monkeypatch):
    import clipdro.train as trainer

    seen = []
    original = trainer.evaluate_retrieval

    def recording(*args, **kwargs):
        seen.append(kwargs["precision"])
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_retrieval", recording)
    train(config_for(shards, tmp_path / "run", "run.precision=amp_bf16", "run.stop_after=1",
                     f"eval.retrieval=[{labelled_evalset}]"))
    assert seen == ["amp_bf16"]


def test_checkpoint_comes_before_evaluation_and_the_folder_holds_eval_json(shards, labelled_evalset, tmp_path,
                                                                           monkeypatch):
    import clipdro.train as trainer

    run_dir = tmp_path / "run"

    def failing(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(trainer, "evaluate_retrieval", failing)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train(config_for(shards, run_dir, "run.epochs=1", "run.checkpoint_every=2", "eval.every_steps=2",
                         f"eval.retrieval=[{labelled_evalset}]"))
    # The training up to the failed evaluation is safe: its checkpoint was written first.
    assert [path.name for path in list_checkpoints(run_dir)] == ["step_000000002"]


def test_rng_preserved_restores_every_stream():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with rng_preserved():
        torch.rand(100)
    assert torch.equal(torch.rand(3), expected)


def test_warmup_then_cosine_to_the_floor():
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert [warmup_cosine_lr(step, 14, optim) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine_lr(9, 14, optim) == pytest.approx(0.55)  # halfway through the decay
    assert warmup_cosine_lr(14, 14, optim) == pytest.approx(0.1)
