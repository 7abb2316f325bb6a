"""optim.accum_steps: K micro-batches per step give the whole batch's step (clipdro.train.accumulated_clip_step)."""

import contextlib

import pytest
import torch
from open_clip.transformer import PatchDropout

from clipdro.config import load_config
from clipdro.errors import UsageError
from clipdro.losses import build_contrastive_loss
from clipdro.models import CLIPWithTempNets, build_tempnets, create_clip
from clipdro.train import accumulated_clip_step
from clipdro.train_config import TrainConfig
from tests.launch import run_torchrun
from tests.workers.accumulation_runs import ACCUMULATED, LOSSES, assert_same_run, run_dir, train_run

WORKER = "tests/workers/accumulation_runs.py"


# The default suite keeps tempnet (its dropout on: the TempNets' graph, carried by the last micro-batch's
# backward); clip (logit_scale's graph, the same path), sogclr and isogclr are slow, like the 2-rank launch
# that covers all four.
@pytest.mark.parametrize("loss_name", [pytest.param(name, marks=[] if name == "tempnet" else [pytest.mark.slow])
                                       for name in LOSSES])
def test_accumulated_steps_equal_whole_batch_steps(shards, tmp_path, loss_name):
    for accum_steps in (1, ACCUMULATED):
        train_run(shards, tmp_path, loss_name, accum_steps)
    assert_same_run(run_dir(tmp_path, loss_name, 1), run_dir(tmp_path, loss_name, ACCUMULATED))


@pytest.mark.slow  # 8 runs on 2 ranks: about a minute
def test_two_ranks_accumulated_steps_equal_whole_batch_steps(shards, tmp_path):
    """Under DDP (gloo), every loss: only the last micro-batch's backward all-reduces, and it carries every
    parameter's gradient (the TempNets' and logit_scale's included)."""
    run_torchrun(WORKER, str(shards), str(tmp_path))
    for loss_name in LOSSES:
        assert_same_run(run_dir(tmp_path, loss_name, 1), run_dir(tmp_path, loss_name, ACCUMULATED))


def test_replayed_micro_batches_draw_their_first_pass_randomness():
    """With randomness in the towers (patch dropout) and the TempNets (dropout), the accumulated step's
    gradients equal one backward through the same draws: pass 2 replays each micro-batch's pass-1 RNG state.
    (The K = 1 step itself draws tower randomness for the whole batch at once, so it differs; docs/training.md.)"""
    torch.manual_seed(0)
    clip = create_clip("clipdro-tiny-vit")[0]
    clip.visual.patch_dropout = PatchDropout(0.5)
    model = CLIPWithTempNets(clip, *build_tempnets("clipdro-tiny-vit", 4, 0.005, 0.05, dropout=0.5)).train()
    images, tokens, sample_ids = torch.randn(8, 3, 32, 32), torch.randint(1, 1000, (8, 32)), torch.arange(8)

    def gradients(run_step) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        run_step(build_contrastive_loss("tempnet", 8, rho=1.0))
        return {name: parameter.grad.clone() for name, parameter in model.named_parameters()
                if parameter.grad is not None}

    def accumulated(loss_fn):
        accumulated_clip_step(model, model, loss_fn, (images, tokens, sample_ids), contextlib.nullcontext,
                              4).backward(lambda loss: loss)

    def same_draws_one_backward(loss_fn):
        parts = [model(micro_images, micro_tokens, with_temperatures=False)
                 for micro_images, micro_tokens in zip(images.chunk(4), tokens.chunk(4), strict=True)]
        output = model.temperatures_of(torch.cat([part.image_features for part in parts]),
                                       torch.cat([part.text_features for part in parts]))
        loss_fn(output.image_features, output.text_features, *loss_fn.temperatures(output), sample_ids).loss.backward()

    expected, actual = gradients(same_draws_one_backward), gradients(accumulated)
    assert expected.keys() == actual.keys() and "image_tempnet.transform.weight" in actual
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("setting, problem", [("optim.accum_steps=0", "must be >= 1"),
                                               ("optim.accum_steps=3", "must divide data.batch_size")])
def test_accum_steps_is_checked(setting, problem):
    with pytest.raises(UsageError, match=problem):
        load_config(TrainConfig, None, ["data.sources=[{shards: x}]", "data.batch_size=8", setting])


@pytest.mark.slow  # three child processes, each building a model
def test_memory_benchmark_reports_every_accum_steps(tmp_path):
    from benchmarks.speed.accumulation_memory import main

    report = main(["--model", "clipdro-tiny-vit", "--batch", "8", "--accum", "1", "4", "--threads", "1",
                   "--output", str(tmp_path / "memory.json")])
    assert [row["accum_steps"] for row in report["results"]] == [1, 4]
    assert [row["micro_batch"] for row in report["results"]] == [8, 2]
    assert all(row["step_peak_mib"] > 0 and row["step_s"] > 0 for row in report["results"])
