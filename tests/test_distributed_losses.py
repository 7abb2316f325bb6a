"""2 and 4 gloo ranks holding a part of a global batch each reproduce the 1-process run on the whole batch,
per-sample tables included (each rank owns a block of rows: clipdro.state)."""

import pytest
import torch

from tests.launch import REPO_ROOT, run_torchrun
from tests.workers import contrastive_steps


def results_of(tmp_path, world_size: int) -> dict:
    output = tmp_path / f"results-{world_size}.pt"
    run_torchrun(str(REPO_ROOT / "tests" / "workers" / "contrastive_steps.py"), str(output), nproc=world_size)
    return torch.load(output)


@pytest.fixture(scope="module")
def single_results():
    return contrastive_steps.run_steps()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    return results_of(tmp_path_factory.mktemp("dist"), 2)


def check_equal_to_single(distributed: dict, single: dict) -> None:
    for step_single, step_distributed in zip(single["steps"], distributed["steps"], strict=True):
        torch.testing.assert_close(step_distributed["loss"], step_single["loss"], atol=1e-6, rtol=0)
        torch.testing.assert_close(step_distributed["image_tau"], step_single["image_tau"], atol=1e-12, rtol=0)
        for grad_distributed, grad_single in zip(step_distributed["grads"], step_single["grads"], strict=True):
            torch.testing.assert_close(grad_distributed, grad_single, atol=1e-6, rtol=0)
    assert distributed["state"].keys() == single["state"].keys()
    for key, value in distributed["state"].items():
        assert value.shape == single["state"][key].shape, key
        torch.testing.assert_close(value, single["state"][key], atol=1e-9, rtol=0)


@pytest.mark.parametrize("loss_name", list(contrastive_steps.LOSS_OPTIONS))
def test_two_ranks_equal_one_process(two_rank_results, single_results, loss_name):
    check_equal_to_single(two_rank_results[loss_name], single_results[loss_name])


@pytest.mark.slow
def test_four_ranks_equal_one_process(tmp_path, single_results):
    four_rank_results = results_of(tmp_path, 4)
    for loss_name in contrastive_steps.LOSS_OPTIONS:
        check_equal_to_single(four_rank_results[loss_name], single_results[loss_name])
