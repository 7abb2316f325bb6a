"""Owner-sharded per-sample tables through sharded checkpoints written at one world size, read at another.

``torchrun --standalone --nproc_per_node=W tests/workers/reshard_tables.py IN OUT`` (or :func:`reshard` in one
process): build an iSogCLR loss (four tables, float64 and bool columns) whose rows this rank owns, fill them from
checkpoint IN ('-': from :func:`row_values`, as the first writer), check that every row holds the value of its id,
bit for bit, and write checkpoint OUT.
"""

import sys
from pathlib import Path

import torch

from clipdro.checkpoint import load_checkpoint, save_sharded_checkpoint
from clipdro.distributed import close_distributed, get_rank, init_distributed
from clipdro.losses import build_contrastive_loss
from clipdro.state import SampleTable, table_shards

NUM_SAMPLES = 13  # 4 ranks hold 4, 4, 4 and 1 rows; 2 ranks 7 and 6


def row_values(column: int, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A value no other (column, id) has, from the id alone (whichever rank holds the row)."""
    if dtype == torch.bool:
        return (ids + column) % 3 == 0
    return (ids.to(dtype) + 1) / 7 + column * 1000


def tables_of(loss: torch.nn.Module) -> list[SampleTable]:
    return [module for module in loss.modules() if isinstance(module, SampleTable)]


def reshard(source: str, target: Path) -> None:
    loss = build_contrastive_loss("isogclr", NUM_SAMPLES, table_dtype=torch.float64)
    if source == "-":
        for index, table in enumerate(tables_of(loss)):
            ids = torch.arange(table.row_start, table.row_stop)
            for column, name in enumerate(table.columns):
                getattr(table, name).copy_(row_values(10 * index + column, ids, getattr(table, name).dtype))
    else:
        tables = {f"loss/{key}": shard for key, shard in table_shards(loss).items()}
        state = load_checkpoint(Path(source), tables=tables)
        loss.load_state_dict(state["loss"])
    for index, table in enumerate(tables_of(loss)):
        ids = torch.arange(table.row_start, table.row_stop)
        for column, name in enumerate(table.columns):
            expected = row_values(10 * index + column, ids, getattr(table, name).dtype)
            assert torch.equal(getattr(table, name), expected), (source, get_rank(), index, name)
    tables = {f"loss/{key}": shard for key, shard in table_shards(loss).items()}
    save_sharded_checkpoint({"format": "test", "loss": {}} if get_rank() == 0 else None, tables, target)


if __name__ == "__main__":
    init_distributed("gloo")
    reshard(sys.argv[1], Path(sys.argv[2]))
    close_distributed()
