"""Training loader: WebDataset shards -> batches of (images, token ids, sample ids).

Built on webdataset 1.x's public stages (``tarfile_samples``, ``split_by_node``,
``split_by_worker``, ``shuffle``, ``utils.pytorch_worker_info``); open_clip's own trainer
pipeline breaks on webdataset >= 0.2.96, so we do not use it.

Per worker and epoch the stream is::

    shard urls -> tar samples -> shuffle buffer (raw bytes) -> decode, check, transform,
    tokenize -> batches of batch_size (partial batches dropped) -> first N batches

Modes:

- resampled (default): each worker draws shards with replacement, forever; the epoch is
  ``epoch_samples`` (all ranks together) cut into equal per-rank batch counts.
  Several sources mix by weight.
- finite: :mod:`clipdro.data.plan` cuts the shards at the sample level into one fixed range per
  rank and, per epoch, one range per loader worker; every rank yields the same number of
  batches (unequal counts would hang DDP) and at most one global batch of samples is unused.

Rank batch b comes from loader worker b % workers; the loader re-orders batches by that index.

Every random choice (shard draws and order, shuffle buffer) draws from a generator seeded by
``(seed, epoch, rank, worker)``, and the random transform of a sample from one seeded by that and
the sample's position in the worker's raw stream, so an epoch's stream depends on nothing else:
same seed -> same batches, and a resumed run rebuilds epoch e exactly. Resuming passes over the
raw samples a worker already delivered without decoding or transforming them (see
:class:`ShardLoader`).

Corrupt input never stops training: bad shards and samples are skipped and counted (see
:data:`SKIP_REASONS`); the counts travel with each batch to the main process and add up
in :attr:`ShardLoader.counts`. Only data where nothing at all is usable (10,000 skips in a
row without a good sample) raises, since waiting would hang forever.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import random
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from clipdro.data.config import DataSource, PipelineConfig
from clipdro.data.manifest import Manifest, is_url
from clipdro.data.plan import ShardPiece, derive_seed, plan_finite, worker_batch_counts, worker_pieces
from clipdro.data.shard_reader import ShardRead, read_shard
from clipdro.errors import UsageError

log = logging.getLogger(__name__)

SKIP_REASONS: dict[str, str] = {
    "bad_shard": "a shard could not be opened or read to its end (missing, truncated, not a tar, a URL "
                 "that still failed after its retries); its samples before the damage are kept",
    "empty_shard": "a readable shard (or the part of it one worker reads) held no sample",
    "missing_image": "no .jpg/.jpeg/.png/.webp member",
    "bad_image": "the image bytes do not decode",
    "missing_caption": "no .txt member",
    "empty_caption": "the caption is empty or whitespace",
    "bad_text": "the caption is not valid UTF-8",
    "bad_id": "no valid sample id (json sample_id or integer key), or one outside [0, num_samples)",
}
# Not a skip: samples read a second time in finite mode to fill a worker's N batches
# after skips left its shards short.
REPEATED = "repeated"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

Transform = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass
class LoaderState:
    """Where a run stands in the data: enough to rebuild the rest of the current epoch."""

    epoch: int
    batches_done: int  # batches of ``epoch`` this rank has already received
    seed: int
    resampled: bool
    layout: list[int]  # [world_size, workers, batch_size, batches_per_rank]: the stream depends on it
    # positions[rank][worker]: raw samples the worker had passed when it made its last batch among
    # the first batches_done (None in states of loaders before these positions existed)
    positions: list[list[int]] | None = None


class TrainBatch(NamedTuple):
    images: torch.Tensor  # [B, 3, H, W] float, from the transform
    tokens: torch.Tensor  # [B, context_length] long
    sample_ids: torch.Tensor  # [B] long, rows of the per-sample DRO tables


class _Skip(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Source:
    manifest: Manifest
    urls: list[str]
    counts: list[int]
    id_offset: int  # ids of this source occupy [id_offset, id_offset + manifest.num_samples)
    weight: float


def _shard_name(location: str) -> str:
    """A shard as the loader names it: a URL unchanged (``Path`` would collapse its ``//``), a path normalised."""
    return location if is_url(location) else str(Path(location))


def _pattern_manifest(source: DataSource, urls: list[str]) -> Manifest:
    """The manifest that lists a brace pattern's shards: ``source.manifest``, else the shards' folder's."""
    if source.manifest is not None:
        return Manifest.load(source.manifest)
    if any(is_url(url) for url in urls):
        raise UsageError(f"shard pattern {source.shards!r} names URLs: set this source's manifest to the "
                         "manifest that lists them (clipdro data index PATTERN --out FILE writes one)")
    folders = {Path(url).parent for url in urls}
    if len(folders) != 1:
        raise UsageError(f"shard pattern {source.shards!r} spans several folders; name one folder's shards")
    return Manifest.load(folders.pop())


def _resolve_source(source: DataSource, id_offset: int) -> _Source:
    location = source.shards
    if "{" in location or location.endswith(".tar") or is_url(location):
        urls = [_shard_name(url) for url in wds.shardlists.expand_urls(location)]
        manifest = _pattern_manifest(source, urls)
        listed = {_shard_name(manifest.shard_url(shard)): shard.num_samples for shard in manifest.shards}
        unknown = [url for url in urls if url not in listed]
        if unknown:
            raise UsageError(f"shard {unknown[0]} is not in {manifest.root / 'manifest.json'}")
        counts = [listed[url] for url in urls]
    else:
        manifest = Manifest.load(location)
        urls = [_shard_name(url) for url in manifest.shard_urls()]
        counts = [shard.num_samples for shard in manifest.shards]
    manifest.check_files()
    if sum(counts) == 0:
        raise UsageError(f"source {location!r}: its manifest lists no samples in these shards")
    if not source.weight > 0:
        raise UsageError(f"source {location!r}: weight must be positive, got {source.weight}")
    return _Source(manifest, urls, counts, id_offset, source.weight)


def _resolve_sources(sources: list[DataSource]) -> list[_Source]:
    """Every source with its id offset: source i's ids follow all ids of sources 0..i-1."""
    resolved: list[_Source] = []
    manifests: set[Path] = set()
    for source in sources:
        current = _resolve_source(source, id_offset=sum(s.manifest.num_samples for s in resolved))
        manifest_path = (current.manifest.root / "manifest.json").resolve()
        if manifest_path in manifests:
            raise UsageError(f"two sources use {manifest_path}; list its shards in one source")
        manifests.add(manifest_path)
        resolved.append(current)
    return resolved


def _call_seeded(function: Transform, image: Image.Image, seed: int) -> torch.Tensor:
    """``function(image)`` with torch's global CPU generator seeded by ``seed``, restored afterwards.

    open_clip's train transforms draw from torch's global generator. Seeding it per sample makes a
    sample's augmentation a function of (seed, epoch, rank, worker, position in the raw stream), so
    a resumed worker can pass over earlier samples without transforming them; with num_workers=0 it
    leaves the trainer's global RNG stream untouched.
    """
    outer = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        return function(image)
    finally:
        torch.set_rng_state(outer)


class _SkipCounter:
    """Skips of one worker in one epoch; ``take`` hands over what happened since the last call."""

    def __init__(self, max_failures_in_a_row: int):
        self._counts: Counter[str] = Counter()
        self._failures_in_a_row = 0
        self._max_failures_in_a_row = max_failures_in_a_row

    def skip(self, reason: str) -> None:
        self._counts[reason] += 1
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self._max_failures_in_a_row:
            raise RuntimeError(f"{self._failures_in_a_row} shards and samples in a row were unusable "
                               f"(latest counts {dict(self._counts)}): the data or the manifest is broken")

    def repeated(self) -> None:
        self._counts[REPEATED] += 1

    def good(self) -> None:
        self._failures_in_a_row = 0

    def take(self) -> dict[str, int]:
        counts = dict(self._counts)
        self._counts.clear()
        return counts


def _collate(examples: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
    images, tokens, ids = zip(*examples, strict=True)
    return torch.stack(images), torch.stack(tokens), torch.tensor(ids, dtype=torch.long)


class ShardStream(IterableDataset):
    """The per-rank sample stream; iterate it through :class:`ShardLoader`."""

    max_failures_in_a_row = 10_000
    retry_delay_s = 1.0  # before retry k of a failed shard URL: k times this

    def __init__(self, config: PipelineConfig, transform: Transform, tokenizer: Tokenizer):
        if config.batch_size < 1 or config.num_workers < 0 or config.shuffle_buffer < 1 or config.shard_retries < 0:
            raise UsageError("batch_size and shuffle_buffer must be >= 1, num_workers and shard_retries >= 0")
        if not config.sources:
            raise UsageError("no data sources")
        if not config.resampled and any(source.weight != 1.0 for source in config.sources):
            raise UsageError("source weights need resampled mode; finite mode reads every shard once")
        self.config = config
        self._transform = transform
        self._tokenizer = tokenizer
        self._sources = _resolve_sources(config.sources)
        self.num_samples = sum(source.manifest.num_samples for source in self._sources)
        self._urls = [url for source in self._sources for url in source.urls]
        self._source_of_url = {url: index for index, source in enumerate(self._sources)
                               for url in source.urls}
        # Resampled draws: shard j of source i with probability proportional to
        # w_i * c_j / sum_k c_k^2 (c = shard sample counts). Within a source that is
        # proportional to size (each sample equally likely), and the expected samples per
        # draw from source i, sum_j c_j * p_j, is proportional to w_i: weights are sample shares.
        draw_weights = [source.weight * count / max(1, sum(c * c for c in source.counts))
                        for source in self._sources for count in source.counts]
        self._cum_draw_weights = list(itertools.accumulate(draw_weights))
        self._shard_counts = dict(zip(self._urls, (c for s in self._sources for c in s.counts), strict=True))
        self.rank, self.world_size, _, _ = wds.utils.pytorch_worker_info()
        self.workers = max(1, config.num_workers)
        self.finite_plan = None if config.resampled else plan_finite(
            self._urls, [self._shard_counts[url] for url in self._urls], self.world_size, config.batch_size,
            config.seed, config.epoch_samples)
        self.batches_per_rank = self._plan_epoch()
        # Position of the next iteration; ShardLoader sets them before each epoch.
        self.epoch = 0
        self.batches_done = 0
        self.resume_positions = [0] * self.workers  # raw samples each worker passed by batch batches_done

    def __len__(self) -> int:
        """Batches per rank and epoch."""
        return self.batches_per_rank

    @property
    def layout(self) -> list[int]:
        return [self.world_size, self.workers, self.config.batch_size, self.batches_per_rank]

    def planned_pieces(self, rank: int, worker: int, epoch: int) -> list[ShardPiece]:
        """Finite mode: the shard pieces loader worker ``worker`` of ``rank`` reads in ``epoch``."""
        return worker_pieces(self.finite_plan, rank, self.workers, self.config.seed, epoch)[worker]

    def _plan_epoch(self) -> int:
        """Batches per rank and epoch; logs the arithmetic and refuses impossible layouts."""
        config = self.config
        per_step = self.world_size * config.batch_size
        layout = f"{self.world_size} ranks x {self.workers} workers"
        if config.resampled:
            if config.epoch_samples is None:
                raise UsageError("resampled mode needs epoch_samples (samples per epoch, all ranks together)")
            per_rank = config.epoch_samples // per_step
            if per_rank == 0:
                raise UsageError(f"epoch_samples {config.epoch_samples} is less than one batch per rank: "
                                 f"{self.world_size} ranks x batch {config.batch_size} = {per_step}")
        else:
            per_rank = self.finite_plan.batches_per_rank
        used = per_rank * per_step
        shard_samples = sum(self._shard_counts.values())
        log.info("data: %s mode, %d sources, %d shards, %d samples in shards, ids in [0, %d); epoch = %s "
                 "x %d batches x %d = %d samples%s", "resampled" if config.resampled else "finite",
                 len(self._sources), len(self._urls), shard_samples, self.num_samples, layout, per_rank,
                 config.batch_size, used,
                 f" of {config.epoch_samples} requested" if config.epoch_samples is not None else
                 f" ({shard_samples - used} left out: less than one global batch)")
        return per_rank

    # ---- inside a worker -------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """Yields (images, tokens, ids, rank batch index, raw position after the batch, skip counts since
        the previous batch). A resumed worker first passes over the raw samples it delivered before,
        without decoding them: the rest of its stream is then exactly the uninterrupted one."""
        rank, _, worker, workers = wds.utils.pytorch_worker_info()
        counter = _SkipCounter(self.max_failures_in_a_row)
        delivered = worker_batch_counts(self.batches_done, workers)[worker]
        raw = enumerate(self._raw_samples(rank, worker, counter))
        for _ in itertools.islice(raw, self.resume_positions[worker] if delivered else 0):
            pass
        counter.take()  # skips among the passed samples were reported with the batches delivered before
        examples = self._examples(raw, counter, rank, worker)
        for local_index in range(delivered, worker_batch_counts(self.batches_per_rank, workers)[worker]):
            batch = list(itertools.islice(examples, self.config.batch_size))
            images, tokens, ids = _collate([example[:3] for example in batch])
            yield images, tokens, ids, local_index * workers + worker, batch[-1][3], counter.take()

    def _raw_samples(self, rank: int, worker: int, counter: _SkipCounter) -> Iterator[dict]:
        def seed(*purpose: Any) -> int:
            return derive_seed(self.config.seed, self.epoch, rank, worker, *purpose)

        if self.config.resampled:
            rng = random.Random(seed("shards"))
            draws = (ShardPiece(rng.choices(self._urls, cum_weights=self._cum_draw_weights)[0], 0, None, 0)
                     for _ in itertools.count())
            return self._shuffled(self._read_pieces(draws, counter, repeated=False), seed("samples"))
        return self._finite_samples(self.planned_pieces(rank, worker, self.epoch), seed, counter)

    def _shuffled(self, samples: Iterator[dict], seed: int) -> Iterator[dict]:
        buffer = self.config.shuffle_buffer
        return wds.shuffle(buffer, initial=buffer, rng=random.Random(seed))(samples)

    def _finite_samples(self, pieces: list[ShardPiece], seed: Callable[..., int],
                        counter: _SkipCounter) -> Iterator[dict]:
        """This worker's pieces, in the plan's order; passes after the first (reshuffled) only top up skips.

        Each pass has its own shuffle buffer, which drains at the end of the pass, so every
        sample of pass 0 is yielded before any repeat.
        """
        for pass_index in itertools.count():
            order = list(pieces)
            if pass_index > 0:
                random.Random(seed("pieces", pass_index)).shuffle(order)
            samples = self._read_pieces(iter(order), counter, repeated=pass_index > 0)
            yield from self._shuffled(samples, seed("samples", pass_index))

    def _read_pieces(self, pieces: Iterator[ShardPiece], counter: _SkipCounter, repeated: bool) -> Iterator[dict]:
        for piece in pieces:
            read = ShardRead(piece.url)
            produced = 0
            for sample in read_shard(piece.url, read, piece.start, piece.stop, retries=self.config.shard_retries,
                                     retry_delay_s=self.retry_delay_s, url_commands=self.config.url_commands,
                                     on_retry=_log_retry):
                produced += 1
                if repeated:
                    counter.repeated()
                yield sample
            # A damaged shard split into pieces is counted once: by the piece whose range holds the damage.
            if read.error is not None and (piece.start == 0 or read.intact >= piece.start):
                log.warning("shard %s: %s (%d samples read before it; %d retries)", piece.url, read.failures[-1],
                            read.intact, read.retries)
                counter.skip("bad_shard")
            elif read.error is None and produced == 0:
                counter.skip("empty_shard")

    def _examples(self, raw: Iterator[tuple[int, dict]], counter: _SkipCounter, rank: int,
                  worker: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int]]:
        """(image, tokens, id, raw position after the sample) of the good samples of ``raw``."""
        for position, sample in raw:
            try:
                sample_id = _sample_id(self._sources[self._source_of_url[sample["__url__"]]], sample)
                caption = _caption(sample)
                image = _decode_image(sample)
            except _Skip as skip:
                counter.skip(skip.reason)
                continue
            counter.good()
            # Transform and tokenizer errors on a decoded image are bugs, not bad data: they raise.
            transform_seed = derive_seed(self.config.seed, self.epoch, rank, worker, "transform", position)
            yield (_call_seeded(self._transform, image, transform_seed), self._tokenizer([caption])[0], sample_id,
                   position + 1)


def _log_retry(read: ShardRead) -> None:
    log.warning("shard %s failed after %d samples (%s); retry %d", read.url, read.intact, read.failures[-1],
                read.retries)


def _sample_id(source: _Source, sample: dict) -> int:
    """The global id of a raw tar sample of ``source`` (its manifest's id rule plus the source's offset)."""
    try:
        if source.manifest.id_rule == "dense":
            local_id = json.loads(sample["json"])["sample_id"]
        else:
            local_id = int(sample["__key__"].rsplit("/", 1)[-1])
    except (KeyError, ValueError, TypeError):
        raise _Skip("bad_id") from None
    if type(local_id) is not int or not 0 <= local_id < source.manifest.num_samples:
        raise _Skip("bad_id")
    return source.id_offset + local_id


def _caption(sample: dict) -> str:
    if "txt" not in sample:
        raise _Skip("missing_caption")
    try:
        caption = sample["txt"].decode("utf-8")
    except UnicodeDecodeError:
        raise _Skip("bad_text") from None
    if not caption.strip():
        raise _Skip("empty_caption")
    return caption.strip()


def _decode_image(sample: dict) -> Image.Image:
    ext = next((ext for ext in IMAGE_EXTS if ext in sample), None)
    if ext is None:
        raise _Skip("missing_image")
    try:
        with Image.open(io.BytesIO(sample[ext])) as image:
            return image.convert("RGB")  # convert() forces the full decode inside the try
    except Exception:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError, ...)
        raise _Skip("bad_image") from None


def _ignore_preemption_signals(worker_id: int) -> None:
    """Loader workers ignore SIGTERM and SIGUSR1. A cluster (Slurm, Kubernetes, ``timeout``,
    torchrun) signals the whole process group; the main process then finishes its step and
    writes a checkpoint (clipdro.engine.Preemption), which needs the workers alive until it
    shuts them down. (torch's own worker handler would die on a SIGTERM not sent by the parent.)
    Workers still exit when the main process ends, or dies, as usual."""
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def _stop_workers(worker_batches: Iterator) -> None:
    """Stop the loader workers of ``worker_batches`` now, not when it is garbage-collected.

    The workers ignore SIGTERM (:func:`_ignore_preemption_signals`), so the terminate() that
    multiprocessing's exit handler sends them cannot end them. When an error (in a worker or in
    the training step) ends an epoch early, the traceback keeps this iterator alive past that
    handler, which would then wait for the workers forever: the process would hang instead of
    exiting with the error. torch's own shutdown (idempotent; used when an epoch ends) stops them.
    """
    shutdown = getattr(worker_batches, "_shutdown_workers", None)  # absent with num_workers=0
    if shutdown is not None:
        shutdown()


class ShardLoader(DataLoader):
    """A torch DataLoader over a :class:`ShardStream` that yields :class:`TrainBatch` es.

    Each iteration yields the rest of epoch :attr:`epoch` (from batch :attr:`batches_done`)
    and, when it runs to the end, moves on to the next epoch. Batches are re-ordered by
    their rank batch index, so a resumed epoch continues in exactly the uninterrupted order.

    Resume: every batch reports how many raw samples its worker had passed when it was complete
    (:attr:`positions`). A resumed worker passes over that many raw samples of its rebuilt stream
    (tar members are read, nothing is decoded, transformed or tokenized), then continues: the
    shuffle buffer has seen the same samples, and the transform seeds depend on raw positions only.
    """

    def __init__(self, stream: ShardStream, pin_memory: bool = False):
        # A private generator: the DataLoader draws its worker base seed from it instead of
        # the global RNG, which the trainer owns (our streams are seeded on their own).
        super().__init__(stream, batch_size=None, num_workers=stream.config.num_workers,
                         pin_memory=pin_memory, persistent_workers=False, worker_init_fn=_ignore_preemption_signals,
                         generator=torch.Generator().manual_seed(stream.config.seed))
        self.epoch = 0
        self.batches_done = 0
        self.positions = [0] * stream.workers  # this rank's workers: raw samples passed by batch batches_done
        self.counts: Counter[str] = Counter()  # skips (SKIP_REASONS) and repeats on this rank, all epochs

    def __iter__(self) -> Iterator[TrainBatch]:
        stream: ShardStream = self.dataset
        # Workers start inside super().__iter__() and copy the stream with this position.
        stream.epoch, stream.batches_done, stream.resume_positions = self.epoch, self.batches_done, list(self.positions)
        waiting: dict[int, tuple[TrainBatch, int]] = {}
        worker_batches = super().__iter__()
        try:
            for images, tokens, ids, index, position, counts in worker_batches:
                self.counts.update(counts)
                waiting[index] = TrainBatch(images, tokens, ids), position
                while self.batches_done in waiting:
                    batch, self.positions[self.batches_done % stream.workers] = waiting.pop(self.batches_done)
                    self.batches_done += 1
                    yield batch
        finally:
            _stop_workers(worker_batches)
        assert not waiting, "a loader worker ended before its share of the epoch"
        self.epoch += 1
        self.batches_done = 0
        self.positions = [0] * stream.workers

    def state_dict(self) -> dict[str, Any]:
        """The data position. Gathers every rank's worker positions (a collective: call it on every rank,
        as clipdro.engine does), so the state saved by rank 0 resumes every rank."""
        from clipdro.distributed import gather_objects

        stream: ShardStream = self.dataset
        return asdict(LoaderState(epoch=self.epoch, batches_done=self.batches_done, seed=stream.config.seed,
                                  resampled=stream.config.resampled, layout=stream.layout,
                                  positions=gather_objects(list(self.positions))))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved position. A changed layout restarts the saved epoch at batch 0."""
        saved = LoaderState(**state)
        stream: ShardStream = self.dataset
        if (saved.seed, saved.resampled) != (stream.config.seed, stream.config.resampled):
            raise UsageError(f"checkpoint data position has seed {saved.seed} and "
                             f"resampled={saved.resampled}; "
                             f"the config has {stream.config.seed} and {stream.config.resampled}")
        self.epoch, self.batches_done = saved.epoch, saved.batches_done
        self.positions = [0] * stream.workers
        if list(saved.layout) != stream.layout:
            log.warning("data layout changed from %s to %s [ranks, workers, batch, batches/rank]: epoch %d "
                        "restarts at its first batch instead of batch %d", saved.layout, stream.layout,
                        saved.epoch, saved.batches_done)
            self.batches_done = 0
        elif saved.positions is None or len(saved.positions) != stream.world_size:
            log.warning("the checkpoint's data position has no worker positions for %d ranks (an older loader, or "
                        "saved without torch.distributed): epoch %d restarts at its first batch instead of batch %d",
                        stream.world_size, saved.epoch, saved.batches_done)
            self.batches_done = 0
        else:
            self.positions = list(saved.positions[stream.rank])


def build_train_loader(config: PipelineConfig, transform: Transform, tokenizer: Tokenizer,
                       pin_memory: bool = False) -> ShardLoader:
    """The training loader for this rank (rank and world size from RANK/WORLD_SIZE or torch.distributed)."""
    return ShardLoader(ShardStream(config, transform, tokenizer), pin_memory=pin_memory)


class RawSample(NamedTuple):
    """One training sample as the training stream sees it, before decoding and tokenizing."""

    sample_id: int  # global id: the row of the per-sample DRO tables
    caption: str  # stripped, exactly the text the training stream tokenizes
    image: bytes  # the encoded image (it decodes: undecodable samples are skipped)


def read_samples(sources: list[DataSource], limit: int | None = None) -> Iterator[RawSample]:
    """The samples of ``sources`` once each, in source then manifest shard order, without shuffling.

    For analyses of a training set (e.g. the temperature report), not for training: one process,
    no workers. Ids, captions and skip rules are the training stream's own, so a sample's id and
    caption here are the ones it was trained under. Samples the stream would skip are passed over
    silently; an unreadable shard gets a warning and the rest of it is passed over (URLs are opened
    with the default commands and retries). Stops after ``limit`` samples when given.
    """
    produced = 0
    for source in _resolve_sources(sources):
        for url in source.urls:
            read = ShardRead(url)
            for sample in read_shard(url, read, retries=PipelineConfig.shard_retries, on_retry=_log_retry):
                if limit is not None and produced >= limit:
                    return
                try:
                    sample_id, caption = _sample_id(source, sample), _caption(sample)
                    _decode_image(sample)
                except _Skip:
                    continue
                extension = next(ext for ext in IMAGE_EXTS if ext in sample)
                produced += 1
                yield RawSample(sample_id, caption, sample[extension])
            if read.error is not None:
                log.warning("shard %s: %s (%d samples read before it)", url, read.failures[-1], read.intact)
