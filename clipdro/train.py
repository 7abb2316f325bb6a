"""`clipdro train`: the CLIP training loop, readable top to bottom.

One function, :func:`train`, does the whole run: set up (process group, model, TempNets,
data, loss, optimizers, resume), then the step loop (data -> forward -> loss -> backward ->
both optimizers -> logging / checkpoints / evaluation). The same entry runs on one CPU,
under ``torchrun --nproc_per_node ...`` and under SLURM's ``srun``.

Invariants worth knowing before changing anything here:

* The loss is computed *locally* (rows: this rank's anchors, columns: every rank's
  candidates, gathered with autograd). DDP then averages parameter gradients over ranks,
  which makes the update equal to the single-process update on the global batch.
* The per-sample tables inside the loss are updated during its forward and synchronised
  across ranks there; they are part of the checkpoint.
* The TempNets see detached features; one backward of the loss gives encoder and TempNet
  gradients, and each has its own optimizer and learning-rate schedule.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from clipdro.checkpoint import load_checkpoint, resolve_checkpoint, save_run_checkpoint, set_rng_state
from clipdro.config import TrainConfig, load_config, save_config, to_dict
from clipdro.data.evalset import EvalSet
from clipdro.data.pipeline import REPEATED, build_train_loader
from clipdro.distributed import (
    DistributedContext,
    all_gather_no_grad,
    any_rank,
    get_rank,
    init_distributed,
    is_distributed,
)
from clipdro.errors import UsageError
from clipdro.eval.tasks import evaluate_retrieval, evaluate_zeroshot
from clipdro.eval.zeroshot import default_template_source, load_labelled_set, resolve_classnames, resolve_templates
from clipdro.losses import DROContrastiveLoss, build_contrastive_loss
from clipdro.models import CLIPWithTempNets, create_clip, embedding_dim
from clipdro.run_logging import RunLogger, tau_summary
from clipdro.tempnet import CLIPTempNet

log = logging.getLogger("clipdro.train")

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip's trainer clamps the learnable scale to <= log(100)
LOG_LINE_KEYS = ["epoch", "loss", "samples_per_s", "samples_per_s_per_device", "data_s_per_step",
                 "compute_s_per_step", "lr", "tempnet_lr", "image_tau_mean", "image_tau_min", "image_tau_max",
                 "text_tau_mean", "text_tau_min", "text_tau_max", "nonfinite_steps", "skipped_samples"]


# ---------------------------------------------------------------------------- set-up helpers


def resolve_device(name: str, context: DistributedContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{context.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name} requested but CUDA is not available")
    return device


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_model(config: TrainConfig, device: torch.device):
    """(CLIPWithTempNets, train transform, eval transform, tokenizer)."""
    clip, train_transform, eval_transform, tokenizer = create_clip(
        config.model.name, config.model.pretrained, config.model.pretrained_image)
    if config.model.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    if config.loss.name == "clip":
        with torch.no_grad():  # open_clip's default start is 1/0.07; the config may set another
            clip.logit_scale.fill_(math.log(1.0 / config.temperature.init))
    else:
        clip.logit_scale.requires_grad_(False)  # the temperatures come from elsewhere
    image_tempnet = text_tempnet = None
    if config.loss.name == "tempnet":
        dim = embedding_dim(config.model.name)
        image_tempnet, text_tempnet = (
            CLIPTempNet(dim, config.tempnet.num_prototypes, config.temperature.min, config.temperature.max,
                        config.tempnet.dropout)
            for _ in range(2))
    model = CLIPWithTempNets(clip, image_tempnet, text_tempnet).to(device)
    return model, train_transform, eval_transform, tokenizer


def build_optimizers(model: CLIPWithTempNets, config: TrainConfig):
    """AdamW for the CLIP model (no decay on 1-D parameters), Adam for the TempNets."""
    decay, no_decay = [], []
    for parameter in model.clip.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    optim = config.optim
    model_optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps)
    tempnet_optimizer = None
    if model.has_tempnets:
        tempnet_optimizer = torch.optim.Adam(model.tempnet_parameters(), lr=config.tempnet.lr, weight_decay=0.0)
    return model_optimizer, tempnet_optimizer


def model_lr(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warm-up to optim.lr, then cosine decay to optim.min_lr at the last step."""
    optim = config.optim
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def tempnet_lr(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """tempnet.lr * decay ** (epochs since tempnet.start_epoch); 0 before start_epoch (a warm-up in
    which the encoder trains under TempNet's initial temperatures; docs/results.md)."""
    epochs_trained = step // steps_per_epoch - config.tempnet.start_epoch
    if epochs_trained < 0:
        return 0.0
    return config.tempnet.lr * config.tempnet.lr_decay_per_epoch ** epochs_trained


def set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


def run_folder(config: TrainConfig) -> Path:
    """output_dir/name; without a name, rank 0's start time, shared with every rank."""
    names = [config.run.name or time.strftime("%Y%m%d-%H%M%S")]
    if is_distributed():
        dist.broadcast_object_list(names, src=0)
    return Path(config.run.output_dir) / names[0]


@torch.no_grad()
def init_prototypes_from_batch(model: CLIPWithTempNets, images, tokens, precision: str, device) -> None:
    """Image TempNet prototypes <- the first global batch's *text* embeddings, and vice versa."""
    with autocast_context(precision, device):
        output = model.clip(images, tokens)
    texts = all_gather_no_grad(output["text_features"].float().contiguous())
    images_ = all_gather_no_grad(output["image_features"].float().contiguous())
    if model.image_tempnet.init_prototypes(texts) and model.text_tempnet.init_prototypes(images_):
        log.info("TempNet prototypes initialised from the first global batch (%d rows)", texts.shape[0])
    else:
        log.warning("global batch %d < %d prototypes: TempNet prototypes keep their random init",
                    texts.shape[0], model.image_tempnet.num_prototypes)


class Evaluator:
    """The configured evaluation sets, loaded (and so validated) once at start-up.

    Every rank calls :meth:`run`: each embeds its share of the images and captions and the
    features are gathered, so the metrics are identical everywhere; rank 0 logs them.
    """

    def __init__(self, config: TrainConfig):
        self.config = config.eval
        self.retrieval_sets = [EvalSet.load(path) for path in self.config.retrieval]
        self.zeroshot_sets = []
        for path in self.config.zeroshot:
            evalset = load_labelled_set(path)
            classnames = resolve_classnames("evalset", evalset)
            templates = resolve_templates(default_template_source(evalset), evalset)
            self.zeroshot_sets.append((evalset, classnames, templates))

    @property
    def enabled(self) -> bool:
        return bool(self.retrieval_sets or self.zeroshot_sets)

    def run(self, model: CLIPWithTempNets, preprocess, tokenizer, device: torch.device) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for evalset in self.retrieval_sets:
            result = evaluate_retrieval(model.clip, preprocess, tokenizer, evalset, self.config.recall_k,
                                        batch_size=self.config.batch_size, device=device)
            metrics.update({f"{evalset.name}/{key}": value for key, value in result.metrics.items()})
        for evalset, classnames, templates in self.zeroshot_sets:
            result = evaluate_zeroshot(model.clip, preprocess, tokenizer, evalset, classnames, templates,
                                       batch_size=self.config.batch_size, device=device)
            metrics.update({f"{evalset.name}/zeroshot_{key}": value for key, value in result.metrics.items()})
        return metrics


# ------------------------------------------------------------------------------ the run


@dataclass
class StepResult:
    loss: float
    finite: bool
    metrics: dict[str, float]
    image_tau: torch.Tensor
    text_tau: torch.Tensor


class Preemption:
    """SIGTERM sets a flag; the loop finishes its step, writes a checkpoint and returns."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def train(config: TrainConfig, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) one training run; returns the final evaluation metrics."""
    # --- processes, device, run folder -------------------------------------------------
    context = init_distributed()
    device = resolve_device(config.run.device, context)
    run_dir = run_folder(config)
    logger = RunLogger(run_dir, enabled=context.is_main, line_keys=LOG_LINE_KEYS)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    log.info("run folder %s, %d process(es), device %s, precision %s", run_dir, context.world_size, device,
             config.run.precision)

    # --- model and TempNets: identical initial weights on every rank (same seed) ----------
    torch.manual_seed(config.run.seed)
    model, train_transform, eval_transform, tokenizer = build_model(config, device)

    # --- data -----------------------------------------------------------------------------
    transform = train_transform if config.model.train_transform == "train" else eval_transform
    loader = build_train_loader(config.data, transform, tokenizer, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.run.epochs
    global_batch = config.data.batch_size * context.world_size
    log.info("%d steps (%d epochs x %d), global batch %d, %d samples in the per-sample tables",
             total_steps, config.run.epochs, steps_per_epoch, global_batch, loader.dataset.num_samples)

    # --- loss (refuses rho >= log(B - 1) here, before any step) -----------------------------
    loss_fn = build_contrastive_loss(config.loss.name, loader.dataset.num_samples, **loss_options(config))
    loss_fn = loss_fn.to(device)
    if isinstance(loss_fn, DROContrastiveLoss):
        loss_fn.check_batch_size(global_batch)

    evaluator = Evaluator(config)  # missing or malformed evaluation sets fail here, not after training

    # --- optimisation ---------------------------------------------------------------------
    model_optimizer, tempnet_optimizer = build_optimizers(model, config)
    optimizers = [opt for opt in (model_optimizer, tempnet_optimizer) if opt is not None]
    scaler = torch.amp.GradScaler(device.type, enabled=config.run.precision == "amp")
    parameters = [p for p in model.parameters() if p.requires_grad]

    # --- resume -------------------------------------------------------------------------------
    start_step, nonfinite = 0, NonFiniteGuard(config.run.max_nonfinite_steps)
    if resume is not None:
        path = resolve_checkpoint(resume, run_dir)
        state = load_checkpoint(path, map_location=device)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        model_optimizer.load_state_dict(state["optimizer"])
        if tempnet_optimizer is not None:
            tempnet_optimizer.load_state_dict(state["tempnet_optimizer"])
        scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["data"])
        start_step, nonfinite.total = state["step"], state["nonfinite_steps"]
        set_rng_state(state["rng"][context.rank])
        log.info("resumed from %s at step %d", path, start_step)
    else:
        torch.manual_seed(config.run.seed + context.rank)  # dropout etc. differ per rank

    ddp_model = (DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                 if context.enabled else model)

    def checkpoint(step: int) -> None:
        state = {
            "format": "clipdro-checkpoint/1",
            "model": model.state_dict(),
            "loss": loss_fn.state_dict(),
            "optimizer": model_optimizer.state_dict(),
            "tempnet_optimizer": tempnet_optimizer.state_dict() if tempnet_optimizer else None,
            "scaler": scaler.state_dict(),
            "data": loader.state_dict(),
        }
        path = save_run_checkpoint(state, run_dir=run_dir, step=step, keep_last=config.run.keep_last,
                                   config=to_dict(config), nonfinite_steps=nonfinite.total)
        if path is not None:
            log.info("checkpoint %s", path)

    def evaluate(step: int) -> dict[str, float]:
        metrics = evaluator.run(model, eval_transform, tokenizer, device)
        logger.log_eval(step, metrics)
        if context.is_main:
            folder = run_dir / "eval"
            folder.mkdir(exist_ok=True)
            (folder / f"step_{step:09d}.json").write_text(json.dumps({"step": step, "metrics": metrics}, indent=1))
        return metrics

    def one_step(images: torch.Tensor, tokens: torch.Tensor, sample_ids: torch.Tensor) -> StepResult:
        with autocast_context(config.run.precision, device):
            output = ddp_model(images, tokens)
        if loss_fn.temperature_source == "tempnet":
            image_tau, text_tau = output.image_tau, output.text_tau
        elif loss_fn.temperature_source == "logit_scale":
            image_tau = text_tau = 1.0 / output.logit_scale.float()  # open_clip returns exp(logit_scale)
        else:
            image_tau = text_tau = None
        result = loss_fn(output.image_features, output.text_features, image_tau, text_tau, sample_ids)
        # Every rank must take the same branch, or DDP's backward would hang.
        if any_rank(not bool(torch.isfinite(result.loss.detach())), device):
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            return StepResult(math.nan, False, {}, result.image_tau, result.text_tau)
        scaler.scale(result.loss).backward()
        if config.optim.grad_clip_norm is not None:
            for optimizer in optimizers:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip_norm)
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        if config.loss.name == "clip":
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        metrics = {key: float(value) for key, value in result.metrics.items()}
        return StepResult(float(result.loss.detach()), True, metrics, result.image_tau, result.text_tau)

    # --- the loop ----------------------------------------------------------------------------
    model.train()
    step = start_step
    stop_after = total_steps if config.run.stop_after is None else min(total_steps, config.run.stop_after)
    batches = iter(loader)
    logger.start_window(step)
    try:
        with Preemption() as preemption:
            while step < stop_after:
                data_start = time.perf_counter()
                try:
                    images, tokens, sample_ids = next(batches)
                except StopIteration:  # end of an epoch: the loader moves on to the next one
                    batches = iter(loader)
                    continue
                images = images.to(device, non_blocking=True)
                tokens = tokens.to(device, non_blocking=True)
                sample_ids = sample_ids.to(device, non_blocking=True)
                compute_start = time.perf_counter()
                if step == 0 and model.has_tempnets and config.tempnet.init_prototypes:
                    init_prototypes_from_batch(model, images, tokens, config.run.precision, device)

                set_lr(model_optimizer, model_lr(step, total_steps, config))
                set_lr(tempnet_optimizer, tempnet_lr(step, steps_per_epoch, config))
                result = one_step(images, tokens, sample_ids)
                step += 1
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                logger.record_step(data_seconds=compute_start - data_start,
                                   compute_seconds=time.perf_counter() - compute_start, samples=global_batch)

                nonfinite.record(result.finite, step)

                if step % config.run.log_every == 0 or step == stop_after:
                    image_tau = all_gather_no_grad(result.image_tau.float().contiguous())
                    text_tau = all_gather_no_grad(result.text_tau.float().contiguous())
                    logger.log_step(step, total_steps, {
                        "epoch": step / steps_per_epoch,
                        "loss": mean_over_ranks(result.loss, device),
                        "lr": model_optimizer.param_groups[0]["lr"],
                        "tempnet_lr": tempnet_optimizer.param_groups[0]["lr"] if tempnet_optimizer else None,
                        **result.metrics,
                        **tau_summary("image_tau", image_tau),
                        **tau_summary("text_tau", text_tau),
                        "nonfinite_steps": nonfinite.total,
                        **skip_summary(loader_counts(loader)),
                        **peak_memory(device),
                    }, world_size=context.world_size)

                # No periodic checkpoint inside a non-finite streak: the last one stays the last good one.
                if config.run.checkpoint_every and step % config.run.checkpoint_every == 0 and result.finite:
                    checkpoint(step)
                if config.eval.every_steps and step % config.eval.every_steps == 0 and step < stop_after:
                    evaluate(step)
                if any_rank(preemption.requested, device):
                    log.warning("SIGTERM received: checkpoint at step %d and exit", step)
                    checkpoint(step)
                    return {}
        if not (config.run.checkpoint_every and step % config.run.checkpoint_every == 0):
            checkpoint(step)  # unless the periodic one has just written this step
        return evaluate(step) if evaluator.enabled else {}
    finally:
        logger.close()


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Counts steps skipped for a NaN/Inf loss; too many in a row stop the run.

    ``total`` goes into checkpoints and the log. No checkpoint is written inside a streak, so
    when the error is raised the newest checkpoint is the last good one.
    """

    def __init__(self, max_in_a_row: int, total: int = 0):
        self.max_in_a_row = max_in_a_row
        self.total = total
        self.in_a_row = 0

    def record(self, finite: bool, step: int) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.total += 1
        log.warning("step %d: non-finite loss, step skipped (%d in a row, %d in total)", step, self.in_a_row,
                    self.total)
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteLossError(f"{self.in_a_row} consecutive non-finite losses at step {step}; stopped "
                                     f"without writing a checkpoint (the last good one is intact)")


def loss_options(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of the configured loss, taken from the loss and temperature sections."""
    loss, temperature = config.loss, config.temperature
    if loss.name == "tempnet":
        return {"rho": loss.rho, "gamma": loss.gamma}
    if loss.name == "sogclr":
        return {"tau": temperature.init, "gamma": loss.gamma}
    if loss.name == "isogclr":
        return {"rho": loss.rho, "gamma": loss.gamma, "tau_init": temperature.init, "tau_min": temperature.min,
                "tau_max": temperature.max, "beta": loss.isogclr_beta, "eta": loss.isogclr_eta}
    return {}


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The global-batch loss: each rank's loss is the mean over its own anchors."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def peak_memory(device: torch.device) -> dict[str, float]:
    """This rank's peak allocated CUDA memory since start, in GiB (nothing on other devices)."""
    if device.type != "cuda":
        return {}
    return {"max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def skip_summary(counts: dict[str, int]) -> dict[str, int]:
    """Per-reason counts of skipped input plus their total, for the log (docs/data.md lists the reasons)."""
    skipped = sum(count for reason, count in counts.items() if reason != REPEATED)  # repeats are not skips
    return {"skipped_samples": skipped, **{f"skipped_{reason}": count for reason, count in counts.items()}}


def loader_counts(loader) -> dict[str, int]:
    """Skipped-sample counts summed over ranks."""
    counts = dict(loader.counts)
    if not is_distributed():
        return counts
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, counts)
    total: dict[str, int] = {}
    for rank_counts in gathered:
        for reason, count in rank_counts.items():
            total[reason] = total.get(reason, 0) + count
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clipdro train", description="Train CLIP with TempNets under the DRO loss.")
    parser.add_argument("--config", default=None, help="YAML config (see configs/); defaults + overrides without it")
    parser.add_argument("--resume", default=None,
                        help="'latest' (this run's newest checkpoint), a run folder or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 loss.name=clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config(TrainConfig, args.config, args.overrides)
    try:
        metrics = train(config, resume=args.resume)
    except NonFiniteLossError as error:
        log.error("%s", error)
        return 1
    if metrics and get_rank() == 0:
        print("\nfinal evaluation:")
        for name, value in sorted(metrics.items()):
            print(f"  {name:<55} {value:8.4f}")
    return 0
