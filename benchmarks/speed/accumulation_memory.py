"""Peak CPU memory of one training step at optim.accum_steps = K (docs/training.md, "Gradient accumulation").

    python -m benchmarks.speed.accumulation_memory --output runs/accumulation_memory.json
    python -m benchmarks.speed.accumulation_memory --model clipdro-tiny-vit --batch 64 --accum 1 4 16

Each K runs in a fresh child process (so no allocator state carries over) that builds the CLIP trainer's
model, TempNets, tempnet loss and optimizers (clipdro.train's own set-up functions) and takes steps on a
fixed synthetic batch through the trainer's step (clipdro.train.clip_step_output: the whole batch at
K = 1, accumulated_clip_step above), the backward as the engine calls it, and both optimizers:

* a warm-up step first, so gradients' and Adam's state are allocated before the measurement;
* then the kernel's peak resident set size (VmHWM) is reset (``echo 5 > /proc/self/clear_refs``,
  Linux >= 4.0), VmRSS is read, one step is taken, and VmHWM is read again. ``step_peak_mib`` =
  VmHWM - VmRSS before the step: the memory the step needed above what the process already held
  (activations saved for backward, the step's gradient buffers, temporaries).
* The children run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every allocation of
  64 KiB or more (all activation tensors) with its own mapping and unmaps it when torch frees it, so
  resident memory follows live tensors instead of staying at glibc's retained heap (with the default,
  dynamic threshold, freed warm-up memory would be reused unseen and the figure would shrink).

The figures are resident memory of the whole process: they include the parameter gradients
(set to None after each step, so reallocated by the measured one; the same at every K) and are
only as quiet as the machine: other processes do not add to this process's RSS, but timings are
reported as well and those do depend on the load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the children run `-m benchmarks...` from here

def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(model_name: str, batch: int, accum_steps: int, seed: int) -> dict:
    """In this process: a warm-up step, then the measured one (see the module docstring)."""
    import torch

    from clipdro.config import load_config
    from clipdro.losses import build_loss
    from clipdro.train import build_model, build_optimizers, clip_step_output
    from clipdro.train_config import TrainConfig

    config = load_config(TrainConfig, None, [
        "data.sources=[{shards: unused}]", f"data.batch_size={batch}", f"optim.accum_steps={accum_steps}",
        f"model.name={model_name}", "loss.name=tempnet", "loss.rho=1.0", f"run.seed={seed}"])
    torch.manual_seed(seed)
    model, *_ = build_model(config, True, torch.device("cpu"))
    loss_fn = build_loss(config, num_samples=batch)
    optimizers = [optimizer for optimizer in build_optimizers(model, config, fused=True) if optimizer is not None]
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    tokens = torch.randint(1, 1000, (batch, model.clip.context_length), generator=generator)
    step_batch = (images, tokens, torch.arange(batch))
    model.train()

    def step() -> float:
        start = time.perf_counter()
        output = clip_step_output(model, model, loss_fn, step_batch, contextlib.nullcontext, accum_steps)  # fp32
        if output.backward is None:
            output.objective.backward()
        else:
            output.backward(lambda loss: loss)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    warmup_seconds = step()
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    seconds = step()
    peak = status_kib("VmHWM")
    return {"accum_steps": accum_steps, "micro_batch": batch // accum_steps, "rss_before_mib": before / 1024,
            "step_peak_mib": (peak - before) / 1024, "process_peak_mib": peak / 1024,
            "warmup_step_s": warmup_seconds, "step_s": seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipdro-small-vit")
    parser.add_argument("--batch", type=int, default=128, help="the per-rank batch (data.batch_size)")
    parser.add_argument("--accum", type=int, nargs="+", default=[1, 4, 16], help="the values of optim.accum_steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # measure one K, print JSON
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.model, args.batch, args.child, args.seed)))
        return {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    results = []
    for accum_steps in args.accum:
        completed = subprocess.run([sys.executable, "-m", "benchmarks.speed.accumulation_memory", "--model", args.model,
                                    "--batch", str(args.batch), "--seed", str(args.seed), "--child", str(accum_steps)],
                                   env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        row = results[-1]
        print(f"K={accum_steps:<3} micro-batch {row['micro_batch']:<4} step peak {row['step_peak_mib']:8.1f} MiB "
              f"(process peak {row['process_peak_mib']:8.1f} MiB)  step {row['step_s']:.2f} s", flush=True)
    report = {"model": args.model, "batch": args.batch, "threads": args.threads, "load_average": os.getloadavg(),
              "results": results}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
