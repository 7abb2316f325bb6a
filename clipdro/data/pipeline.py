"""Training loader: WebDataset shards -> batches of (images, token ids, sample ids).

Built on webdataset 1.x's public stages (``tarfile_samples``, ``split_by_node``,
``split_by_worker``, ``shuffle``, ``utils.pytorch_worker_info``); open_clip's own trainer
pipeline breaks on webdataset >= 0.2.96, so we do not use it.

Per worker and epoch the stream is::

    shard urls -> tar samples -> shuffle buffer (raw bytes) -> decode, check, transform,
    tokenize -> batches of batch_size (partial batches dropped) -> first N batches

Modes:

- resampled (default): each worker draws shards with replacement, forever; the epoch is
  ``epoch_samples`` (all ranks together) cut into equal per-worker batch counts.
  Several sources mix by weight.
- finite: the shards are split by rank (``wds.split_by_node``) then by worker
  (``wds.split_by_worker``); each worker reads its shards in a per-epoch order. Every
  worker yields the same number of batches N, at most what the smallest worker share
  holds, so all ranks take the same number of steps (unequal counts would hang DDP).

Every random choice (shard draws and order, shuffle buffer, random transforms) draws
from a generator seeded by ``(seed, epoch, rank, worker)``, so an epoch's stream depends
on nothing else: same seed -> same batches, and a resumed run rebuilds epoch e exactly.

Corrupt input never stops training: bad shards and samples are skipped and counted (see
:data:`SKIP_REASONS`); the counts travel with each batch to the main process and add up
in :attr:`ShardLoader.counts`. Only data where nothing at all is usable (10,000 skips in a
row without a good sample) raises, since waiting would hang forever.
"""

from __future__ import annotations

import hashlib
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
from clipdro.data.manifest import Manifest
from clipdro.errors import UsageError

log = logging.getLogger(__name__)

SKIP_REASONS: dict[str, str] = {
    "bad_shard": "a shard could not be opened or read to its end (missing, truncated, not a tar); "
                 "its samples before the damage are kept",
    "empty_shard": "a readable shard held no sample",
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
    layout: list[int]  # [world_size, workers, batch_size, batches_per_worker]: the stream depends on it


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


def _derive_seed(*parts: Any) -> int:
    """A 64-bit seed from the run seed and a position (epoch, rank, worker, purpose)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _resolve_source(source: DataSource, id_offset: int) -> _Source:
    location = source.shards
    if "{" in location or location.endswith(".tar"):
        urls = [str(Path(url)) for url in wds.shardlists.expand_urls(location)]
        folders = {Path(url).parent for url in urls}
        if len(folders) != 1:
            raise UsageError(f"shard pattern {location!r} spans several folders; name one folder's shards")
        manifest = Manifest.load(folders.pop())
        listed = {str(Path(manifest.shard_url(shard))): shard.num_samples for shard in manifest.shards}
        unknown = [url for url in urls if url not in listed]
        if unknown:
            raise UsageError(f"shard {unknown[0]} is not in {manifest.root / 'manifest.json'}")
        counts = [listed[url] for url in urls]
    else:
        manifest = Manifest.load(location)
        urls, counts = manifest.shard_urls(), [shard.num_samples for shard in manifest.shards]
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


class _IsolatedTorchRng:
    """A private torch CPU generator state for the random transforms.

    open_clip's train transforms draw from torch's global generator. Swapping our own state
    in around each call makes the augmentations a function of (seed, epoch, rank, worker)
    and, with num_workers=0, leaves the trainer's global RNG stream untouched.
    """

    def __init__(self, seed: int):
        self._state = torch.Generator().manual_seed(seed).get_state()

    def call(self, function: Transform, image: Image.Image) -> torch.Tensor:
        outer = torch.get_rng_state()
        torch.set_rng_state(self._state)
        try:
            return function(image)
        finally:
            self._state = torch.get_rng_state()
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


def _worker_share(batches_done: int, worker: int, workers: int) -> int:
    """How many of the first ``batches_done`` rank batches came from ``worker``.

    The DataLoader hands out batches round-robin, so rank batch b is local batch b // workers
    of worker b % workers.
    """
    return max(0, (batches_done - worker + workers - 1) // workers)


class ShardStream(IterableDataset):
    """The per-rank sample stream; iterate it through :class:`ShardLoader`."""

    max_failures_in_a_row = 10_000

    def __init__(self, config: PipelineConfig, transform: Transform, tokenizer: Tokenizer):
        if config.batch_size < 1 or config.num_workers < 0 or config.shuffle_buffer < 1:
            raise UsageError("batch_size and shuffle_buffer must be >= 1 and num_workers >= 0")
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
        _, self.world_size, _, _ = wds.utils.pytorch_worker_info()
        self.workers = max(1, config.num_workers)
        self.batches_per_worker = self._plan_epoch()
        # Position of the next iteration; ShardLoader sets them before each epoch.
        self.epoch = 0
        self.batches_done = 0

    def __len__(self) -> int:
        """Batches per rank and epoch."""
        return self.batches_per_worker * self.workers

    @property
    def layout(self) -> list[int]:
        return [self.world_size, self.workers, self.config.batch_size, self.batches_per_worker]

    def planned_shards(self, rank: int, worker: int) -> list[str]:
        """Finite mode: the shards of (rank, worker), as wds.split_by_node then split_by_worker slice them."""
        return self._urls[rank::self.world_size][worker::self.workers]

    def _plan_epoch(self) -> int:
        """Batches per worker and epoch; logs the arithmetic and refuses impossible layouts."""
        config = self.config
        per_round = self.world_size * self.workers * config.batch_size
        layout = f"{self.world_size} ranks x {self.workers} workers"
        if config.resampled:
            if config.epoch_samples is None:
                raise UsageError("resampled mode needs epoch_samples (samples per epoch, all ranks together)")
            per_worker = config.epoch_samples // per_round
            if per_worker == 0:
                raise UsageError(f"epoch_samples {config.epoch_samples} is less than one batch per worker: "
                                 f"{layout} x batch {config.batch_size} = {per_round}")
        else:
            if len(self._urls) < self.world_size * self.workers:
                raise UsageError(f"finite mode needs a shard per worker: {layout} = "
                                 f"{self.world_size * self.workers} workers but {len(self._urls)} shards; "
                                 "use fewer workers, smaller shards or resampled mode")
            shares = [sum(self._shard_counts[url] for url in self.planned_shards(rank, worker))
                      for rank in range(self.world_size) for worker in range(self.workers)]
            capacity = min(shares) // config.batch_size
            if capacity == 0:
                raise UsageError(f"the smallest worker share ({min(shares)} samples) is less than one batch "
                                 f"of {config.batch_size}")
            per_worker = capacity if config.epoch_samples is None else config.epoch_samples // per_round
            if not 0 < per_worker <= capacity:
                raise UsageError(f"epoch_samples {config.epoch_samples} needs {per_worker} batches per "
                                 f"worker; finite mode allows 1..{capacity} (smallest worker share "
                                 f"{min(shares)} samples, {layout}, batch {config.batch_size})")
        used = per_worker * per_round
        shard_samples = sum(self._shard_counts.values())
        log.info("data: %s mode, %d sources, %d shards, %d samples in shards, ids in [0, %d); epoch = %s "
                 "x %d batches x %d = %d samples%s", "resampled" if config.resampled else "finite",
                 len(self._sources), len(self._urls), shard_samples, self.num_samples, layout, per_worker,
                 config.batch_size, used,
                 f" of {config.epoch_samples} requested" if config.epoch_samples is not None else
                 f" ({shard_samples - used} left out by rounding and unequal worker shares)")
        return per_worker

    # ---- inside a worker -------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        """Yields (images, tokens, ids, rank batch index, skip counts since the previous batch)."""
        rank, _, worker, workers = wds.utils.pytorch_worker_info()
        counter = _SkipCounter(self.max_failures_in_a_row)
        already_delivered = _worker_share(self.batches_done, worker, workers)
        batches = itertools.islice(self._worker_batches(rank, worker, counter), self.batches_per_worker)
        for local_index, (images, tokens, ids) in enumerate(batches):
            counts = counter.take()
            if local_index >= already_delivered:  # the counts of re-made batches were reported before
                yield images, tokens, ids, local_index * workers + worker, counts

    def _worker_batches(self, rank: int, worker: int,
                        counter: _SkipCounter) -> Iterator[tuple[torch.Tensor, ...]]:
        def seed(*purpose: Any) -> int:
            return _derive_seed(self.config.seed, self.epoch, rank, worker, *purpose)

        samples = self._resampled_samples(seed, counter) if self.config.resampled else \
            self._finite_samples(rank, worker, seed, counter)
        examples = self._examples(samples, counter, _IsolatedTorchRng(seed("transform")))
        # Batch without look-ahead (wds.batched reads one sample past each batch): a worker
        # reads nothing beyond its last batch, so finite mode opens no extra shard.
        batch: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        for example in examples:
            batch.append(example)
            if len(batch) == self.config.batch_size:
                yield _collate(batch)
                batch = []

    def _shuffled(self, samples: Iterator[dict], seed: int) -> Iterator[dict]:
        buffer = self.config.shuffle_buffer
        return wds.shuffle(buffer, initial=buffer, rng=random.Random(seed))(samples)

    def _resampled_samples(self, seed: Callable[..., int], counter: _SkipCounter) -> Iterator[dict]:
        rng = random.Random(seed("shards"))
        draws = (rng.choices(self._urls, cum_weights=self._cum_draw_weights)[0] for _ in itertools.count())
        return self._shuffled(self._read_shards(draws, counter, repeated=False), seed("samples"))

    def _finite_samples(self, rank: int, worker: int, seed: Callable[..., int],
                        counter: _SkipCounter) -> Iterator[dict]:
        """This worker's shards in a per-epoch order; passes after the first only top up skips.

        Each pass has its own shuffle buffer, which drains at the end of the pass, so every
        sample of pass 0 is yielded before any repeat.
        """
        mine = list(wds.split_by_worker(wds.split_by_node(self._urls)))
        assert mine == self.planned_shards(rank, worker), "worker shards differ from the epoch plan"
        for pass_index in itertools.count():
            order = list(mine)
            random.Random(seed("shards", pass_index)).shuffle(order)
            samples = self._read_shards(iter(order), counter, repeated=pass_index > 0)
            yield from self._shuffled(samples, seed("samples", pass_index))

    def _read_shards(self, urls: Iterator[str], counter: _SkipCounter, repeated: bool) -> Iterator[dict]:
        errors: list[Exception] = []

        def keep_going(error: Exception) -> bool:
            errors.append(error)
            return True

        for url in urls:
            errors.clear()
            produced = 0
            for sample in wds.tarfile_samples([{"url": url}], handler=keep_going):
                produced += 1
                if repeated:
                    counter.repeated()
                yield sample
            if errors:
                log.warning("shard %s: %s (%d samples read before it)", url, errors[0], produced)
                counter.skip("bad_shard")
            elif produced == 0:
                counter.skip("empty_shard")

    def _examples(self, samples: Iterator[dict], counter: _SkipCounter,
                  rng: _IsolatedTorchRng) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        for sample in samples:
            try:
                sample_id = _sample_id(self._sources[self._source_of_url[sample["__url__"]]], sample)
                caption = _caption(sample)
                image = _decode_image(sample)
            except _Skip as skip:
                counter.skip(skip.reason)
                continue
            counter.good()
            # Transform and tokenizer errors on a decoded image are bugs, not bad data: they raise.
            yield rng.call(self._transform, image), self._tokenizer([caption])[0], sample_id

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
    """

    def __init__(self, stream: ShardStream, pin_memory: bool = False):
        # A private generator: the DataLoader draws its worker base seed from it instead of
        # the global RNG, which the trainer owns (our streams are seeded on their own).
        super().__init__(stream, batch_size=None, num_workers=stream.config.num_workers,
                         pin_memory=pin_memory, persistent_workers=False, worker_init_fn=_ignore_preemption_signals,
                         generator=torch.Generator().manual_seed(stream.config.seed))
        self.epoch = 0
        self.batches_done = 0
        self.counts: Counter[str] = Counter()  # skips (SKIP_REASONS) and repeats on this rank, all epochs

    def __iter__(self) -> Iterator[TrainBatch]:
        stream: ShardStream = self.dataset
        # Workers start inside super().__iter__() and copy the stream with this position.
        stream.epoch, stream.batches_done = self.epoch, self.batches_done
        waiting: dict[int, TrainBatch] = {}
        worker_batches = super().__iter__()
        try:
            for images, tokens, ids, index, counts in worker_batches:
                self.counts.update(counts)
                waiting[index] = TrainBatch(images, tokens, ids)
                while self.batches_done in waiting:
                    batch = waiting.pop(self.batches_done)
                    self.batches_done += 1
                    yield batch
        finally:
            _stop_workers(worker_batches)
        assert not waiting, "a loader worker ended before its share of the epoch"
        self.epoch += 1
        self.batches_done = 0

    def state_dict(self) -> dict[str, Any]:
        stream: ShardStream = self.dataset
        return asdict(LoaderState(epoch=self.epoch, batches_done=self.batches_done, seed=stream.config.seed,
                                  resampled=stream.config.resampled, layout=stream.layout))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved position. A changed layout restarts the saved epoch at batch 0."""
        saved = LoaderState(**state)
        stream: ShardStream = self.dataset
        if (saved.seed, saved.resampled) != (stream.config.seed, stream.config.resampled):
            raise UsageError(f"checkpoint data position has seed {saved.seed} and "
                             f"resampled={saved.resampled}; "
                             f"the config has {stream.config.seed} and {stream.config.resampled}")
        self.epoch, self.batches_done = saved.epoch, saved.batches_done
        if list(saved.layout) != stream.layout:
            log.warning("data layout changed from %s to %s [ranks, workers, batch, batches/worker]: epoch %d "
                        "restarts at its first batch instead of batch %d", saved.layout, stream.layout,
                        saved.epoch, saved.batches_done)
            self.batches_done = 0


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
    silently; an unreadable shard gets a warning (webdataset's) and the rest of it is passed over.
    Stops after ``limit`` samples when given.
    """
    produced = 0
    for source in _resolve_sources(sources):
        for url in source.urls:
            for sample in wds.tarfile_samples([{"url": url}], handler=wds.warn_and_continue):
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
