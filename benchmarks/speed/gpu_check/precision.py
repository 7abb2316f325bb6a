"""The GPU check's precision part: one model, its initial weights and the same seeded batches trained in
fp32 (TF32 off) and in amp_bf16, for the tempnet and the clip loss, every batch through the CLIP trainer's
own step (clipdro.train.clip_step); the per-step losses and mean temperatures must agree within
``--precision-rtol``."""

from __future__ import annotations

import argparse

from benchmarks.speed.gpu_check.startup import Context, part_result

CAPTION_WORDS = ("red", "blue", "small", "large", "cat", "dog", "tree", "house", "star", "car", "moon", "boat",
                 "drawing", "photo", "of", "a", "the", "with", "on", "near")


def precision_agreement(model_name: str, device, batch: int, steps: int, precisions=("fp32", "amp_bf16"),
                        losses=("tempnet", "clip"), lr: float = 1e-5) -> dict:
    """Train copies of one model on the same seeded batches in each precision; per-step losses and mean taus.

    TempNet dropout is 0 and TF32 is off, so the runs differ only by the autocast precision. Each step is
    the trainer's own (clipdro.train.clip_step: the forward under autocast, the loss's temperatures, the
    loss outside autocast)."""
    import torch

    device = torch.device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    base, batches = seeded_model_and_batches(model_name, batch, steps)
    results: dict[str, dict[str, dict]] = {}
    for loss_name in losses:
        for precision in precisions:
            results.setdefault(loss_name, {})[precision] = train_in_precision(base, batches, loss_name, precision,
                                                                              device, lr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"model": model_name, "batch": batch, "steps": steps, "precisions": list(precisions), "lr": lr,
            "runs": results, "comparison": compare_precisions(results, precisions[0], precisions[-1])}


def seeded_model_and_batches(model_name: str, batch: int, steps: int):
    """(CLIPWithTempNets with dropout-0 TempNets on the CPU, [(images, tokens)] * steps), seeded."""
    import random

    import torch

    from clipdro.models import CLIPWithTempNets, create_clip, embedding_dim
    from clipdro.tempnet import CLIPTempNet

    torch.manual_seed(0)
    clip, _, _, tokenizer = create_clip(model_name)
    dim = embedding_dim(model_name)
    base = CLIPWithTempNets(clip, CLIPTempNet(dim, dropout=0.0), CLIPTempNet(dim, dropout=0.0))
    image_size = clip.visual.image_size
    image_size = tuple(image_size) if isinstance(image_size, list | tuple) else (image_size, image_size)
    words = random.Random(0)
    batches = []
    for step in range(steps):
        generator = torch.Generator().manual_seed(500 + step)
        images = torch.randn(batch, 3, *image_size, generator=generator)
        captions = [" ".join(words.choice(CAPTION_WORDS) for _ in range(6)) for _ in range(batch)]
        batches.append((images, tokenizer(captions)))
    return base, batches


def train_in_precision(base, batches: list, loss_name: str, precision: str, device, lr: float) -> dict:
    """A copy of ``base`` trained on ``batches`` with ``loss_name`` under ``precision``: per-step losses and
    mean image temperatures. The backward and the update are the check's own (plain AdamW, no GradScaler,
    no clipping): the engine's (RunEngine._update) belongs to a whole run (run folder, GradScaler, process
    group) and offers no function to call on its own."""
    import copy

    import torch

    from benchmarks.speed.train_throughput import default_rho
    from clipdro.losses import build_contrastive_loss
    from clipdro.runtime import autocast_context
    from clipdro.train import clip_step

    batch = batches[0][0].shape[0]
    options = {"rho": default_rho(batch)} if loss_name == "tempnet" else {}
    model = copy.deepcopy(base).to(device)
    loss_fn = build_contrastive_loss(loss_name, batch, **options).to(device)
    loss_fn.prepare_model(model.clip)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.02)
    sample_ids = torch.arange(batch, device=device)
    step_losses, image_taus = [], []
    for images, tokens in batches:
        result = clip_step(model, loss_fn, images.to(device), tokens.to(device), sample_ids,
                           autocast_context(precision, device))
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        loss_fn.after_optimizer_step(model.clip)
        step_losses.append(float(result.loss.detach()))
        image_taus.append(float(result.image_tau.float().mean()))
    return {"loss": step_losses, "image_tau_mean": image_taus}


def compare_precisions(results: dict[str, dict[str, dict]], reference: str, other: str) -> dict:
    """Per loss: the relative loss difference of ``other`` against ``reference`` at each step, its first and
    largest value, and the relative difference of the mean image temperatures."""
    import math

    comparison = {}
    for loss_name, runs in results.items():
        pairs = list(zip(runs[reference]["loss"], runs[other]["loss"], strict=True))
        relative = [abs(b - a) / abs(a) if a else math.inf for a, b in pairs]
        tau_pairs = zip(runs[reference]["image_tau_mean"], runs[other]["image_tau_mean"], strict=True)
        comparison[loss_name] = {"loss_relative_diff": relative,
                                 "first_step_relative_diff": relative[0], "max_relative_diff": max(relative),
                                 "image_tau_mean_relative_diff": [abs(b - a) / abs(a) for a, b in tau_pairs]}
    return comparison


def precision_part(args: argparse.Namespace, context: Context) -> dict:
    device = "cuda:0" if context.device == "cuda" else "cpu"
    result = precision_agreement(args.model, device, args.precision_batch, args.precision_steps)
    comparison = result["comparison"]
    passed = all(values["max_relative_diff"] <= args.precision_rtol for values in comparison.values())
    summary = "; ".join(f"{loss} loss: bf16 vs fp32 {values['first_step_relative_diff']:.2e} at step 1, "
                        f"max {values['max_relative_diff']:.2e} over {result['steps']} steps"
                        for loss, values in comparison.items()) + f" (accepted <= {args.precision_rtol:g})"
    lines = [f"{args.model}, batch {args.precision_batch}, AdamW lr {result['lr']:g}, random images and captions, "
             "TempNet dropout 0, TF32 off.", "",
             "| loss | step | fp32 loss | amp_bf16 loss | relative diff | fp32 mean image tau | bf16 mean image tau |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for loss_name, runs in result["runs"].items():
        for step, (a, b) in enumerate(zip(runs["fp32"]["loss"], runs["amp_bf16"]["loss"], strict=True)):
            lines.append(f"| {loss_name} | {step + 1} | {a:.6f} | {b:.6f} | "
                         f"{comparison[loss_name]['loss_relative_diff'][step]:.2e} | "
                         f"{runs['fp32']['image_tau_mean'][step]:.5f} | "
                         f"{runs['amp_bf16']['image_tau_mean'][step]:.5f} |")
    return part_result("passed" if passed else "failed", summary, rtol=args.precision_rtol, **result,
                       table_md="\n".join(lines))
