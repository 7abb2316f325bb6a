"""Scripts that the tests launch with torchrun (tests/launch.py puts the repository root on PYTHONPATH)."""

import sys
from collections.abc import Callable

import torch

from clipdro.distributed import close_distributed, get_rank, init_distributed


def save_rank0_results(make_results: Callable[[], object]) -> None:
    """A worker's main under gloo: every rank runs ``make_results()``, rank 0 saves what it returns to argv[1]."""
    init_distributed("gloo")
    results = make_results()
    if get_rank() == 0:
        torch.save(results, sys.argv[1])
    close_distributed()
