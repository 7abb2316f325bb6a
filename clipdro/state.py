"""Per-sample state tables (the SogCLR moving averages s, bounds b, iSogCLR's tau and u).

A :class:`SampleTable` holds named float columns indexed by the stable sample id, plus a
``seen`` flag for the first-visit rule. Tables are buffers, so they follow ``.to(device)`` and
travel in ``state_dict()`` (the reference code never checkpoints them; a resumed run must).

Writes are synchronised: each rank computes new values for its own anchors, then
:meth:`SampleTable.write` all-gathers (ids, values) so every replica applies the same update.

Duplicate ids in one global step: every occurrence reads the same old row (reads happen
before writes), computes its own new value, and the occurrence that comes *last* in global
batch order (rank-major, then position within the rank's batch) is the one stored. The rule
is deterministic and identical on every rank. Rows whose new values are not finite are
not stored, so a skipped NaN step leaves the tables as they were.
"""

from __future__ import annotations

import torch
from torch import nn

from clipdro.distributed import all_gather_no_grad


def last_occurrence_mask(ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask selecting, for each distinct id, its last position in ``ids``."""
    unique_ids, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    last_position = torch.full((unique_ids.numel(),), -1, dtype=positions.dtype, device=ids.device)
    last_position.scatter_reduce_(0, inverse, positions, reduce="amax")
    mask = torch.zeros(ids.numel(), dtype=torch.bool, device=ids.device)
    mask[last_position] = True
    return mask


class SampleTable(nn.Module):
    """Per-sample columns ``fields`` (name -> initial value) for ids in [0, num_samples)."""

    def __init__(self, num_samples: int, fields: dict[str, float], dtype: torch.dtype = torch.float32):
        super().__init__()
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.num_samples = num_samples
        self.fields = tuple(fields)
        for name, initial in fields.items():
            self.register_buffer(name, torch.full((num_samples,), float(initial), dtype=dtype))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_samples):
            raise IndexError(
                f"sample ids must lie in [0, {self.num_samples}); got range "
                f"[{int(ids.min())}, {int(ids.max())}] (the table is sized by the data manifest)"
            )

    def read(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of ``ids``: every field plus ``seen``."""
        self.check_ids(ids)
        rows = {name: getattr(self, name)[ids] for name in self.fields}
        rows["seen"] = self.seen[ids]
        return rows

    @torch.no_grad()
    def write(self, ids: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Store ``values`` (one tensor per field) for ``ids`` on every rank and mark them seen."""
        if set(values) != set(self.fields):
            raise KeyError(f"write needs exactly the fields {self.fields}, got {tuple(values)}")
        # Gather in rank order so every replica applies the identical update (no-op on 1 process).
        ids = all_gather_no_grad(ids)
        values = {name: all_gather_no_grad(value.detach()) for name, value in values.items()}
        keep = last_occurrence_mask(ids)
        # A non-finite row (a diverged step) is never stored: one NaN must not poison a table.
        for value in values.values():
            keep &= torch.isfinite(value)
        ids = ids[keep]
        for name, value in values.items():
            getattr(self, name)[ids] = value[keep].to(getattr(self, name).dtype)
        self.seen[ids] = True

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, fields={self.fields}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        seen = state_dict.get(prefix + "seen")
        if seen is not None and seen.shape[0] != self.num_samples:
            raise ValueError(
                f"checkpoint table has {seen.shape[0]} samples, this run's data has {self.num_samples}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
