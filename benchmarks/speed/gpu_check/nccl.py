"""The GPU check's nccl part: torchrun ranks (NCCL, or gloo in a CPU rehearsal) train a toy two-tower model
with clipdro's TempNets and tempnet (DRO) loss under DistributedDataParallel, each batch through the trainer's
own step (clipdro.train.clip_step); every rank's parameters must then be identical, and rank 0's, with the
DRO tables put together from the rows each rank owns (clipdro.state), must match a single-process float64
recomputation on the CPU within NCCL_TOLERANCES.

torchrun starts the worker as ``python -m benchmarks.speed.gpu_check --nccl-worker FILE --backend B
--nccl-steps N`` (main.py hands those arguments to :func:`worker_main`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.speed.gpu_check.startup import REPO_ROOT, Context, part_result

REHEARSAL_NCCL_RANKS = 2  # gloo processes standing in for the GPUs

# nccl part: rows per rank, toy model sizes, optimiser, loss settings (rho < log(32 - 1) = 3.43).
NCCL_ROWS_PER_RANK = 32
NCCL_INPUT_DIM, NCCL_EMBED_DIM, NCCL_PROTOTYPES = 48, 32, 16
NCCL_LR, NCCL_MOMENTUM, NCCL_RHO, NCCL_GAMMA = 0.05, 0.9, 2.0, 0.8
# |a - b| <= atol + rtol * |b| elementwise, GPU float32 (TF32 off) against CPU float64. Across ranks: exact.
NCCL_TOLERANCES = {"params": (1e-5, 1e-4), "s": (1e-6, 1e-3), "b": (1e-5, 1e-4), "loss": (1e-5, 1e-4)}


def build_toy_model():
    """Two linear towers (normalised outputs) and clipdro's two CLIPTempNets (dropout 0), seeded by the caller;
    its forward returns clipdro.models.ModelOutput, as CLIPWithTempNets does."""
    import torch.nn.functional as F
    from torch import nn

    from clipdro.models import ModelOutput
    from clipdro.tempnet import CLIPTempNet

    class ToyCLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Linear(NCCL_INPUT_DIM, NCCL_EMBED_DIM)
            self.text = nn.Linear(NCCL_INPUT_DIM, NCCL_EMBED_DIM)
            self.image_tempnet = CLIPTempNet(NCCL_EMBED_DIM, NCCL_PROTOTYPES, dropout=0.0)
            self.text_tempnet = CLIPTempNet(NCCL_EMBED_DIM, NCCL_PROTOTYPES, dropout=0.0)

        def forward(self, image_in, text_in):
            image = F.normalize(self.image(image_in), dim=-1)
            text = F.normalize(self.text(text_in), dim=-1)
            # The output CLIPWithTempNets gives the trainer's step (logit_scale: unused by the tempnet loss).
            return ModelOutput(image, text, image.new_ones(()), self.image_tempnet(image.detach()),
                               self.text_tempnet(text.detach()))

    return ToyCLIP()


def toy_batch(step: int, global_batch: int):
    """The seeded global batch of ``step``: (image inputs, text inputs, sample ids), float64 on the CPU."""
    import torch

    num_samples = 4 * global_batch
    mix = torch.randn(NCCL_INPUT_DIM, NCCL_INPUT_DIM, generator=torch.Generator().manual_seed(999),
                      dtype=torch.float64) / NCCL_INPUT_DIM ** 0.5
    generator = torch.Generator().manual_seed(1000 + step)
    image_in = torch.randn(global_batch, NCCL_INPUT_DIM, generator=generator, dtype=torch.float64)
    text_in = image_in @ mix + 0.5 * torch.randn(global_batch, NCCL_INPUT_DIM, generator=generator,
                                                 dtype=torch.float64)
    ids = torch.randperm(num_samples, generator=generator)[:global_batch]
    return image_in, text_in, ids


def train_toy(model, parameters, loss_fn, rows: slice, steps: int, global_batch: int, device, dtype) -> list:
    """``steps`` SGD steps of the DRO loss on ``rows`` of each global batch, each batch through the trainer's
    own step (clipdro.train.clip_step, without autocast); the per-step local losses (tensors). The backward and
    the update are done here: the engine's (RunEngine._update) belongs to a whole run (run folder, GradScaler,
    process group), which offers no function to call on its own."""
    import torch

    from clipdro.train import clip_step

    optimizer = torch.optim.SGD(parameters, lr=NCCL_LR, momentum=NCCL_MOMENTUM)
    losses = []
    for step in range(steps):
        image_in, text_in, ids = toy_batch(step, global_batch)
        output = clip_step(model, loss_fn, image_in[rows].to(device, dtype), text_in[rows].to(device, dtype),
                           ids[rows].to(device), contextlib.nullcontext())
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.detach())
    return losses


def nccl_worker(out_file: Path, backend: str, steps: int) -> None:
    """One torchrun rank: train the toy model under DDP, then rank 0 saves every rank's parameters and tables."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from clipdro.distributed import all_gather_no_grad, gather_objects
    from clipdro.losses import build_contrastive_loss

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        device = torch.device("cpu")
    # Always a process group, also for world size 1 (clipdro's init_distributed makes none then).
    dist.init_process_group(backend=backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    global_batch = NCCL_ROWS_PER_RANK * world_size
    started = time.perf_counter()
    torch.manual_seed(0)
    model = build_toy_model()
    initial = {key: value.detach().clone() for key, value in model.state_dict().items()}
    model.to(device)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if backend == "nccl" else None)
    loss_fn = build_contrastive_loss("tempnet", 4 * global_batch, rho=NCCL_RHO, gamma=NCCL_GAMMA).to(device)
    rows = slice(rank * NCCL_ROWS_PER_RANK, (rank + 1) * NCCL_ROWS_PER_RANK)
    losses = train_toy(ddp, ddp.parameters(), loss_fn, rows, steps, global_batch, device, torch.float32)
    # The global loss of each step = the mean of the ranks' local means (equal local batches).
    step_losses = torch.stack(losses).double()
    dist.all_reduce(step_losses)
    step_losses /= world_size
    params = torch.cat([parameter.detach().double().flatten() for parameter in model.parameters()])
    gathered_params = all_gather_no_grad(params[None]) if world_size > 1 else params[None]
    # Each rank owns a block of every table's rows: the whole table is the blocks in rank order.
    tables = {key: torch.cat(gather_objects(value.double().cpu())) for key, value in loss_fn.state_dict().items()}
    dist.barrier()
    if rank == 0:
        torch.save({
            "backend": backend, "world_size": world_size, "steps": steps,
            "devices": [torch.cuda.get_device_name(i) for i in range(world_size)] if backend == "nccl" else ["cpu"],
            "initial_state": initial, "losses": step_losses.cpu(), "params_per_rank": gathered_params.cpu(),
            "param_names": [name for name, _ in model.named_parameters()],
            "tables": tables,
            "worker_seconds": time.perf_counter() - started,
        }, out_file)
    # DDP's reducer holds the process group: release it first, or gloo's teardown can abort the process.
    del ddp, losses
    dist.barrier()
    dist.destroy_process_group()


def toy_reference(initial_state: dict, world_size: int, steps: int) -> dict:
    """The same steps in one process on the CPU, in float64, on the whole global batch."""
    import torch

    from clipdro.losses import build_contrastive_loss

    global_batch = NCCL_ROWS_PER_RANK * world_size
    model = build_toy_model().double()
    model.load_state_dict({key: value.double() for key, value in initial_state.items()})
    loss_fn = build_contrastive_loss("tempnet", 4 * global_batch, rho=NCCL_RHO, gamma=NCCL_GAMMA,
                                     table_dtype=torch.float64)
    losses = train_toy(model, model.parameters(), loss_fn, slice(None), steps, global_batch, torch.device("cpu"),
                       torch.float64)
    return {"losses": torch.stack(losses),
            "params": torch.cat([parameter.detach().flatten() for parameter in model.parameters()]),
            "tables": {key: value.double() for key, value in loss_fn.state_dict().items()}}


def tolerance_ratio(actual, expected, atol: float, rtol: float) -> float:
    """max |a - e| / (atol + rtol |e|): <= 1 means within tolerance."""
    return float(((actual - expected).abs() / (atol + rtol * expected.abs())).max())


def compare_nccl_results(saved: dict) -> dict:
    """Cross-rank equality and agreement with :func:`toy_reference` of what :func:`nccl_worker` saved."""
    params, tables = saved["params_per_rank"], saved["tables"]
    cross_rank = {"params": float((params - params[0]).abs().max())}
    reference = toy_reference(saved["initial_state"], saved["world_size"], saved["steps"])
    agreement = {"params": tolerance_ratio(params[0], reference["params"], *NCCL_TOLERANCES["params"]),
                 "loss": tolerance_ratio(saved["losses"], reference["losses"], *NCCL_TOLERANCES["loss"])}
    max_abs = {"params": float((params[0] - reference["params"]).abs().max()),
               "loss": float((saved["losses"] - reference["losses"]).abs().max())}
    seen_equal = True
    for key, expected in reference["tables"].items():
        actual = tables[key]
        side, column = key.split(".")  # image_table.s, text_table.seen, ...
        max_abs[key] = float((actual - expected).abs().max())
        if column == "seen":
            seen_equal &= bool((actual == expected).all())
        else:
            agreement[key] = tolerance_ratio(actual, expected, *NCCL_TOLERANCES[column])
    ranks_equal = all(value == 0.0 for value in cross_rank.values())
    within = all(value <= 1.0 for value in agreement.values()) and seen_equal
    return {"ranks_identical": ranks_equal, "cross_rank_max_abs_diff": cross_rank,
            "matches_cpu_float64": within, "seen_flags_equal": seen_equal,
            "tolerance_ratio": agreement, "max_abs_diff_vs_cpu": max_abs,
            "tolerances": {key: {"atol": atol, "rtol": rtol} for key, (atol, rtol) in NCCL_TOLERANCES.items()},
            "losses": [float(value) for value in saved["losses"]],
            "reference_losses": [float(value) for value in reference["losses"]]}


def run_nccl_check(work_dir: Path, nproc: int, backend: str, steps: int, timeout: float) -> dict:
    """torchrun the worker on ``nproc`` ranks, then compare; the nccl part's result dict."""
    import torch

    work_dir.mkdir(parents=True, exist_ok=True)
    out_file = work_dir / f"{backend}-ranks.pt"
    log_file = work_dir / f"{backend}-torchrun.txt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "benchmarks.speed.gpu_check", "--nccl-worker", str(out_file), "--backend", backend,
               "--nccl-steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_file, "w") as log:
        try:
            completed = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       timeout=timeout)
            returncode = completed.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    if returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        what = f"timed out after {timeout:.0f} s" if returncode is None else f"exited {returncode}"
        return part_result("error", f"torchrun ({nproc} x {backend}) {what}", command=shlex.join(command),
                           log_tail=tail)
    saved = torch.load(out_file, weights_only=False)
    comparison = compare_nccl_results(saved)
    passed = comparison["ranks_identical"] and comparison["matches_cpu_float64"]
    worst = max(comparison["tolerance_ratio"].values())
    summary = (f"world size {saved['world_size']} ({backend}), {steps} steps: ranks "
               f"{'identical' if comparison['ranks_identical'] else 'DIFFER'}; vs CPU float64 "
               f"{'within' if comparison['matches_cpu_float64'] else 'OUTSIDE'} tolerance (worst ratio {worst:.3g})")
    if saved["world_size"] == 1:
        summary += "; one rank: NCCL group and DDP, but nothing for the loss to gather"
    rows = [f"| {key} | {comparison['cross_rank_max_abs_diff'].get(key, 0.0):.3g} | "
            f"{comparison['max_abs_diff_vs_cpu'][key]:.3g} | "
            f"{comparison['tolerance_ratio'].get(key, float('nan')):.3g} |"
            for key in comparison["max_abs_diff_vs_cpu"]]
    table = "\n".join([f"World size {saved['world_size']} on {', '.join(saved['devices'])}, {steps} steps of "
                       f"{NCCL_ROWS_PER_RANK} rows per rank; tolerance ratio = max |gpu - cpu| / (atol + rtol |cpu|), "
                       "<= 1 passes (seen flags must be equal).", "",
                       "| quantity | max diff across ranks | max abs diff vs CPU float64 | tolerance ratio |",
                       "|---|---:|---:|---:|", *rows])
    return part_result("passed" if passed else "failed", summary, world_size=saved["world_size"],
                       devices=saved["devices"], worker_seconds=round(saved["worker_seconds"], 2), **comparison,
                       table_md=table)


def nccl_part(args: argparse.Namespace, context: Context) -> dict:
    import torch

    if context.device == "cpu":  # rehearsal: the same worker and comparison over gloo
        return run_nccl_check(context.work_dir / "gloo", REHEARSAL_NCCL_RANKS, "gloo", args.nccl_steps,
                              timeout=min(240.0, context.remaining() - 5))
    return run_nccl_check(context.work_dir / "nccl", torch.cuda.device_count(), "nccl", args.nccl_steps,
                          timeout=min(240.0, context.remaining() - 5))


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check --nccl-worker")
    parser.add_argument("--nccl-worker", type=Path, required=True)
    parser.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    parser.add_argument("--nccl-steps", type=int, default=6)
    args = parser.parse_args(argv)
    nccl_worker(args.nccl_worker, args.backend, args.nccl_steps)
    return 0

