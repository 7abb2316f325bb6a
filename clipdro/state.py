"""Per-sample state tables (the SogCLR moving averages s, bounds b, iSogCLR's tau and u).

A :class:`SampleTable` holds named float columns indexed by the stable sample id, plus a
``seen`` flag for the first-visit rule. Tables are buffers, so they follow ``.to(device)`` and
travel in checkpoints (the reference code never checkpoints them; a resumed run must).

**Owner-sharded.** Under ``torch.distributed`` with W ranks, rank r stores only the rows of
ids in its block [r * ceil(N / W), (r + 1) * ceil(N / W)) (clipped to N; :func:`row_block`):
table memory per rank is N / W. :func:`table_shards` marks each rank's rows with their place in
the whole column, so a sharded checkpoint (clipdro.checkpoint) reloads them at any other world size. Why owners
rather than rank-local data (each rank reading a fixed partition whose ids only it touches):
the batches stay exactly what they are on one machine in both data modes, resampled included;
a run can change its world size without repartitioning the data; and keys spread sparsely
over [0, N) need no id -> row map. The price is two collectives per read / write, whose size
is the global batch (W x B ids and rows), never N.

* **read(ids)**: every rank gathers the global batch's ids; each owner fills the rows it holds
  and zeros elsewhere, bit patterns packed as int64; a sum over ranks that keeps each rank
  its own block (reduce-scatter) hands every rank its rows. One owner per id and integer adds
  make the result bitwise the stored value.
* **write(ids, values)**: every rank computes new values for its own anchors; the (ids, values)
  of the global batch are all-gathered, the duplicate and finiteness rules below are applied to
  the global batch on every rank alike, and each rank stores the surviving rows it owns.

Duplicate ids in one global step: every occurrence reads the same old row (reads happen
before writes), computes its own new value, and the occurrence that comes *last* in global
batch order (rank-major, then position within the rank's batch) is the one stored. Rows whose
new values are not finite are not stored, so a skipped NaN step leaves the tables as they
were. Both rules act on the gathered global batch, so the stored values are the same bits
whatever W is.
"""

from __future__ import annotations

import torch
from torch import nn

from clipdro.distributed import all_gather_no_grad, get_rank, get_world_size, sum_over_ranks_local_slice

# The integer type whose bits each column dtype is packed into for the owners' exchange.
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def row_block(num_samples: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s ids [start, stop) of a table of ``num_samples`` rows over ``world_size``
    ranks: blocks of ceil(N / W) rows, the last ones shorter or empty (torch.chunk's and
    DTensor Shard(0)'s layout)."""
    block = -(-num_samples // world_size)
    start = min(rank * block, num_samples)
    return start, min(start + block, num_samples)


def last_occurrence_mask(ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask selecting, for each distinct id, its last position in ``ids``."""
    unique_ids, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    last_position = torch.full((unique_ids.numel(),), -1, dtype=positions.dtype, device=ids.device)
    last_position.scatter_reduce_(0, inverse, positions, reduce="amax")
    mask = torch.zeros(ids.numel(), dtype=torch.bool, device=ids.device)
    mask[last_position] = True
    return mask


def _to_bits(column: torch.Tensor) -> torch.Tensor:
    """``column``'s bit patterns as int64 (exact: a float's bits, a flag as 0 / 1)."""
    if column.dtype == torch.bool:
        return column.to(torch.int64)
    return column.view(_BITS[column.element_size()]).to(torch.int64)


def _from_bits(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool:
        return bits != 0
    return bits.to(_BITS[torch.empty((), dtype=dtype).element_size()]).view(dtype)


class SampleTable(nn.Module):
    """Per-sample columns ``fields`` (name -> initial value) for ids in [0, num_samples).

    Built under torch.distributed, the table holds this rank's :func:`row_block` only
    (``row_start`` / ``row_stop``); :meth:`read` and :meth:`write` are then collectives that
    every rank calls with its own batch (equal sizes on every rank)."""

    def __init__(self, num_samples: int, fields: dict[str, float], dtype: torch.dtype = torch.float32):
        super().__init__()
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.num_samples = num_samples
        self.fields = tuple(fields)
        self.world_size = get_world_size()
        self.row_start, self.row_stop = row_block(num_samples, self.world_size, get_rank())
        rows = self.row_stop - self.row_start
        for name, initial in fields.items():
            self.register_buffer(name, torch.full((rows,), float(initial), dtype=dtype))
        self.register_buffer("seen", torch.zeros(rows, dtype=torch.bool))

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.fields, "seen")

    def check_ids(self, ids: torch.Tensor) -> None:
        """Ids must lie in [0, num_samples). The check is queued with the step (torch._assert_async: a
        RuntimeError, at once on the CPU, when the device gets there on an accelerator) instead of reading
        the ids back to the host every step."""
        torch._assert_async(((ids >= 0) & (ids < self.num_samples)).all(),
                            f"sample ids must lie in [0, {self.num_samples}) (the table is sized by the data manifest)")

    def _owned(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.row_start) & (ids < self.row_stop)

    def read(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of ``ids``: every field plus ``seen`` (a collective when sharded)."""
        if self.world_size == 1:
            self.check_ids(ids)
            return {name: getattr(self, name)[ids] for name in self.columns}
        global_ids = all_gather_no_grad(ids)
        self.check_ids(global_ids)
        owned = self._owned(global_ids)
        local_rows = (global_ids - self.row_start).clamp(0, max(self.row_stop - self.row_start - 1, 0))
        packed = torch.zeros((global_ids.numel(), len(self.columns)), dtype=torch.int64, device=ids.device)
        for column, name in enumerate(self.columns):
            if self.row_stop > self.row_start:
                packed[:, column] = torch.where(owned, _to_bits(getattr(self, name)[local_rows]), 0)
        mine = sum_over_ranks_local_slice(packed)
        return {name: _from_bits(mine[:, column], getattr(self, name).dtype)
                for column, name in enumerate(self.columns)}

    @torch.no_grad()
    def write(self, ids: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Store ``values`` (one tensor per field) for ``ids`` and mark them seen; every rank calls
        this with its own batch, and each rank stores the rows it owns."""
        if set(values) != set(self.fields):
            raise KeyError(f"write needs exactly the fields {self.fields}, got {tuple(values)}")
        # Gather in rank order so every rank applies the rules to the same global batch (no-op on 1 process).
        ids = all_gather_no_grad(ids)
        values = {name: all_gather_no_grad(value.detach()) for name, value in values.items()}
        keep = last_occurrence_mask(ids)
        # A non-finite row (a diverged step) is never stored: one NaN must not poison a table.
        for value in values.values():
            keep &= torch.isfinite(value)
        keep &= self._owned(ids)
        local_rows = ids[keep] - self.row_start
        for name, value in values.items():
            getattr(self, name)[local_rows] = value[keep].to(getattr(self, name).dtype)
        self.seen[local_rows] = True

    def extra_repr(self) -> str:
        shard = "" if self.world_size == 1 else f", rows [{self.row_start}, {self.row_stop}) of {self.world_size} ranks"
        return f"num_samples={self.num_samples}, fields={self.fields}{shard}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accepts this rank's rows, or a whole table (a single-file checkpoint, whichever world
        size wrote it), of which it keeps its own block."""
        rows = self.row_stop - self.row_start
        for name in self.columns:
            saved = state_dict.get(prefix + name)
            if saved is None or saved.shape[0] == rows:
                continue
            if saved.shape[0] != self.num_samples:
                raise ValueError(f"checkpoint table has {saved.shape[0]} samples, this run's data has "
                                 f"{self.num_samples}")
            state_dict[prefix + name] = saved[self.row_start:self.row_stop]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# Rows per piece a table column is checkpointed in (4 MiB of float32). It bounds the memory a checkpoint needs
# beside the tables: a restore reads one piece at a time, and DCP's writer copies each piece of a buffer before
# writing it (a slice does not own its storage) and keeps the last copy of every column until its file is done.
CHECKPOINT_PIECE_ROWS = 1 << 20


def table_shards(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every :class:`SampleTable` column under ``module``, by its ``state_dict`` key, as this rank's rows
    marked with where they lie in the whole column: the fields of DCP's ``CheckpointableTensor`` protocol
    (``global_shape``, and per piece of at most CHECKPOINT_PIECE_ROWS rows its global offset, local offset
    and size). The tensors are views of the buffers, so loading a sharded checkpoint into them fills the
    tables in place, and DCP reads each piece from wherever a checkpoint of any world size put it."""
    shards = {}
    for prefix, table in module.named_modules():
        if not isinstance(table, SampleTable):
            continue
        for name in table.columns:
            key = f"{prefix}.{name}" if prefix else name
            shards[key] = _checkpointable(getattr(table, name), table.row_start, table.num_samples)
    return shards


def _checkpointable(local: torch.Tensor, row_start: int, num_samples: int) -> torch.Tensor:
    view = local.view(local.shape)  # a new tensor object on the buffer's storage carries the fields
    pieces = range(0, local.shape[0], CHECKPOINT_PIECE_ROWS)
    view.global_shape = (num_samples,)
    view.global_offsets = tuple((row_start + offset,) for offset in pieces)
    view.local_offsets = tuple((offset,) for offset in pieces)
    view.local_sizes = tuple((min(CHECKPOINT_PIECE_ROWS, local.shape[0] - offset),) for offset in pieces)
    return view
