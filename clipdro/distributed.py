"""Process-group set-up from torchrun or SLURM, and every collective clipdro uses.

All communication between ranks goes through this module: the autograd-aware all-gather of
the losses, the reductions of logged values, the gathers of objects (RNG states, skip counts)
and of unevenly sharded evaluation features, and the broadcast of the run folder's name. Each
helper is the identity in a single process, so callers never branch on the world size.

The contrastive losses compute *local* rows (this rank's anchors) against *global* columns
(every rank's candidates). The columns come from :func:`all_gather_with_grad`, whose backward
sums the incoming gradients over ranks and returns this rank's slice (a reduce-scatter where the
backend has one, :func:`sum_over_ranks_local_slice`). With DDP averaging the
parameter gradients over W ranks this reproduces the single-process gradient of the global
batch exactly (a SimCLR-style gather that returns only the local slice would give 1/W of it).
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from clipdro.errors import UsageError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def detect_launcher() -> tuple[str, int, int, int]:
    """(launcher, rank, local_rank, world_size) from torchrun's or SLURM's environment."""
    if _env_int("WORLD_SIZE") is not None and _env_int("RANK") is not None:
        return "torchrun", _env_int("RANK"), _env_int("LOCAL_RANK") or 0, _env_int("WORLD_SIZE")
    if _env_int("SLURM_NTASKS") is not None and _env_int("SLURM_PROCID") is not None:
        return "slurm", _env_int("SLURM_PROCID"), _env_int("SLURM_LOCALID") or 0, _env_int("SLURM_NTASKS")
    return "single", 0, 0, 1


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Initialise the default process group when launched by torchrun or srun.

    A single process (no launcher variables, or a world of 1) gets no process group. Under
    SLURM the job script must export MASTER_ADDR and MASTER_PORT (the usual
    ``MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)``).
    """
    launcher, rank, local_rank, world_size = detect_launcher()
    if world_size == 1:
        return DistributedContext()
    if dist.is_initialized():
        return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size())
    if launcher == "slurm":
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise UsageError(f"running under SLURM with {world_size} tasks but {', '.join(missing)} not set")
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, local_rank, world_size)


def close_distributed() -> None:
    """Wait for every rank, then tear the process group down. A rank that leaves while another
    still works (rank 0 writing a final export) would otherwise abort in gloo's teardown. Garbage that
    still refers to the group (reference cycles of collectives' work objects, after a sharded checkpoint)
    is collected first: left to the interpreter's exit, it made 1 in 4 gloo processes abort with
    "terminate called without an active exception" (4 ranks on 2 cores)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order (equal shapes required)."""
    if not is_distributed():
        return tensor
    tensor = tensor.contiguous()
    gathered = tensor.new_empty((get_world_size() * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_into_tensor(gathered, tensor)
    return gathered


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, backward_method: str) -> torch.Tensor:
        ctx.backward_method = backward_method
        return all_gather_no_grad(tensor)

    @staticmethod
    def backward(ctx, grad_gathered: torch.Tensor) -> tuple[torch.Tensor, None]:
        # Every rank's loss depends on this rank's rows: sum their gradients over ranks, keep our slice.
        return sum_over_ranks_local_slice(grad_gathered, ctx.backward_method), None


def all_gather_with_grad(tensor: torch.Tensor, backward_method: str = "auto") -> torch.Tensor:
    """Autograd-aware :func:`all_gather_no_grad`: gradients flow back to every rank's rows
    (``backward_method``: see :func:`sum_over_ranks_local_slice`)."""
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor, backward_method)


# Backend name -> whether dist.reduce_scatter_tensor works there (learnt on first use).
_REDUCE_SCATTER_WORKS: dict[str, bool] = {}


def sum_over_ranks_local_slice(tensor: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """This rank's block of rows (rank-major, W equal blocks) of the sum over ranks of ``tensor`` [W * n, ...].

    ``reduce_scatter`` moves and adds only what each rank keeps (NCCL; gloo in torch 2.14, older releases refused it);
    ``all_reduce`` sums the whole tensor everywhere and slices it (every backend); ``auto`` uses reduce-scatter
    where the backend has it, else all_reduce. Both give the same values (bitwise with 2 ranks; with more,
    the backends may add in another order). The first ``auto`` call on a backend tries reduce-scatter: a
    backend without it refuses on every rank alike, before any communication, and all_reduce is used from
    then on."""
    world = get_world_size()
    if world == 1:
        return tensor
    if method not in ("auto", "reduce_scatter", "all_reduce"):
        raise ValueError(f"method must be auto, reduce_scatter or all_reduce, got {method!r}")
    tensor = tensor.contiguous()
    local_rows = tensor.shape[0] // world
    backend = str(dist.get_backend())
    if method == "reduce_scatter" or (method == "auto" and _REDUCE_SCATTER_WORKS.get(backend, True)):
        local = tensor.new_empty((local_rows, *tensor.shape[1:]))
        try:
            dist.reduce_scatter_tensor(local, tensor, op=dist.ReduceOp.SUM)
        except (RuntimeError, NotImplementedError):
            if method == "reduce_scatter" or _REDUCE_SCATTER_WORKS.get(backend):
                raise
            _REDUCE_SCATTER_WORKS[backend] = False
        else:
            _REDUCE_SCATTER_WORKS[backend] = True
            return local
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    start = get_rank() * local_rows
    return tensor[start:start + local_rows]


def no_gradient_sync(module: torch.nn.Module) -> contextlib.AbstractContextManager:
    """For a DDP-wrapped ``module``, its ``no_sync()``: forwards and backwards inside accumulate gradients on
    this rank without the all-reduce (the next synchronised backward reduces the sum); else a no-op."""
    return module.no_sync() if isinstance(module, DistributedDataParallel) else contextlib.nullcontext()


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """A boolean tensor, true on every rank where ``flag`` is true on at least one, left where ``flag``
    is (on the device: nothing is read back to the host, so the caller does not wait for the device)."""
    if not is_distributed():
        return flag
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value > 0


# A gloo group over every rank for flags that live on the host (created on first use when the default
# group is NCCL; gloo's default group serves them itself).
_HOST_GROUP: dist.ProcessGroup | None = None


def any_rank_on_host(flag: bool) -> bool:
    """True on every rank when the host value ``flag`` is true on at least one (ranks must take the same
    branch), agreed through a CPU group: no device work and no wait for the device."""
    global _HOST_GROUP
    if not is_distributed():
        return flag
    if _HOST_GROUP is None:  # every rank gets here at the same call, as new_group needs
        _HOST_GROUP = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return bool(value.item())


def check_equal_local_batches(local_rows: int, device: torch.device) -> None:
    """All ranks must hold the same number of rows: the global column index of local row i
    on rank r is ``r * local_rows + i``, and the all-gather needs equal shapes."""
    if not is_distributed():
        return
    sizes = all_gather_no_grad(torch.tensor([local_rows], device=device))
    if not bool((sizes == local_rows).all()):
        raise RuntimeError(f"local batch sizes differ across ranks: {sizes.tolist()}")


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (a picklable object)."""
    if not is_distributed():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def sum_counts(counts: dict[str, int]) -> dict[str, int]:
    """Per-key sums of every rank's ``counts`` (keys missing on a rank count 0)."""
    total: dict[str, int] = {}
    for rank_counts in gather_objects(dict(counts)):
        for key, count in rank_counts.items():
            total[key] = total.get(key, 0) + count
    return total


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor; the input is left as it is)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def mean_over_ranks(value: torch.Tensor) -> float:
    """The mean over ranks of a scalar tensor, reduced in float64 (read back to the host: log steps only)."""
    return float(sum_over_ranks(value.detach().double().reshape(1))) / get_world_size()


def shard_bounds(total: int, rank: int | None = None) -> tuple[int, int]:
    """Rank ``rank``'s (default: this rank's) contiguous slice [start, stop) of ``total`` items;
    slice sizes differ by at most 1."""
    world = get_world_size()
    rank = get_rank() if rank is None else rank
    return rank * total // world, (rank + 1) * total // world


def gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's rows of a [total, D] matrix split by :func:`shard_bounds`, concatenated in rank
    order on every rank (all_gather needs equal shapes: pad, gather, trim)."""
    if not is_distributed():
        return local
    world = get_world_size()
    sizes = [stop - start for start, stop in (shard_bounds(total, rank) for rank in range(world))]
    # A rank with an empty shard does not know the feature dim: agree on it first.
    dim = torch.tensor([local.shape[1]], device=local.device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    padded = torch.zeros(max(sizes), int(dim), device=local.device)
    if len(local):
        padded[:len(local)] = local
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded)
    return torch.cat([shard[:size] for shard, size in zip(shards, sizes, strict=True)])
