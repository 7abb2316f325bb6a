"""Reads and writes of owner-sharded SampleTables, the global batch split across the ranks.

Run as ``torchrun --standalone --nproc_per_node=W tests/workers/table_steps.py OUT`` (or in-process
through :func:`run_steps` for the 1-process reference). Every step reads the batch's rows, then
writes new values; the steps repeat ids within and across ranks, write non-finite values, and
revisit ids (the first-visit flag). Rank 0 saves every read (gathered in rank order) and the
whole table after each step, put together from the rows each rank owns.
"""


import torch

from clipdro.distributed import (
    all_gather_no_grad,
    gather_objects,
    get_rank,
    get_world_size,
)
from clipdro.state import SampleTable
from tests.workers import save_rank0_results

NUM_SAMPLES = 11  # not a multiple of 4: the last rank's block is shorter
GLOBAL_BATCH = 8
STEPS = 6
DTYPES = (torch.float32, torch.float64)


def global_step(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids with repeats, new s with NaN / inf rows, new b) of one global step."""
    generator = torch.Generator().manual_seed(7 + step)
    ids = torch.randint(0, NUM_SAMPLES, (GLOBAL_BATCH,), generator=generator)
    ids[-1] = ids[0]  # the same id on the first and the last rank
    s = torch.randn(GLOBAL_BATCH, generator=generator, dtype=torch.float64)
    b = -torch.rand(GLOBAL_BATCH, generator=generator, dtype=torch.float64)
    s[step % GLOBAL_BATCH] = float("nan")
    b[(3 * step + 1) % GLOBAL_BATCH] = float("inf")
    s[2] = -0.0  # a negative zero keeps its sign bit through the owners' exchange
    return ids, s, b


def run_steps() -> dict:
    world_size, rank = get_world_size(), get_rank()
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    results = {}
    for dtype in DTYPES:
        table = SampleTable(NUM_SAMPLES, {"s": 0.5, "b": -1.0}, dtype=dtype)
        reads, tables = [], []
        for step in range(STEPS):
            ids, s, b = global_step(step)
            read = table.read(ids[rows])
            reads.append({name: all_gather_no_grad(value.to(torch.float64)) for name, value in read.items()})
            table.write(ids[rows], {"s": s[rows], "b": b[rows]})
            tables.append({name: torch.cat(gather_objects(value)) for name, value in table.state_dict().items()})
        results[str(dtype)] = {"reads": reads, "tables": tables}
    return results


if __name__ == "__main__":
    save_rank0_results(run_steps)
