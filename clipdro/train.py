"""`clipdro train`: the CLIP trainer, its set-up and its step; the loop is the run engine's.

:func:`train` reads top to bottom: processes and run folder (:class:`~clipdro.engine.RunEngine`),
model and TempNets, data, loss, evaluation sets, optimizers, then the step function, handed to
the engine with the parts to checkpoint. The per-batch step up to the loss is :func:`clip_step`
(shared with the GPU check). The same entry runs on one CPU, under
``torchrun --nproc_per_node ...`` and under SLURM's ``srun``.

Invariants worth knowing before changing anything here:

* The loss is computed *locally* (rows: this rank's anchors, columns: every rank's
  candidates, gathered with autograd). DDP then averages parameter gradients over ranks,
  which makes the update equal to the single-process update on the global batch.
* The per-sample tables inside the loss are updated during its forward and synchronised
  across ranks there; they are part of the checkpoint.
* The TempNets see detached features; one backward of the loss gives encoder and TempNet
  gradients, and each has its own optimizer and learning-rate schedule.
* The trainer never branches on the loss's name: the loss says whether the model needs
  TempNets, what happens to open_clip's logit_scale, where the temperatures come from and
  what follows an optimizer step (clipdro.losses.contrastive).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from clipdro.checkpoint import rng_state, set_rng_state
from clipdro.data.evalset import EvalSet
from clipdro.data.pipeline import REPEATED, build_train_loader
from clipdro.distributed import (
    all_gather_no_grad,
    broadcast_object,
    get_rank,
    mean_over_ranks,
    no_gradient_sync,
    sum_counts,
)
from clipdro.engine import (
    NonFiniteLossError,  # noqa: F401  (train() raises it; importable from here)
    RunEngine,
    StepOutput,
    TrainingJob,
    rng_preserved,
    training_command,
    warmup_cosine_lr,
)
from clipdro.errors import UsageError
from clipdro.eval.tasks import evaluate_retrieval, evaluate_zeroshot
from clipdro.eval.zeroshot import default_template_source, load_labelled_set, resolve_classnames, resolve_templates
from clipdro.losses import ContrastiveLoss, ContrastiveLossOutput, build_loss, loss_class
from clipdro.models import CLIPWithTempNets, build_tempnets, create_clip, tower_weights
from clipdro.run_logging import tau_summary
from clipdro.towers import lock_text_tower
from clipdro.train_config import EvalConfig, TempNetConfig, TrainConfig

log = logging.getLogger("clipdro.train")

CHECKPOINT_FORMAT = "clipdro-checkpoint/1"
# Besides the run section's: loader processes, evaluation and micro-batching change nothing that is trained.
RESUMABLE_KEYS = ("data.num_workers", "eval.", "optim.accum_steps")
LOG_LINE_KEYS = ["epoch", "loss", "samples_per_s", "samples_per_s_per_device", "data_s_per_step",
                 "compute_s_per_step", "lr", "tempnet_lr", "image_tau_mean", "image_tau_min", "image_tau_max",
                 "text_tau_mean", "text_tau_min", "text_tau_max", "nonfinite_steps", "skipped_samples"]


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run (or resume) one training run; returns the final evaluation metrics ({} without evaluation sets)."""
    engine = RunEngine(config.run, config, CHECKPOINT_FORMAT, LOG_LINE_KEYS, resume=resume, overwrite=overwrite,
                       resumable_keys=RESUMABLE_KEYS)
    device = engine.device

    # --- model and TempNets: identical initial weights on every rank (same seed) ----------
    torch.manual_seed(config.run.seed)
    loss_type = loss_class(config.loss.name)
    model, train_transform, eval_transform, tokenizer = build_model(config, loss_type.uses_tempnets, device)

    # --- data -----------------------------------------------------------------------------
    transform = train_transform if config.model.train_transform == "train" else eval_transform
    loader = build_train_loader(config.data, transform, tokenizer, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.run.epochs
    global_batch = config.data.batch_size * engine.context.world_size

    # --- loss (refuses, e.g., rho >= log(B - 1) here, before any step) ------------------------
    loss_fn = build_loss(config, loader.dataset.num_samples).to(device)
    loss_fn.check_batch_size(global_batch)
    loss_fn.prepare_model(model.clip)
    # Missing or malformed evaluation sets fail here, not after training.
    evaluator = Evaluator(config.eval, model, eval_transform, tokenizer, device, config.run.precision)

    # --- optimisation ---------------------------------------------------------------------
    model_optimizer, tempnet_optimizer = build_optimizers(model, config, engine.fused_optimizers)
    ddp_model = engine.wrap(model)
    accum_steps = config.optim.accum_steps

    def step(index: int, batch: tuple[torch.Tensor, ...]) -> StepOutput:
        images, tokens, sample_ids = batch
        if index == 0 and model.has_tempnets and config.tempnet.init_prototypes:
            init_prototypes_from_batch(model, images, tokens, engine, accum_steps)
        set_lr(model_optimizer, warmup_cosine_lr(index, total_steps, config.optim))
        set_lr(tempnet_optimizer, tempnet_lr(index, steps_per_epoch, config.tempnet))
        return clip_step_output(model, ddp_model, loss_fn, batch, engine.autocast, accum_steps)

    def log_values(output: StepOutput) -> dict[str, Any]:
        result = output.details
        return {
            "loss": mean_over_ranks(output.loss),
            "lr": model_optimizer.param_groups[0]["lr"],
            "tempnet_lr": tempnet_optimizer.param_groups[0]["lr"] if tempnet_optimizer else None,
            **({key: float(value) for key, value in result.metrics.items()} if output.finite else {}),
            **tau_summary("image_tau", all_gather_no_grad(result.image_tau.float().contiguous())),
            **tau_summary("text_tau", all_gather_no_grad(result.text_tau.float().contiguous())),
            **skip_summary(sum_counts(loader.counts)),
        }

    model.train()
    job = TrainingJob(
        parts={"model": model, "loss": loss_fn, "optimizer": model_optimizer,
               "tempnet_optimizer": tempnet_optimizer, "data": loader},
        optimizers=[opt for opt in (model_optimizer, tempnet_optimizer) if opt is not None],
        batches=loader, total_steps=total_steps, samples_per_step=global_batch, step=step, log_values=log_values,
        grad_clip_norm=config.optim.grad_clip_norm, after_update=lambda: loss_fn.after_optimizer_step(model.clip),
        evaluate=evaluator.run if evaluator.enabled else None, evaluate_every=config.eval.every_steps,
        description=[f"{total_steps} steps ({config.run.epochs} epochs x {steps_per_epoch}), global batch "
                     f"{global_batch} (per rank {accum_steps} micro-batch(es) of "
                     f"{config.data.batch_size // accum_steps}), loss {config.loss.name}, "
                     f"{loader.dataset.num_samples} samples in the per-sample tables"])
    return engine.fit(job).metrics


def clip_step(model: torch.nn.Module, loss_fn: ContrastiveLoss, images: torch.Tensor, tokens: torch.Tensor,
              sample_ids: torch.Tensor, autocast: contextlib.AbstractContextManager) -> ContrastiveLossOutput:
    """The trainer's step for one batch up to its loss: the forward under ``autocast`` (e.g.
    ``RunEngine.autocast()``), the temperatures the loss takes from the model's output (TempNets or
    ``logit_scale``, or none), and the loss outside autocast. The engine does the backward and the update
    (RunEngine._update); the GPU check (benchmarks/speed/gpu_check) calls this same function."""
    with autocast:
        output = model(images, tokens)
    image_tau, text_tau = loss_fn.temperatures(output)
    return loss_fn(output.image_features, output.text_features, image_tau, text_tau, sample_ids)


def clip_step_output(model: CLIPWithTempNets, ddp_model: torch.nn.Module, loss_fn: ContrastiveLoss,
                     batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     autocast: Callable[[], contextlib.AbstractContextManager], accum_steps: int) -> StepOutput:
    """What the trainer's step hands the engine for one batch (``ddp_model``: ``model`` as the engine wrapped
    it): :func:`clip_step` on the whole batch, or :func:`accumulated_clip_step` in ``accum_steps`` micro-batches."""
    if accum_steps > 1:
        return accumulated_clip_step(model, ddp_model, loss_fn, batch, autocast, accum_steps)
    result = clip_step(ddp_model, loss_fn, *batch, autocast())
    return StepOutput(objective=result.loss, loss=result.loss.detach(), details=result)


def accumulated_clip_step(model: CLIPWithTempNets, ddp_model: torch.nn.Module, loss_fn: ContrastiveLoss,
                          batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                          autocast: Callable[[], contextlib.AbstractContextManager], accum_steps: int) -> StepOutput:
    """The step of ``optim.accum_steps`` > 1: the same update as :func:`clip_step` on the whole batch, with the
    towers' activations held for one micro-batch (of ``batch_size / accum_steps``) at a time (GradCache).

    1. Every micro-batch is embedded without autograd, its RNG state saved first.
    2. The loss phase, once on the whole batch as at K = 1: the TempNets (or logit_scale) give the temperatures
       of the concatenated features, and the loss (all-gather, per-sample tables) takes the features and
       temperatures as leaves. The TempNets' dropout draws from the RNG stream where K = 1's forward draws
       (right after the towers, which draw nothing in the shipped models: see docs/training.md).
    3. The engine's backward (``StepOutput.backward``): the gradient of the (scaled) loss with respect to those
       leaves; then each micro-batch is embedded again with autograd, under its saved RNG state, and
       back-propagates its slice of the feature gradient (:func:`_backward_micro_batches`).

    DDP wraps CLIPWithTempNets as a whole, and its reducer all-reduces a parameter's gradient when it is
    accumulated during the backward that follows a synchronising forward of the wrapper, wherever the
    graph was built. So the micro-batches are embedded through the wrapper (``with_temperatures=False``
    dispatches to the towers alone), all but the last under no_sync, and the temperatures' graph from step 2
    (to the TempNets and logit_scale) is back-propagated inside the last micro-batch's backward: every
    trainable parameter gets its gradient in that one synchronised backward, as DDP
    (find_unused_parameters=False) expects. Pass 1 calls the unwrapped module: without autograd DDP has
    nothing to do, and its buffer broadcast then happens once per step, as at K = 1.
    """
    images, tokens, sample_ids = batch
    micro_batches = list(zip(images.chunk(accum_steps), tokens.chunk(accum_steps), strict=True))
    rng_states, image_parts, text_parts = [], [], []
    # Running statistics (BatchNorm) are restored after pass 1, so only the replay updates them.
    with torch.no_grad(), buffers_preserved(model):
        for micro_images, micro_tokens in micro_batches:
            rng_states.append(rng_state())
            with autocast():
                output = model(micro_images, micro_tokens, with_temperatures=False)
            image_parts.append(output.image_features)
            text_parts.append(output.text_features)
    image_features, text_features = torch.cat(image_parts).requires_grad_(), torch.cat(text_parts).requires_grad_()
    with autocast():
        output = model.temperatures_of(image_features, text_features)
    temperatures = loss_fn.temperatures(output)  # with autograd to the TempNets / logit_scale, or None
    tau_leaves = [None if tau is None else tau.detach().requires_grad_(tau.requires_grad) for tau in temperatures]
    result = loss_fn(image_features, text_features, *tau_leaves, sample_ids)
    trained_taus = [(tau, leaf) for tau, leaf in zip(temperatures, tau_leaves, strict=True)
                    if leaf is not None and leaf.requires_grad]

    def backward(scale: Callable[[torch.Tensor], torch.Tensor]) -> None:
        leaves = [image_features, text_features, *(leaf for _, leaf in trained_taus)]
        grads = torch.autograd.grad(scale(result.loss), leaves, allow_unused=True, materialize_grads=True)
        tau_grads = [(tau, grad) for (tau, _), grad in zip(trained_taus, grads[2:], strict=True)]
        _backward_micro_batches(ddp_model, micro_batches, rng_states, list(zip(grads[0].chunk(accum_steps),
                                grads[1].chunk(accum_steps), strict=True)), tau_grads, autocast)

    return StepOutput(objective=result.loss, loss=result.loss.detach(), details=result, backward=backward)


def _backward_micro_batches(ddp_model: torch.nn.Module, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
                            rng_states: list[dict], feature_grads: list[tuple[torch.Tensor, torch.Tensor]],
                            tau_grads: list[tuple[torch.Tensor, torch.Tensor]],
                            autocast: Callable[[], contextlib.AbstractContextManager]) -> None:
    """Pass 2 of :func:`accumulated_clip_step`: each micro-batch embedded again with autograd, replaying the RNG
    state of its pass-1 forward (dropout draws the same masks; the step's RNG stream is left where the loss
    phase left it), back-propagates its (image, text) feature gradients; the last one also the temperatures'.
    Only the last backward is synchronised across ranks."""
    last = len(micro_batches) - 1
    for index, (micro_images, micro_tokens) in enumerate(micro_batches):
        with contextlib.nullcontext() if index == last else no_gradient_sync(ddp_model), rng_preserved():
            set_rng_state(rng_states[index])
            with autocast():
                output = ddp_model(micro_images, micro_tokens, with_temperatures=False)
            tensors, grads = [output.image_features, output.text_features], list(feature_grads[index])
            if index == last:
                tensors += [tau for tau, _ in tau_grads]
                grads += [grad for _, grad in tau_grads]
            torch.autograd.backward(tensors, grads)


@contextlib.contextmanager
def buffers_preserved(module: torch.nn.Module) -> Iterator[None]:
    """Run the block, then put every buffer of ``module`` (BatchNorm running statistics) back as it was."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


# ---------------------------------------------------------------------------- set-up helpers


def build_model(config: TrainConfig, with_tempnets: bool, device: torch.device):
    """(CLIPWithTempNets, train transform, eval transform, tokenizer); TempNets only when the loss uses them."""
    model_config = config.model
    clip, train_transform, eval_transform, tokenizer = create_clip(
        model_config.name, model_config.pretrained, model_config.pretrained_image, towers=tower_weights(model_config))
    if model_config.lock_image:
        clip.lock_image_tower(model_config.lock_image_unlocked_groups, model_config.lock_image_freeze_bn_stats)
    if model_config.lock_text:
        lock_text_tower(clip.text, model_config.lock_text_unlocked_layers, model_config.lock_text_freeze_layer_norm)
    if model_config.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    tempnets = (build_tempnets(config.model.name, config.tempnet.num_prototypes, config.temperature.min,
                               config.temperature.max, config.tempnet.dropout) if with_tempnets else ())
    model = CLIPWithTempNets(clip, *tempnets).to(device)
    return model, train_transform, eval_transform, tokenizer


def build_optimizers(model: CLIPWithTempNets, config: TrainConfig, fused: bool):
    """AdamW for the CLIP model (no decay on 1-D parameters), Adam for the TempNets; torch's fused
    implementations when ``fused`` (RunEngine.fused_optimizers)."""
    decay, no_decay = [], []
    for parameter in model.clip.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    optim = config.optim
    model_optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, fused=fused)
    tempnet_optimizer = None
    if model.has_tempnets:
        tempnet_optimizer = torch.optim.Adam(model.tempnet_parameters(), lr=config.tempnet.lr, weight_decay=0.0,
                                             fused=fused)
    return model_optimizer, tempnet_optimizer


def tempnet_lr(step: int, steps_per_epoch: int, tempnet: TempNetConfig) -> float:
    """tempnet.lr * decay ** (epochs since tempnet.start_epoch); 0 before start_epoch (a warm-up in
    which the encoder trains under TempNet's initial temperatures; docs/results.md)."""
    epochs_trained = step // steps_per_epoch - tempnet.start_epoch
    if epochs_trained < 0:
        return 0.0
    return tempnet.lr * tempnet.lr_decay_per_epoch ** epochs_trained


def set_lr(optimizer: torch.optim.Optimizer | None, lr: float) -> None:
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


@torch.no_grad()
def init_prototypes_from_batch(model: CLIPWithTempNets, images, tokens, engine: RunEngine,
                               accum_steps: int = 1) -> None:
    """Image TempNet prototypes <- the first global batch's *text* embeddings, and vice versa (embedded in
    ``accum_steps`` micro-batches, the step's memory bound)."""
    outputs = []
    for micro_images, micro_tokens in zip(images.chunk(accum_steps), tokens.chunk(accum_steps), strict=True):
        with engine.autocast():
            outputs.append(model.clip(micro_images, micro_tokens))
    texts = all_gather_no_grad(torch.cat([output["text_features"] for output in outputs]).float().contiguous())
    images_ = all_gather_no_grad(torch.cat([output["image_features"] for output in outputs]).float().contiguous())
    if model.image_tempnet.init_prototypes(texts) and model.text_tempnet.init_prototypes(images_):
        log.info("TempNet prototypes initialised from the first global batch (%d rows)", texts.shape[0])
    else:
        log.warning("global batch %d < %d prototypes: TempNet prototypes keep their random init",
                    texts.shape[0], model.image_tempnet.num_prototypes)


def skip_summary(counts: dict[str, int]) -> dict[str, int]:
    """Per-reason counts of skipped input plus their total, for the log (docs/data.md lists the reasons)."""
    skipped = sum(count for reason, count in counts.items() if reason != REPEATED)  # repeats are not skips
    return {"skipped_samples": skipped, **{f"skipped_{reason}": count for reason, count in counts.items()}}


class Evaluator:
    """The configured evaluation sets, loaded (and so validated) once at start-up.

    Every rank calls :meth:`run`: each embeds its share of the images and captions and the
    features are gathered, so the metrics are identical everywhere; rank 0 logs them. The
    embeddings use the run's own precision. Every image is decoded once at start-up, so an
    unreadable one stops the run before training (exit 2, naming the file).
    """

    def __init__(self, config: EvalConfig, model: CLIPWithTempNets, preprocess, tokenizer, device: torch.device,
                 precision: str):
        self.config = config
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.options = {"batch_size": config.batch_size, "device": device, "precision": precision}
        self.retrieval_sets = [EvalSet.load(path) for path in config.retrieval]
        self.zeroshot_sets = []
        for path in config.zeroshot:
            evalset = load_labelled_set(path)
            classnames = resolve_classnames("evalset", evalset)
            templates = resolve_templates(default_template_source(evalset), evalset)
            self.zeroshot_sets.append((evalset, classnames, templates))
        # Every image decodes, or the run stops here naming it, not after all of its training.
        # Rank 0 reads them; every rank raises its verdict, so no rank goes on alone.
        problem = None
        if get_rank() == 0:
            try:
                for evalset in {evalset.root: evalset for evalset in self.evalsets()}.values():  # each folder once
                    evalset.check_images()
            except UsageError as error:
                problem = str(error)
        problem = broadcast_object(problem)
        if problem is not None:
            raise UsageError(problem)

    def evalsets(self) -> list[EvalSet]:
        """Every configured evaluation set (retrieval first)."""
        return [*self.retrieval_sets, *(evalset for evalset, _, _ in self.zeroshot_sets)]

    @property
    def enabled(self) -> bool:
        return bool(self.retrieval_sets or self.zeroshot_sets)

    def run(self) -> dict[str, float]:
        clip = self.model.clip
        metrics: dict[str, float] = {}
        for evalset in self.retrieval_sets:
            result = evaluate_retrieval(clip, self.preprocess, self.tokenizer, evalset, self.config.recall_k,
                                        **self.options)
            metrics.update({f"{evalset.name}/{key}": value for key, value in result.metrics.items()})
        for evalset, classnames, templates in self.zeroshot_sets:
            result = evaluate_zeroshot(clip, self.preprocess, self.tokenizer, evalset, classnames, templates,
                                       **self.options)
            metrics.update({f"{evalset.name}/zeroshot_{key}": value for key, value in result.metrics.items()})
        return metrics


def main(argv: list[str] | None = None) -> int:
    status, metrics = training_command(
        argv, prog="clipdro train", description="Train CLIP with TempNets under the DRO loss.",
        config_type=TrainConfig, train=train, config_help="YAML config (see configs/); defaults + overrides without it",
        overrides_help="dotted overrides, e.g. optim.lr=1e-3 loss.name=clip")
    if metrics and get_rank() == 0:
        print("\nfinal evaluation:")
        for name, value in sorted(metrics.items()):
            print(f"  {name:<55} {value:8.4f}")
    return status
