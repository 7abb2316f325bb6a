"""2 gloo ranks holding half a global batch each reproduce the 1-process run on the whole batch."""

import pytest
import torch

from tests.launch import REPO_ROOT, run_torchrun
from tests.workers import contrastive_steps


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    output = tmp_path_factory.mktemp("dist") / "results.pt"
    run_torchrun(str(REPO_ROOT / "tests" / "workers" / "contrastive_steps.py"), str(output))
    return torch.load(output)


@pytest.mark.parametrize("loss_name", list(contrastive_steps.LOSS_OPTIONS))
def test_two_ranks_equal_one_process(two_rank_results, loss_name):
    single = contrastive_steps.run_steps()[loss_name]
    distributed = two_rank_results[loss_name]
    for step_single, step_distributed in zip(single["steps"], distributed["steps"], strict=True):
        torch.testing.assert_close(step_distributed["loss"], step_single["loss"], atol=1e-6, rtol=0)
        torch.testing.assert_close(step_distributed["image_tau"], step_single["image_tau"], atol=1e-12, rtol=0)
        for grad_distributed, grad_single in zip(step_distributed["grads"], step_single["grads"], strict=True):
            torch.testing.assert_close(grad_distributed, grad_single, atol=1e-6, rtol=0)
    for key, per_rank in distributed["state"].items():
        assert per_rank.shape[0] == 2
        assert torch.equal(per_rank[0], per_rank[1]), f"{key} differs between ranks"
        torch.testing.assert_close(per_rank[0], single["state"][key][0], atol=1e-9, rtol=0)
