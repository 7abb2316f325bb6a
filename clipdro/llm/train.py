"""`clipdro llm train`: TempNet (and optionally the LM) under the token-level DRO loss, top to bottom.

Set-up (start-up checks, processes, data, LM, TempNet, optimizer, resume), then the step loop
(batch -> LM logits -> TempNet tau on the detached logits -> DRO loss -> backward -> step ->
logging / evaluation / checkpoints). Runs on one CPU, under torchrun and under SLURM's srun.

Invariants worth knowing before changing anything here:

* TempNet only sees detached logits, so one backward gives the LM the gradient through the
  logits (softmax(z / tau) - onehot(y)) and TempNet the gradient through tau (rho - KL).
* frozen mode: the LM runs in eval mode under no_grad and only TempNet is optimised (and
  wrapped in DDP). joint mode: both train; TempNet is its own AdamW param group with its own
  constant lr, the LM follows warm-up + cosine (clipdro.train.model_lr).
* The loss is a mean over the *global* batch's non-ignored tokens. Ranks can hold different
  token counts (padding in the last packed sequence), so each rank scales its local mean by
  local_count * W / global_count before DDP averages gradients over the W ranks: the update then
  equals the single-process update on the same global batch.
* The trained LM is checkpointed only in joint mode; a frozen LM is rebuilt from the config.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from clipdro.checkpoint import load_checkpoint, resolve_checkpoint, save_run_checkpoint, set_rng_state
from clipdro.config import load_config, save_config, to_dict
from clipdro.distributed import all_gather_no_grad, any_rank, init_distributed, is_distributed
from clipdro.errors import UsageError
from clipdro.llm.config import LLMTrainConfig
from clipdro.llm.data import IGNORE_INDEX, GlobalBatches, load_datasets
from clipdro.llm.evaluation import evaluate_heldout
from clipdro.llm.model import (
    CHECKPOINT_FORMAT,
    EXPORTED_MODEL_DIR,
    TempNetShape,
    build_causal_lm,
    lm_logits,
    load_model_tokenizer,
    max_positions,
    predict_tau,
    resolve_lm_config,
)
from clipdro.losses import check_rho, dro_token_loss
from clipdro.run_logging import RunLogger, tau_summary
from clipdro.train import (
    NonFiniteGuard,
    NonFiniteLossError,
    Preemption,
    autocast_context,
    model_lr,
    resolve_device,
    run_folder,
)

log = logging.getLogger("clipdro.llm.train")

LOG_LINE_KEYS = ["epoch", "loss", "samples_per_s", "data_s_per_step", "compute_s_per_step", "lr", "tempnet_lr",
                 "tau_mean", "tau_min", "tau_max", "nonfinite_steps"]


def build_optimizer(lm: torch.nn.Module, tempnet: torch.nn.Module, config: LLMTrainConfig) -> torch.optim.AdamW:
    """One AdamW; param groups are named ("lm", "tempnet") so the schedule can address them.
    The LM groups exist in joint mode only; no weight decay on 1-D LM parameters (biases, norms)."""
    optim = config.optim
    groups = []
    if config.mode == "joint":
        decay = [p for p in lm.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in lm.parameters() if p.requires_grad and p.ndim < 2]
        groups += [{"name": "lm", "params": decay, "weight_decay": optim.weight_decay},
                   {"name": "lm", "params": no_decay, "weight_decay": 0.0}]
    groups.append({"name": "tempnet", "params": list(tempnet.parameters()), "lr": config.tempnet.lr,
                   "weight_decay": config.tempnet.weight_decay})
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)


def set_group_lrs(optimizer: torch.optim.Optimizer, lm_lr: float, tempnet_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = tempnet_lr if group["name"] == "tempnet" else lm_lr


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value)
    return value


@dataclass
class StepResult:
    loss: float  # global-batch token mean (identical on every rank)
    finite: bool
    tau: torch.Tensor  # [b, L] this rank's per-token tau (detached)


def train(config: LLMTrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) one LLM TempNet run; returns the last held-out metrics ({} without held-out data)."""
    # --- start-up checks, before any process group, data or weights ------------------------
    tokenizer = load_model_tokenizer(config.model)
    lm_config = resolve_lm_config(config.model, tokenizer)
    vocab_size = lm_config.vocab_size
    check_rho(config.loss.rho, vocab_size, what="token DRO loss (loss.rho vs the LM's vocabulary size V)")
    positions = max_positions(lm_config)
    if positions is not None and config.data.seq_len > positions:
        raise UsageError(f"data.seq_len={config.data.seq_len} exceeds the LM's {positions} positions")

    # --- processes, data (input errors surface before the run folder exists) ----------------
    context = init_distributed()
    device = resolve_device(config.run.device, context)
    (train_inputs, train_targets), heldout = load_datasets(config.data, tokenizer)
    batches = GlobalBatches(train_inputs, train_targets, config.data.batch_size, context.rank,
                            context.world_size, config.data.seed)
    steps_per_epoch = len(batches)
    total_steps = config.steps or steps_per_epoch * config.run.epochs

    # --- run folder and logs --------------------------------------------------------------------
    run_dir = run_folder(config)
    logger = RunLogger(run_dir, enabled=context.is_main, line_keys=LOG_LINE_KEYS)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    log.info("run folder %s, %d process(es), device %s, precision %s, mode %s, V = %d (log V = %.3f, rho = %g)",
             run_dir, context.world_size, device, config.run.precision, config.mode, vocab_size,
             math.log(vocab_size), config.loss.rho)
    log.info("%d training sequences of %d tokens, %s held-out; %d steps (%.2f epochs of %d), global batch %d",
             train_inputs.shape[0], config.data.seq_len, heldout[0].shape[0] if heldout else "none", total_steps,
             total_steps / steps_per_epoch, steps_per_epoch, batches.global_batch)

    # --- LM and TempNet: identical initial weights on every rank (same seed) ---------------
    torch.manual_seed(config.run.seed)
    lm = build_causal_lm(config.model, lm_config).to(device)
    tempnet_shape = TempNetShape(vocab_size, config.tempnet.hidden, config.tempnet.tau_min, config.tempnet.tau_max,
                                 config.tempnet.dropout)
    tempnet = tempnet_shape.build().to(device)
    if config.mode == "frozen":
        lm.requires_grad_(False)
    optimizer = build_optimizer(lm, tempnet, config)
    scaler = torch.amp.GradScaler(device.type, enabled=config.run.precision == "amp")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]

    # --- resume -------------------------------------------------------------------------------
    start_step, nonfinite = 0, NonFiniteGuard(config.run.max_nonfinite_steps)
    if resume is not None:
        path = resolve_checkpoint(resume, run_dir)
        state = load_checkpoint(path, map_location=device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UsageError(f"{path}: not a clipdro llm checkpoint")
        tempnet.load_state_dict(state["tempnet"])
        if state["lm"] is not None:
            lm.load_state_dict(state["lm"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["data"])
        start_step, nonfinite.total = state["step"], state["nonfinite_steps"]
        set_rng_state(state["rng"][context.rank])
        log.info("resumed from %s at step %d", path, start_step)
    else:
        torch.manual_seed(config.run.seed + context.rank)  # dropout differs per rank

    ddp_options = {"device_ids": [device.index] if device.type == "cuda" else None}
    train_lm = config.mode == "joint"
    ddp_lm = DistributedDataParallel(lm, **ddp_options) if context.enabled and train_lm else lm
    ddp_tempnet = DistributedDataParallel(tempnet, **ddp_options) if context.enabled else tempnet

    def checkpoint(step: int) -> None:
        state = {
            "format": CHECKPOINT_FORMAT,
            "mode": config.mode,
            "tempnet": tempnet.state_dict(),
            "tempnet_shape": asdict(tempnet_shape),
            "lm": lm.state_dict() if train_lm else None,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "data": batches.state_dict(),
        }
        path = save_run_checkpoint(state, run_dir=run_dir, step=step, keep_last=config.run.keep_last,
                                   config=to_dict(config), nonfinite_steps=nonfinite.total)
        if path is not None:
            log.info("checkpoint %s", path)

    def evaluate(step: int) -> dict[str, float]:
        if heldout is None:
            return {}
        metrics = evaluate_heldout(lm, tempnet, *heldout, rho=config.loss.rho, batch_size=config.eval.batch_size,
                                   precision=config.run.precision, max_sequences=config.eval.max_sequences)
        logger.log_eval(step, metrics)
        return metrics

    def one_step(inputs: torch.Tensor, targets: torch.Tensor) -> StepResult:
        with autocast_context(config.run.precision, device):
            if train_lm:
                logits = lm_logits(ddp_lm, inputs)
            else:
                with torch.no_grad():
                    logits = lm_logits(lm, inputs)
            tau = predict_tau(ddp_tempnet, logits)
        local_mean = dro_token_loss(logits, targets, tau, config.loss.rho, IGNORE_INDEX)
        local_tokens = (targets != IGNORE_INDEX).sum().to(torch.float64)
        global_tokens = sum_over_ranks(local_tokens).clamp_min(1.0)
        global_mean = float(sum_over_ranks(local_mean.detach().double() * local_tokens) / global_tokens)
        # Every rank must take the same branch, or DDP's backward would hang.
        if any_rank(not math.isfinite(global_mean), device):
            optimizer.zero_grad(set_to_none=True)
            return StepResult(math.nan, False, tau.detach())
        objective = local_mean * (local_tokens * context.world_size / global_tokens).to(local_mean.dtype)
        scaler.scale(objective).backward()
        if config.optim.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return StepResult(global_mean, True, tau.detach())

    # --- the loop ----------------------------------------------------------------------------
    step = start_step
    stop_after = total_steps if config.run.stop_after is None else min(total_steps, config.run.stop_after)
    metrics = evaluate(step) if start_step == 0 else {}
    lm.train(train_lm)  # a frozen LM stays in eval mode: no dropout in the logits TempNet learns from
    tempnet.train()
    iterator = iter(batches)
    logger.start_window(step)
    try:
        with Preemption() as preemption:
            while step < stop_after:
                data_start = time.perf_counter()
                try:
                    inputs, targets = next(iterator)
                except StopIteration:  # end of an epoch: the next iterator starts the following one
                    iterator = iter(batches)
                    continue
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                compute_start = time.perf_counter()
                set_group_lrs(optimizer, model_lr(step, total_steps, config), config.tempnet.lr)
                result = one_step(inputs, targets)
                step += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                logger.record_step(data_seconds=compute_start - data_start,
                                   compute_seconds=time.perf_counter() - compute_start, samples=batches.global_batch)

                nonfinite.record(result.finite, step)

                if step % config.run.log_every == 0 or step == stop_after:
                    valid = all_gather_no_grad(targets.contiguous()) != IGNORE_INDEX
                    tau = all_gather_no_grad(result.tau.contiguous())[valid]
                    logger.log_step(step, total_steps, {
                        "epoch": step / steps_per_epoch,
                        "loss": result.loss,
                        "lr": optimizer.param_groups[0]["lr"] if train_lm else None,
                        "tempnet_lr": config.tempnet.lr,
                        **tau_summary("tau", tau),
                        "nonfinite_steps": nonfinite.total,
                    }, world_size=context.world_size)
                if config.eval.every_steps and step % config.eval.every_steps == 0 and step < stop_after:
                    metrics = evaluate(step)

                # No periodic checkpoint inside a non-finite streak: the last one stays the last good one.
                if config.run.checkpoint_every and step % config.run.checkpoint_every == 0 and result.finite:
                    checkpoint(step)
                if any_rank(preemption.requested, device):
                    log.warning("SIGTERM received: checkpoint at step %d and exit", step)
                    checkpoint(step)
                    return metrics
        metrics = evaluate(step)
        checkpoint(step)
        if train_lm and context.is_main and step == total_steps:
            export_dir = run_dir / EXPORTED_MODEL_DIR
            lm.save_pretrained(str(export_dir))
            tokenizer.save(export_dir)
            log.info("trained LM and tokenizer exported to %s (usable as model.name_or_path)", export_dir)
        return metrics
    finally:
        logger.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdro llm train",
                                     description="Train an LLM TempNet (frozen LM) or LM + TempNet (joint).")
    parser.add_argument("--config", default=None, help="YAML config (see configs/llm_*.yaml)")
    parser.add_argument("--resume", default=None,
                        help="'latest' (this run's newest checkpoint), a run folder or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.rho=4.0 mode=joint")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config(LLMTrainConfig, args.config, args.overrides)
    try:
        train(config, resume=args.resume)
    except NonFiniteLossError as error:
        log.error("%s", error)
        return 1
    return 0
