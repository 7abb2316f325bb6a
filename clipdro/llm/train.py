"""`clipdro llm train`: TempNet (and optionally the LM) under the token-level DRO loss, or the
plain cross-entropy LM it is compared with.

:func:`train` reads top to bottom: start-up checks, processes and run folder
(:class:`~clipdro.engine.RunEngine`), data, LM, TempNet, optimizer, then the step function
(batch -> LM logits -> TempNet tau on the detached logits -> DRO loss; plain mode: batch -> LM
logits -> cross-entropy), handed to the engine that owns the loop, checkpoints, evaluation and
preemption. Runs on one CPU, under torchrun and under SLURM's srun.

Invariants worth knowing before changing anything here:

* TempNet only sees detached logits, so one backward gives the LM the gradient through the
  logits (softmax(z / tau) - onehot(y)) and TempNet the gradient through tau (rho - KL).
* frozen mode: the LM runs in eval mode under no_grad and only TempNet is optimised (and
  wrapped in DDP). joint mode: both train; TempNet is its own AdamW param group with its own
  constant lr, the LM follows warm-up + cosine (clipdro.engine.warmup_cosine_lr). plain mode:
  the LM alone under mean cross-entropy (tau = 1), everything else as in joint mode: the
  baseline a joint run is compared with (same data order, initial LM weights and schedule).
* The loss is a mean over the *global* batch's non-ignored tokens. Ranks can hold different
  token counts (padding in the last packed sequence), so each rank scales its local mean by
  local_count * W / global_count before DDP averages gradients over the W ranks: the update then
  equals the single-process update on the same global batch.
* The trained LM is checkpointed in joint and plain mode; a frozen LM is rebuilt from the config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from clipdro.distributed import all_gather_no_grad, sum_over_ranks
from clipdro.engine import RunEngine, StepOutput, TrainingJob, training_command, warmup_cosine_lr
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
from clipdro.run_logging import tau_summary

log = logging.getLogger("clipdro.llm.train")

LOG_LINE_KEYS = ["epoch", "loss", "samples_per_s", "data_s_per_step", "compute_s_per_step", "lr", "tempnet_lr",
                 "tau_mean", "tau_min", "tau_max", "nonfinite_steps"]


def train(config: LLMTrainConfig, resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) one LLM TempNet run; returns the last held-out metrics ({} without held-out data)."""
    tokenizer, lm_config = check_lm(config)  # before any process group, data or weights
    vocab_size = lm_config.vocab_size

    # --- processes, data (input errors surface before the run folder exists) ----------------
    engine = RunEngine(config.run, config, CHECKPOINT_FORMAT, LOG_LINE_KEYS, resume=resume, overwrite=overwrite,
                       resumable_keys=("eval.",))  # evaluation changes nothing that is trained
    context, device = engine.context, engine.device
    train_data, heldout = load_datasets(config.data, tokenizer)
    batches = GlobalBatches(train_data.inputs, train_data.targets, config.data.batch_size, context.rank,
                            context.world_size, config.data.seed)
    steps_per_epoch = len(batches)
    total_steps = config.steps or steps_per_epoch * config.run.epochs

    # --- LM and TempNet: identical initial weights on every rank (same seed) ---------------
    # The LM is built first, so a plain and a joint run of one seed start from the same LM weights.
    torch.manual_seed(config.run.seed)
    lm = build_causal_lm(config.model, lm_config).to(device)
    tempnet_shape = TempNetShape(vocab_size, config.tempnet.hidden, config.tempnet.tau_min, config.tempnet.tau_max,
                                 config.tempnet.dropout)
    tempnet = tempnet_shape.build().to(device) if config.mode != "plain" else None
    train_lm = config.mode in ("joint", "plain")
    if not train_lm:
        lm.requires_grad_(False)
    optimizer = build_optimizer(lm, tempnet, config, engine.fused_optimizers)
    ddp_lm = engine.wrap(lm) if train_lm else lm
    ddp_tempnet = engine.wrap(tempnet) if tempnet is not None else None

    def step(index: int, batch: tuple[torch.Tensor, ...]) -> StepOutput:
        inputs, targets = batch
        set_group_lrs(optimizer, warmup_cosine_lr(index, total_steps, config.optim), config.tempnet.lr)
        with engine.autocast():
            if train_lm:
                logits = lm_logits(ddp_lm, inputs)
            else:
                with torch.no_grad():
                    logits = lm_logits(lm, inputs)
            tau = predict_tau(ddp_tempnet, logits) if tempnet is not None else None
        if tau is None:  # plain mode: mean cross-entropy in float32, as the DRO loss computes it
            local_mean = plain_token_loss(logits, targets)
        else:
            local_mean = dro_token_loss(logits, targets, tau, config.loss.rho, IGNORE_INDEX)
        objective, global_mean = token_weighted(local_mean, targets, context.world_size)
        return StepOutput(objective=objective, loss=global_mean,
                          details=(tau.detach() if tau is not None else None, targets))

    def log_values(output: StepOutput) -> dict[str, Any]:
        tau, targets = output.details
        values = {"loss": float(output.loss), "lr": optimizer.param_groups[0]["lr"] if train_lm else None}
        if tau is not None:
            valid = all_gather_no_grad(targets.contiguous()) != IGNORE_INDEX
            values |= {"tempnet_lr": config.tempnet.lr,
                       **tau_summary("tau", all_gather_no_grad(tau.contiguous())[valid])}
        return values

    def evaluate() -> dict[str, float]:
        return evaluate_heldout(lm, tempnet, heldout, rho=config.loss.rho, batch_size=config.eval.batch_size,
                                precision=config.run.precision, max_sequences=config.eval.max_sequences)

    lm.train(train_lm)  # a frozen LM stays in eval mode: no dropout in the logits TempNet learns from
    if tempnet is not None:
        tempnet.train()
    job = TrainingJob(
        parts={"tempnet": tempnet, "lm": lm if train_lm else None, "optimizer": optimizer, "data": batches},
        metadata={"mode": config.mode, "tempnet_shape": asdict(tempnet_shape) if tempnet is not None else None},
        optimizers=[optimizer], batches=batches, total_steps=total_steps, samples_per_step=batches.global_batch,
        step=step, log_values=log_values, grad_clip_norm=config.optim.grad_clip_norm,
        evaluate=evaluate if heldout is not None else None, evaluate_every=config.eval.every_steps,
        evaluate_at_start=True,
        description=run_description(config, vocab_size, train_data.inputs.shape[0],
                                    heldout[0].shape[0] if heldout else 0, total_steps, batches))
    result = engine.fit(job)
    if train_lm and result.completed and context.is_main:
        export_dir = engine.run_dir / EXPORTED_MODEL_DIR
        lm.save_pretrained(str(export_dir))
        tokenizer.save(export_dir)
        log.info("trained LM and tokenizer exported to %s (usable as model.name_or_path)", export_dir)
    return result.metrics


def token_weighted(local_mean: torch.Tensor, targets: torch.Tensor,
                   world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's objective, the global mean loss) for a rank's mean token loss ``local_mean``: the
    objective is weighted by the rank's share of the global batch's scored tokens, so that DDP's gradient
    average equals the gradient of the mean over every scored token of the global batch."""
    local_tokens = (targets != IGNORE_INDEX).sum().to(torch.float64)
    global_tokens = sum_over_ranks(local_tokens).clamp_min(1.0)
    global_mean = sum_over_ranks(local_mean.detach().double() * local_tokens) / global_tokens  # stays on the device
    return local_mean * (local_tokens * world_size / global_tokens).to(local_mean.dtype), global_mean


def run_description(config: LLMTrainConfig, vocab_size: int, train_sequences: int, heldout_sequences: int,
                    total_steps: int, batches: GlobalBatches) -> list[str]:
    """The lines the run's log opens with: mode, vocabulary, rho, data and schedule."""
    return [f"mode {config.mode}, V = {vocab_size} (log V = {math.log(vocab_size):.3f}"
            + (")" if config.mode == "plain" else f", rho = {config.loss.rho:g})"),
            f"{train_sequences} training sequences of {config.data.seq_len} tokens, "
            f"{heldout_sequences or 'no'} held-out; {total_steps} steps "
            f"({total_steps / len(batches):.2f} epochs of {len(batches)}), global batch {batches.global_batch}"]


def check_lm(config: LLMTrainConfig):
    """(tokenizer, transformers config) of the LM, after the start-up checks that need no weights:
    rho < log V for the LM's output vocabulary V (plain mode has no rho), and data.seq_len within its
    positions."""
    tokenizer = load_model_tokenizer(config.model)
    lm_config = resolve_lm_config(config.model, tokenizer)
    if config.mode != "plain":
        check_rho(config.loss.rho, lm_config.vocab_size,
                  what="token DRO loss (loss.rho vs the LM's vocabulary size V)")
    positions = max_positions(lm_config)
    if positions is not None and config.data.seq_len > positions:
        raise UsageError(f"data.seq_len={config.data.seq_len} exceeds the LM's {positions} positions")
    return tokenizer, lm_config


def plain_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the non-ignored tokens, in float32; 0 (not NaN) for an all-padding batch."""
    cross_entropy = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), reduction="sum",
                                    ignore_index=IGNORE_INDEX)
    return cross_entropy / (targets != IGNORE_INDEX).sum().clamp_min(1)


def build_optimizer(lm: torch.nn.Module, tempnet: torch.nn.Module | None,
                    config: LLMTrainConfig, fused: bool) -> torch.optim.AdamW:
    """One AdamW (torch's fused one when ``fused``: RunEngine.fused_optimizers); param groups are named
    ("lm", "tempnet") so the schedule can address them.
    The LM groups exist in joint and plain mode, the TempNet group when there is a TempNet; no
    weight decay on 1-D LM parameters (biases, norms)."""
    optim = config.optim
    groups = []
    if config.mode in ("joint", "plain"):
        decay = [p for p in lm.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in lm.parameters() if p.requires_grad and p.ndim < 2]
        groups += [{"name": "lm", "params": decay, "weight_decay": optim.weight_decay},
                   {"name": "lm", "params": no_decay, "weight_decay": 0.0}]
    if tempnet is not None:
        groups.append({"name": "tempnet", "params": list(tempnet.parameters()), "lr": config.tempnet.lr,
                       "weight_decay": config.tempnet.weight_decay})
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=fused)


def set_group_lrs(optimizer: torch.optim.Optimizer, lm_lr: float, tempnet_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = tempnet_lr if group["name"] == "tempnet" else lm_lr


def main(argv: list[str] | None = None) -> int:
    status, _ = training_command(
        argv, prog="clipdro llm train",
        description="Train an LLM TempNet (frozen LM), LM + TempNet (joint) or the LM alone (plain).",
        config_type=LLMTrainConfig, train=train, config_help="YAML config (see configs/llm_*.yaml)",
        overrides_help="dotted overrides, e.g. loss.rho=4.0 mode=joint")
    return status
