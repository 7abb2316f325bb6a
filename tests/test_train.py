"""The training loop end to end on generated shards with the tiny model (CPU, seconds)."""

import json
import math
import signal
import threading

import pytest
import torch

from clipdro import cli
from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.losses import DROContrastiveLoss
from clipdro.train import NonFiniteLossError, tempnet_lr, train
from clipdro.train_config import TempNetConfig
from tests.run_factory import BATCH, config_for, step_losses, train_overrides


@pytest.mark.parametrize("loss_name", ["tempnet", "sogclr", "isogclr", "clip"])
def test_every_loss_trains_and_writes_the_run_folder(shards, tmp_path, loss_name):
    run_dir = tmp_path / "run"
    train(config_for(shards, run_dir, f"loss.name={loss_name}", "run.epochs=1"))
    assert (run_dir / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert any((run_dir / "tensorboard").iterdir())
    losses = step_losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(map(torch.isfinite, torch.tensor(list(losses.values()))))
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    if loss_name == "tempnet":  # tempnet_lr (tested below) sets the TempNet's rate: 3e-5 from the first step
        assert record["tempnet_lr"] == TempNetConfig().lr
    for key in ("samples_per_s", "samples_per_s_per_device", "data_s_per_step", "compute_s_per_step", "lr",
                "image_tau_mean", "image_tau_min", "image_tau_max", "text_tau_mean"):
        assert key in record, key
    (checkpoint_file,) = list_checkpoints(run_dir)
    state = load_checkpoint(checkpoint_file)
    assert state["step"] == 6 and state["data"]["epoch"] * 6 + state["data"]["batches_done"] == 6
    assert state["config"]["loss"]["name"] == loss_name
    assert {"torch", "open_clip_torch"} <= set(state["versions"])
    if loss_name != "clip":
        assert int(state["loss"]["image_table.seen"].sum()) == 48  # one epoch visits every sample


def test_sigterm_writes_a_checkpoint_and_returns(shards, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    original = DROContrastiveLoss.forward

    def forward_then_signal(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if int(self.image_table.seen.sum()) >= 2 * BATCH:  # during the second step
            signal.raise_signal(signal.SIGTERM)
        return result

    monkeypatch.setattr(DROContrastiveLoss, "forward", forward_then_signal)
    assert threading.current_thread() is threading.main_thread()
    train(config_for(shards, run_dir, "run.epochs=1"))
    assert [path.name for path in list_checkpoints(run_dir)] == ["step_000000002"]


def test_nonfinite_losses_are_skipped_then_stop_training(shards, tmp_path, monkeypatch):
    original = DROContrastiveLoss.forward
    calls = {"count": 0}
    bad_calls = {3}

    def sometimes_nan(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["count"] += 1
        if calls["count"] in bad_calls:
            result.loss = result.loss * float("nan")
        return result

    monkeypatch.setattr(DROContrastiveLoss, "forward", sometimes_nan)
    run_dir = tmp_path / "one_nan"
    train(config_for(shards, run_dir, "run.epochs=1"))
    assert load_checkpoint(list_checkpoints(run_dir)[-1])["nonfinite_steps"] == 1

    calls["count"] = 0
    bad_calls.clear()
    bad_calls.update(range(3, 100))
    run_dir = tmp_path / "diverged"
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        train(config_for(shards, run_dir, "run.epochs=1", "run.checkpoint_every=1", "run.max_nonfinite_steps=3"))
    checkpoints = list_checkpoints(run_dir)
    assert checkpoints[-1].name == "step_000000002"  # steps 3-5 failed, nothing after the last good one
    assert torch.isfinite(load_checkpoint(checkpoints[-1])["loss"]["image_table.s"]).all()


# What reads a tensor's value back to the host (on an accelerator: a wait for the device).
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


def test_steps_read_nothing_back_to_the_host_a_skipped_one_included(shards, tmp_path, monkeypatch):
    """Between log and checkpoint steps the step function and the update (backward, the non-finite skip,
    clipping, the optimizers) never read a tensor's value: the skip is a device flag the fused optimizers take."""
    from clipdro.engine import RunEngine

    reads, counting = [], {"on": False}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if counting["on"]:
                reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)

    def count_during(function):
        def wrapped(*args, **kwargs):
            counting["on"] = True
            try:
                return function(*args, **kwargs)
            finally:
                counting["on"] = False
        return wrapped

    original_fit, original_update = RunEngine.fit, RunEngine._update

    def fit(self, job):
        first_step = job.step  # step 0 also initialises the TempNet prototypes from the batch: not counted
        job.step = lambda index, batch: (first_step if index == 0 else count_during(first_step))(index, batch)
        return original_fit(self, job)
    monkeypatch.setattr(RunEngine, "fit", fit)
    monkeypatch.setattr(RunEngine, "_update", count_during(original_update))
    original_forward, calls = DROContrastiveLoss.forward, {"count": 0}

    def nan_at_step_4(self, *args, **kwargs):
        result = original_forward(self, *args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 4:
            result.loss = result.loss * float("nan")
        return result
    monkeypatch.setattr(DROContrastiveLoss, "forward", nan_at_step_4)
    run_dir = tmp_path / "run"
    train(config_for(shards, run_dir, "run.epochs=1", "run.log_every=3", "optim.grad_clip_norm=1.0"))
    assert reads == []
    assert load_checkpoint(list_checkpoints(run_dir)[-1])["nonfinite_steps"] == 1
    # the hook sees reads: the log steps' own (outside the counted calls) go through the same methods
    counting["on"] = True
    float(torch.ones(()))
    assert reads == ["__float__"]


@pytest.mark.parametrize("extra, message", [
    (["optim.lrr=1"], "unknown config key optim.lrr"),
    (["optim.lr=fast"], "optim.lr: expected float"),
    (["loss.rho=3.0"], "rho=3.0 must lie in"),
    (["model.name=no-such-model"], "does not know the model 'no-such-model'"),
    (["tempnet.start_epoch=-1"], "tempnet.start_epoch must be >= 0"),
])
def test_bad_input_exits_with_status_2_and_one_line(shards, tmp_path, capsys, extra, message):
    status = cli.main(["train", *train_overrides(shards, tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_path_exits_with_status_2(tmp_path, capsys):
    status = cli.main(["train", *train_overrides(tmp_path / "nowhere", tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and "nowhere" in err and "Traceback" not in err


def test_periodic_and_final_evaluation(shards, labelled_evalset, tmp_path):
    run_dir = tmp_path / "run"
    final = train(config_for(shards, run_dir, "run.epochs=1", f"eval.retrieval=[{labelled_evalset}]",
                             f"eval.zeroshot=[{labelled_evalset}]", "eval.every_steps=4", "eval.recall_k=[1, 2]"))
    assert sorted(path.name for path in (run_dir / "eval").iterdir()) == ["step_000000004.json", "step_000000006.json"]
    assert set(final) == {"tiny/image_retrieval_recall@1", "tiny/image_retrieval_recall@2",
                          "tiny/text_retrieval_recall@1", "tiny/text_retrieval_recall@2",
                          "tiny/zeroshot_acc1", "tiny/zeroshot_acc5", "tiny/zeroshot_mean_per_class_recall"}
    evals = [json.loads(line)["eval"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "eval" in json.loads(line)]
    assert len(evals) == 2 and evals[-1] == pytest.approx(final, nan_ok=True)


def test_missing_evaluation_set_exits_with_status_2(shards, tmp_path, capsys):
    status = cli.main(["train", *train_overrides(shards, tmp_path / "run"), f"eval.retrieval=[{tmp_path / 'absent'}]"])
    assert status == 2 and "absent" in capsys.readouterr().err


def test_bf16_autocast_trains_with_float32_temperatures(shards, tmp_path):
    run_dir = tmp_path / "run"
    train(config_for(shards, run_dir, "run.epochs=1", "run.precision=amp_bf16", "run.stop_after=2"))
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2 and math.isfinite(record["loss"])
    assert 0.005 <= record["image_tau_min"] <= record["image_tau_max"] <= 0.05


def test_gradient_checkpointing_gives_the_same_step(shards, tmp_path):
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    train(config_for(shards, plain, "run.epochs=1", "run.stop_after=2"))
    train(config_for(shards, checkpointed, "run.epochs=1", "run.stop_after=2", "model.grad_checkpointing=true"))
    assert step_losses(checkpointed) == pytest.approx(step_losses(plain), rel=1e-5)


def test_tempnet_start_epoch_freezes_the_tempnet_then_decays_from_its_start():
    tempnet = TempNetConfig(lr=1e-2, lr_decay_per_epoch=0.5, start_epoch=1)
    lrs = [tempnet_lr(step, 6, tempnet) for step in range(18)]  # step index 0..17, 6 steps an epoch
    assert lrs == [0.0] * 6 + [1e-2] * 6 + [5e-3] * 6
    assert tempnet_lr(5, 6, TempNetConfig(lr=3e-5)) == 3e-5  # start_epoch 0: from the first step
