"""The run engine: everything around a training step that the CLIP and LLM trainers share.

A trainer builds its own parts (model, loss, data, optimizers) and its step function, packs
them into a :class:`TrainingJob`, and hands it to :meth:`RunEngine.fit`. The engine owns the
rest, once for both trainers:

* processes and the device / precision policy (:mod:`clipdro.distributed`, :mod:`clipdro.runtime`);
* the run folder: created only when training starts (a run that fails its start-up checks
  leaves nothing behind), with the resolved ``config.yaml``, ``train.log``, ``metrics.jsonl``,
  TensorBoard events and ``eval/step_N.json``;
* resume: a checkpoint is ``{name: part.state_dict()}`` for the job's parts plus the loss
  scaler, the step, every rank's RNG state, the skipped-step count and the resolved config, in
  one sharded folder (clipdro.checkpoint): each rank writes its rows of the per-sample tables,
  rank 0 the rest; a run resumes at any world size;
* the update: the non-finite skip (a device flag every rank agrees on, taken by the fused
  optimizers; nothing is read back to the host outside log and checkpoint steps), loss scaling,
  gradient clipping over every parameter the optimizers hold, every optimizer, then the job's hook;
* the loop: data / compute timing, epochs, the log line, SIGTERM, and the final checkpoint
  and evaluation.

After step N the engine does, in this order: log (every ``run.log_every``), checkpoint (every
``run.checkpoint_every``, never inside a non-finite streak), evaluate (every
``eval.every_steps``), and act on a SIGTERM (checkpoint and return). Checkpointing before
evaluating means a crash in evaluation never costs training. Evaluation runs inside a saved and
restored RNG state, so whether or when it runs never changes training: a run resumed from any
checkpoint continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from clipdro.checkpoint import (
    load_checkpoint,
    remove_stale_temporaries,
    resolve_checkpoint,
    rng_state,
    save_run_checkpoint,
    set_rng_state,
)
from clipdro.config import OptimConfig, RunConfig, from_dict, load_config, save_config, to_dict
from clipdro.distributed import any_rank, any_rank_on_host, broadcast_object, close_distributed, init_distributed
from clipdro.errors import UsageArgumentParser, UsageError
from clipdro.run_logging import RunLogger
from clipdro.runtime import autocast_context, parse_device
from clipdro.state import table_shards

log = logging.getLogger("clipdro.engine")


# Files whose presence means a run folder already holds a run.
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")
# Keys of the run section that may differ when a run is resumed: where and how it runs and reports, not
# what it trains (the schedule, model, data, loss and seeds must match the checkpoint's). Each trainer adds
# the keys of its own sections that are alike (RunEngine's resumable_keys: e.g. the CLIP run's loader workers).
RESUMABLE_RUN_KEYS = ("run.output_dir", "run.name", "run.device", "run.log_every", "run.checkpoint_every",
                      "run.keep_last", "run.max_nonfinite_steps", "run.stop_after")


def _resumable(key: str, allowed_keys: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``allowed_keys``, or under one of them that ends with a dot (a whole section)."""
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in allowed_keys)


def _differences(before: Any, after: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, before, after) for every leaf where two nested config dicts differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after)):
            yield from _differences(before.get(key), after.get(key), f"{prefix}{key}.")
    elif before != after:
        yield prefix.rstrip("."), before, after


def warmup_cosine_lr(step: int, total_steps: int, optim: OptimConfig) -> float:
    """Linear warm-up to optim.lr over optim.warmup_steps, then cosine decay to optim.min_lr at the last step."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class StepOutput:
    """What a trainer's step function returns; the engine does the backward and the update."""

    objective: torch.Tensor  # backward() runs on this: this rank's share of the global loss
    # The step's loss as logged: a detached scalar tensor, left on the device (the engine sets NaN when the
    # step is skipped). Nothing reads it back to the host outside log steps, so steps do not wait for the device.
    loss: torch.Tensor
    details: Any = None  # whatever the trainer's log_values needs (temperatures, loss metrics)
    # Set by the engine. nonfinite: whether some rank's loss was NaN/Inf (the step is skipped), a device flag;
    # finite: its host value, read at log and checkpoint steps only (what log_values sees).
    nonfinite: torch.Tensor | None = None
    finite: bool = True
    # A step whose backward is more than one call on ``objective`` (gradient accumulation,
    # clipdro.train.accumulated_clip_step) sets this; the engine then calls backward(scale), with ``scale`` the
    # loss scaler's GradScaler.scale, instead of scale(objective).backward(). It must leave the gradients
    # that scale(objective).backward() would (clipping, the scaler's inf check and the step follow as usual).
    backward: Callable[[Callable[[torch.Tensor], torch.Tensor]], None] | None = None


@dataclass
class TrainingJob:
    """A trainer's parts and hooks, as the engine runs them."""

    # name -> object with state_dict() / load_state_dict(), or None (saved as None): the checkpoint
    # payload. The data part's state is the position in the data stream.
    parts: dict[str, Any]
    optimizers: list[torch.optim.Optimizer]
    batches: Iterable  # iter() gives one epoch of batches (tuples of tensors); len() is the steps per epoch
    total_steps: int  # the length of the run (the schedules span it)
    samples_per_step: int  # the global batch, for throughput
    step: Callable[[int, tuple], StepOutput]  # forward + loss of step `step` (it sets its own learning rates)
    log_values: Callable[[StepOutput], dict[str, Any]]  # at log steps, on every rank (may use collectives)
    metadata: dict[str, Any] = field(default_factory=dict)  # plain values saved in every checkpoint as they are
    grad_clip_norm: float | None = None
    after_update: Callable[[], None] | None = None  # after each optimizer step
    evaluate: Callable[[], dict[str, float]] | None = None  # every rank calls it; None: nothing to evaluate
    evaluate_every: int = 0  # steps; 0: only after the last step
    evaluate_at_start: bool = False  # also evaluate before the first step of a fresh run
    description: list[str] = field(default_factory=list)  # lines for the log when training starts


@dataclass
class RunResult:
    step: int  # the last step taken
    metrics: dict[str, float]  # the latest evaluation ({} without one)
    preempted: bool  # stopped by SIGTERM
    completed: bool  # reached total_steps (not preempted, not cut by run.stop_after)


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Counts steps skipped for a NaN/Inf loss; too many in a row stop the run.

    ``total`` goes into checkpoints and the log. Each step's flag stays on the device (:meth:`record`);
    :meth:`settle` reads the flags recorded since it last ran, at log and checkpoint steps, so a streak is
    acted on there. No checkpoint is written inside a streak, so when the error is raised the newest
    checkpoint is the last good one.
    """

    def __init__(self, max_in_a_row: int, total: int = 0):
        self.max_in_a_row = max_in_a_row
        self.total = total
        self.in_a_row = 0
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, nonfinite flag) not read yet

    def record(self, nonfinite: torch.Tensor, step: int) -> None:
        self._pending.append((step, nonfinite))

    def settle(self) -> bool:
        """Count the recorded steps (one device-to-host read for all of them); raises NonFiniteLossError on
        a streak of max_in_a_row. Returns whether the last step was finite."""
        if self._pending:
            flags = torch.stack([flag.reshape(()) for _, flag in self._pending]).tolist()
            for (step, _), nonfinite in zip(self._pending, flags, strict=True):
                self._count(not nonfinite, step)
            self._pending.clear()
        return self.in_a_row == 0

    def _count(self, finite: bool, step: int) -> None:
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


class Preemption:
    """SIGTERM or SIGUSR1 sets a flag; the loop finishes its step, writes a checkpoint and returns.

    SIGTERM is what ``timeout``, Kubernetes, torchrun (forwarding its own) and Slurm at the time
    limit send; SIGUSR1 is Slurm's ``--signal=USR1@N`` warning ahead of it. Data-loader workers
    ignore both (clipdro.data.pipeline), so a signal to the whole process group reaches this
    handler without killing the workers the checkpoint needs.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested: str | None = None  # the name of the first signal received
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = self.requested or signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Run the block without changing this process's Python / numpy / torch (and CUDA) RNG streams."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _table_shards(job: TrainingJob) -> dict[str, torch.Tensor]:
    """The per-sample table columns of the job's parts as sharded checkpoints store them (``part/key``)."""
    return {f"{name}/{key}": shard for name, part in job.parts.items() if isinstance(part, torch.nn.Module)
            for key, shard in table_shards(part).items()}


def peak_memory(device: torch.device) -> dict[str, float]:
    """This rank's peak allocated CUDA memory since start, in GiB (nothing on other devices)."""
    if device.type != "cuda":
        return {}
    return {"max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}


class RunEngine:
    """One training run's processes, device, folder, checkpoints and loop (see the module docstring).

    ``config`` is the run's whole resolved config (saved as config.yaml and in every checkpoint);
    ``checkpoint_format`` names the payload layout, checked on resume; ``line_keys`` pick the
    values of the one-line log summary. ``resume`` is 'latest', a run folder or a checkpoint
    file; ``overwrite`` replaces an existing run in the run folder (see :meth:`_check_run_folder`).
    ``resumable_keys`` are the trainer's own config keys (``section.key``, or ``section.`` for a whole
    section) that a resumed run may change besides RESUMABLE_RUN_KEYS.
    """

    def __init__(self, run: RunConfig, config: Any, checkpoint_format: str, line_keys: list[str],
                 resume: str | None = None, overwrite: bool = False, resumable_keys: tuple[str, ...] = ()):
        self.run = run
        self.config = config
        self.resumable_keys = RESUMABLE_RUN_KEYS + resumable_keys
        self.checkpoint_format = checkpoint_format
        self.line_keys = line_keys
        self.resume, self.overwrite = resume, overwrite
        self.context = init_distributed()
        self.device = parse_device(run.device, self.context.local_rank)
        # Without a name, rank 0's start time names the folder on every rank.
        self.run_dir = Path(run.output_dir) / broadcast_object(run.name or time.strftime("%Y%m%d-%H%M%S"))
        self._check_run_folder()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=run.precision == "amp")
        self.nonfinite = NonFiniteGuard(run.max_nonfinite_steps)
        self.logger: RunLogger | None = None
        self._last_checkpoint_step: int | None = None

    @property
    def fused_optimizers(self) -> bool:
        """Whether the trainers' Adam / AdamW should be torch's fused ones on this device: they take the
        non-finite skip as a device flag (see :meth:`_update`), so steps never wait for the device."""
        return self.device.type in ("cpu", "cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast region of ``run.precision`` (training and in-training evaluation alike)."""
        return autocast_context(self.run.precision, self.device)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DistributedDataParallel when there are several processes, else itself."""
        if not self.context.enabled:
            return module
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ------------------------------------------------------------------------- the run

    def fit(self, job: TrainingJob) -> RunResult:
        """Restore (the engine's ``resume``) or seed, open the run folder, then train."""
        step = self._restore(job, self.resume) if self.resume is not None else self._fresh_start()
        self._open_run_folder(job, step)
        stop_after = job.total_steps if self.run.stop_after is None else min(job.total_steps, self.run.stop_after)
        steps_per_epoch = len(job.batches)
        batches = None
        try:
            metrics = self._evaluate(job, step) if job.evaluate_at_start and step == 0 else {}
            batches = iter(job.batches)
            self.logger.start_window(step)
            with Preemption() as preemption:
                while step < stop_after:
                    data_start = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:  # end of an epoch: the next iterator starts the following one
                        batches = iter(job.batches)
                        continue
                    batch = tuple(tensor.to(self.device, non_blocking=True) for tensor in batch)
                    compute_start = time.perf_counter()
                    output = job.step(step, batch)
                    self._update(job, output)
                    step += 1
                    self.nonfinite.record(output.nonfinite, step)
                    # Between log and checkpoint steps nothing waits for the device: the loss, the skip
                    # flag and the window's timing are read here only (the window's time is still right).
                    log_now = step % self.run.log_every == 0 or step == stop_after
                    checkpoint_now = bool(self.run.checkpoint_every) and step % self.run.checkpoint_every == 0
                    if log_now and self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    self.logger.record_step(data_seconds=compute_start - data_start,
                                            compute_seconds=time.perf_counter() - compute_start,
                                            samples=job.samples_per_step)
                    if log_now or checkpoint_now:
                        output.finite = self.nonfinite.settle()

                    if log_now:
                        self.logger.log_step(step, job.total_steps, {
                            "epoch": step / steps_per_epoch,
                            **job.log_values(output),
                            "nonfinite_steps": self.nonfinite.total,
                            **peak_memory(self.device),
                        }, world_size=self.context.world_size)
                    # No periodic checkpoint inside a non-finite streak: the last one stays the last good one.
                    if checkpoint_now and output.finite:
                        self._checkpoint(job, step)
                    if job.evaluate_every and step % job.evaluate_every == 0 and step < stop_after:
                        metrics = self._evaluate(job, step)
                    if any_rank_on_host(preemption.requested is not None):
                        log.warning("%s received: checkpoint at step %d and exit", preemption.requested or "a signal "
                                    "on another rank", step)
                        self._checkpoint(job, step)
                        return RunResult(step, metrics, preempted=True, completed=False)
            self._checkpoint(job, step)
            if job.evaluate is not None:
                metrics = self._evaluate(job, step)
            return RunResult(step, metrics, preempted=False, completed=step == job.total_steps)
        finally:
            # Close the epoch's iterator here: after an error the traceback would keep it, and with it
            # the loader workers (ShardLoader), alive until the process exits, and that exit waits for them.
            if hasattr(batches, "close"):
                batches.close()
            self.logger.close()

    def _update(self, job: TrainingJob, output: StepOutput) -> None:
        """Backward, clip, step every optimizer; or, when any rank's loss is not finite, skip the step.

        The skip is decided on the device where it can be: when no loss scaler runs and every optimizer
        takes a ``found_inf`` flag (torch's fused Adam / AdamW: they then leave parameters, moments and step
        counts as they were), the backward runs on every rank and the optimizers skip on the flag, with no
        read back to the host. Otherwise (GradScaler, or another optimizer) the flag is read and the step
        skipped before the backward, on every rank alike (DDP's backward would hang otherwise)."""
        output.nonfinite = any_rank(~torch.isfinite(output.loss.detach()))
        output.loss = torch.where(output.nonfinite, torch.nan, output.loss.detach())
        skip_on_device = not self.scaler.is_enabled() and all(
            getattr(optimizer, "_step_supports_amp_scaling", False) for optimizer in job.optimizers)
        if not skip_on_device and bool(output.nonfinite):
            for optimizer in job.optimizers:
                optimizer.zero_grad(set_to_none=True)
            return
        if output.backward is None:
            self.scaler.scale(output.objective).backward()
        else:
            output.backward(self.scaler.scale)
        if job.grad_clip_norm is not None:
            for optimizer in job.optimizers:
                self.scaler.unscale_(optimizer)
            parameters = [parameter for optimizer in job.optimizers for group in optimizer.param_groups
                          for parameter in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, job.grad_clip_norm)
        for optimizer in job.optimizers:
            if skip_on_device:
                optimizer.found_inf = output.nonfinite.to(torch.float32)
            self.scaler.step(optimizer)
            if skip_on_device:
                del optimizer.found_inf
        self.scaler.update()
        for optimizer in job.optimizers:
            optimizer.zero_grad(set_to_none=True)
        if job.after_update is not None:
            job.after_update()

    # ------------------------------------------------------------- start, resume, checkpoints

    def _fresh_start(self) -> int:
        torch.manual_seed(self.run.seed + self.context.rank)  # dropout etc. differ per rank
        return 0

    def _restore(self, job: TrainingJob, resume: str) -> int:
        path = resolve_checkpoint(resume, self.run_dir)
        # A sharded checkpoint's table rows go straight into this rank's tables, at any world size.
        state = load_checkpoint(path, map_location=self.device, tables=_table_shards(job))
        if state.get("format") != self.checkpoint_format:
            raise UsageError(f"{path}: not a {self.checkpoint_format} checkpoint (format {state.get('format')!r})")
        self._check_resumed_config(path, state["config"])
        for name, part in job.parts.items():
            if part is not None:
                part.load_state_dict(state[name])
        self.scaler.load_state_dict(state["scaler"])
        self.nonfinite.total = state["nonfinite_steps"]
        saved_world_size = len(state["rng"])
        if saved_world_size == self.context.world_size:
            set_rng_state(state["rng"][self.context.rank])
        else:  # the tables reshard; random streams cannot: each rank starts its own, as a fresh run would
            log.warning("resuming a checkpoint of %d rank(s) on %d: the tables are resharded; the random streams "
                        "restart from run.seed + step + rank", saved_world_size, self.context.world_size)
            torch.manual_seed(self.run.seed + state["step"] + self.context.rank)
        self._last_checkpoint_step = state["step"]
        log.info("resumed from %s at step %d", path, state["step"])
        return state["step"]

    def _check_run_folder(self) -> None:
        """The run-folder policy: a folder that already holds a run is continued (``resume``),
        replaced (``overwrite``, cleared when training starts) or refused, never mixed with a new run."""
        holds_run = self.context.is_main and any((self.run_dir / name).exists() for name in RUN_FILES)
        if broadcast_object(holds_run) and self.resume is None and not self.overwrite:
            raise UsageError(f"{self.run_dir} already holds a run: continue it with --resume latest, choose "
                             f"another run.name, or replace it with --overwrite")

    def _check_resumed_config(self, path: Path, saved: dict) -> None:
        """Resuming must continue the same run: the checkpoint's config and this one may differ only
        in keys that do not change what is trained (``resumable_keys``)."""
        try:
            saved = to_dict(from_dict(type(self.config), saved))  # options added since then take defaults
        except UsageError as error:
            raise UsageError(f"{path}: its config no longer loads ({error})") from None
        changes = [f"{key} {before!r} -> {after!r}" for key, before, after in
                   _differences(saved, to_dict(self.config)) if not _resumable(key, self.resumable_keys)]
        if changes:
            raise UsageError(f"resuming {path} with a changed config ({'; '.join(changes[:3])}"
                             f"{f'; {len(changes) - 3} more' if len(changes) > 3 else ''}): resume with the "
                             f"run's own config, or start a new run (another run.name)")

    def _open_run_folder(self, job: TrainingJob, step: int) -> None:
        if self.context.is_main:
            if self.overwrite and self.resume is None and self.run_dir.exists():
                log.warning("--overwrite: removing the run in %s", self.run_dir)
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temporaries(self.run_dir):
                log.warning("removed %s, a checkpoint write a crash interrupted", stale)
        resumed_at = step if self.resume is not None else None
        self.logger = RunLogger(self.run_dir, enabled=self.context.is_main, line_keys=self.line_keys,
                                resumed_at=resumed_at)
        if self.context.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
            if resumed_at is not None:  # evaluations after the checkpoint are redone, like the steps
                for record in (self.run_dir / "eval").glob("step_*.json"):
                    if int(record.stem.removeprefix("step_")) > resumed_at:
                        record.unlink()
        log.info("run folder %s, %d process(es), device %s, precision %s", self.run_dir, self.context.world_size,
                 self.device, self.run.precision)
        for line in job.description:
            log.info("%s", line)

    def _checkpoint(self, job: TrainingJob, step: int) -> None:
        """Write the checkpoint of ``step`` (every rank calls this and writes its table rows; rank 0 the rest),
        unless it exists."""
        if step == self._last_checkpoint_step:
            return
        self.nonfinite.settle()  # the skipped-step count it saves (raises on a streak)
        state = {"format": self.checkpoint_format, **job.metadata,
                 **{name: None if part is None else part.state_dict() for name, part in job.parts.items()},
                 "scaler": self.scaler.state_dict()}
        tables = _table_shards(job)
        for key in tables:  # each rank writes its own rows of these; rank 0 the rest
            part, name = key.split("/", 1)
            del state[part][name]
        path = save_run_checkpoint(state, tables, run_dir=self.run_dir, step=step, keep_last=self.run.keep_last,
                                   config=to_dict(self.config), nonfinite_steps=self.nonfinite.total)
        self._last_checkpoint_step = step
        if path is not None:
            log.info("checkpoint %s", path)

    # ------------------------------------------------------------------------ evaluation

    def _evaluate(self, job: TrainingJob, step: int) -> dict[str, float]:
        """The job's evaluation, logged and written to eval/step_N.json; training RNG untouched."""
        if job.evaluate is None:
            return {}
        with rng_preserved():
            metrics = job.evaluate()
        self.logger.log_eval(step, metrics)
        if self.context.is_main:
            folder = self.run_dir / "eval"
            folder.mkdir(exist_ok=True)
            (folder / f"step_{step:09d}.json").write_text(json.dumps({"step": step, "metrics": metrics}, indent=1))
        return metrics


def training_command(argv: list[str] | None, *, prog: str, description: str, config_type: type,
                     train: Callable[..., dict[str, float]], config_help: str,
                     overrides_help: str) -> tuple[int, dict[str, float]]:
    """A trainer's command line: ``[--config YAML] [--resume SPEC] [key.sub=value ...]`` -> train.

    Returns (exit status, final metrics): 1 when training stopped on non-finite losses (the last
    good checkpoint stays), else 0 after every rank has finished and the process group is closed.
    """
    parser = UsageArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument("--resume", default=None,
                        help="'latest' (this run's newest checkpoint), a run folder or one checkpoint (a step_N "
                             "folder, or a single file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in output_dir/name (by default such a folder is refused)")
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config(config_type, args.config, args.overrides)
    try:
        metrics = train(config, resume=args.resume, overwrite=args.overwrite)
    except NonFiniteLossError as error:
        log.error("%s", error)
        return 1, {}
    close_distributed()
    return 0, metrics
