"""The backward of all_gather_with_grad by reduce-scatter and by all_reduce + slice, on every rank.

Run as ``torchrun --standalone --nproc_per_node=2 tests/workers/gather_backward.py OUT``: rank 0 saves
{method: every rank's gradient of its local rows, gathered} and which method ``auto`` chose.
"""


import torch

from clipdro import distributed
from clipdro.distributed import all_gather_no_grad, all_gather_with_grad, get_rank
from tests.workers import save_rank0_results


def local_rows_gradient(method: str) -> torch.Tensor:
    """d/dx of a loss of the gathered rows that weighs every rank's rows differently on every rank, so the
    sum over ranks is needed: the rows' gradient here is sum_r 2 * w_r * x (per rank r's weights)."""
    generator = torch.Generator().manual_seed(get_rank())
    rows = torch.randn(3, 5, generator=generator, dtype=torch.float64).requires_grad_()
    gathered = all_gather_with_grad(rows, backward_method=method)
    weights = torch.randn(gathered.shape, generator=generator, dtype=torch.float64)
    (gathered.pow(2) * weights).sum().backward()
    return all_gather_no_grad(rows.grad)


def gradients() -> dict:
    results = {method: local_rows_gradient(method) for method in ("reduce_scatter", "all_reduce", "auto")}
    results["auto_chose_reduce_scatter"] = distributed._REDUCE_SCATTER_WORKS.get("gloo")
    return results


if __name__ == "__main__":
    save_rank0_results(gradients)
