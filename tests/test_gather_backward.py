"""all_gather_with_grad's backward: reduce-scatter and all_reduce + slice give the same gradients (2 gloo ranks)."""

import pytest
import torch

from tests.launch import run_torchrun

WORLD = 2


def expected_gradient() -> torch.Tensor:
    """Every rank's rows' gradient, rank-major, redrawn from the worker's seeds: rank r draws its rows x_r,
    then weights w_r over all gathered rows; d/dx_r sum_q sum(w_q * gathered**2) = sum_q 2 * w_q[r's block] * x_r."""
    rows, weights = [], []
    for rank in range(WORLD):
        generator = torch.Generator().manual_seed(rank)
        rows.append(torch.randn(3, 5, generator=generator, dtype=torch.float64))
        weights.append(torch.randn(3 * WORLD, 5, generator=generator, dtype=torch.float64))
    gathered = torch.cat(rows)
    return sum(2 * rank_weights * gathered for rank_weights in weights)


@pytest.mark.slow  # a torchrun launch; tests/test_distributed_losses.py covers the default path
def test_reduce_scatter_and_all_reduce_backwards_agree(tmp_path):
    run_torchrun("tests/workers/gather_backward.py", str(tmp_path / "grads.pt"))
    results = torch.load(tmp_path / "grads.pt")
    assert results["auto_chose_reduce_scatter"] is True  # gloo has reduce_scatter_tensor in the pinned torch
    torch.testing.assert_close(results["all_reduce"], expected_gradient(), rtol=1e-12, atol=0)
    assert torch.equal(results["reduce_scatter"], results["all_reduce"])  # 2 ranks: a + b either way
    assert torch.equal(results["auto"], results["all_reduce"])
