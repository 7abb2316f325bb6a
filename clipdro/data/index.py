"""Build a manifest (``key`` id rule) for existing img2dataset shards.

img2dataset names sample KEY = shard * 10**k + row (zero-padded to shard digits + k),
skips failed downloads (gaps) and writes ``{shard}_stats.json`` with ``count`` (rows
tried) and ``successes`` (samples written). With a stats file for every shard we open
no tar except to read the first KEY (which gives k); otherwise we scan member names.
Either way ``num_samples`` bounds every key + 1, so each id fits the DRO tables.

Damaged shards (truncated, corrupt, unreadable) do not stop indexing: a scanned shard counts
the samples whose image member lies wholly before the damage (what the training loader reads
before it skips the rest of the shard as ``bad_shard``); a shard with none is left out of the
manifest. Both kinds are recorded under the manifest's ``damaged_shards`` and returned, so the
command can name them. The stats route opens one tar only, so it finds damage only there.

Shards may be local paths or URLs (``http(s)://``, ``pipe:CMD``, ``s3://``; see
:mod:`clipdro.data.shard_reader`). A URL's stats file is the URL with its last ``NAME.tar`` made
``NAME_stats.json`` (for ``pipe:`` commands too); one that cannot be fetched counts as absent. A
scanned URL is streamed once, with the training loader's retries; the member scan runs on several
shards at a time behind a progress bar. The manifest lists URLs as given, local shards relative
to it.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import re
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from clipdro.data.config import PipelineConfig
from clipdro.data.manifest import FILENAME, Manifest, ShardInfo, is_url
from clipdro.data.shard_reader import ShardRead, describe, open_url, read_shard
from clipdro.errors import UsageError

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}
# What reading a damaged or foreign file as a tar raises (gzip/bz2 raise OSError and EOFError).
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_SHARD_NAME = re.compile(r"([^/\s'\"]+)\.tar(?!.*\.tar)")  # the last NAME.tar in a path, URL or command
SCAN_THREADS = 8  # shards scanned at a time


@dataclass
class DamagedShard:
    path: str  # as given: a local path or a URL
    num_samples: int  # samples read before the damage (0: the shard is left out of the manifest)
    reason: str


@dataclass
class ShardIndex:
    """What :func:`index_shards` wrote, and the id accounting the summary line reports."""

    manifest: Manifest
    out: Path  # the manifest file
    source: str  # "img2dataset stats" or "member scan"
    damaged: list[DamagedShard] = field(default_factory=list)
    # Stats route only: rows tried over all shards, img2dataset's key digits k, the most rows of one
    # shard, rows of readable shards that failed to download, rows of shards left out as unreadable.
    rows_tried: int | None = None
    key_digits: int | None = None
    max_rows: int | None = None
    failed_downloads: int | None = None
    unreadable_rows: int | None = None

    @property
    def samples(self) -> int:
        return sum(shard.num_samples for shard in self.manifest.shards)


@dataclass
class _Scan:
    num_samples: int  # samples with a complete image member, read before any damage
    largest_key: int  # -1 without samples
    damage: str | None = None  # why the shard could not be read to its end


class _Unreadable(Exception):
    """A shard whose first member could not be read (the message is the reason)."""


def shard_locations(location: str | Path) -> list[str]:
    """A folder's ``*.tar`` (sorted), or the paths or URLs a brace pattern names; local paths must exist."""
    location = str(location)
    if is_url(location):
        return list(wds.shardlists.expand_urls(location))
    if Path(location).is_dir():
        shards = sorted(str(path) for path in Path(location).glob("*.tar"))
        if not shards:
            raise UsageError(f"no *.tar shards in {location}")
        return shards
    shards = [str(Path(url)) for url in wds.shardlists.expand_urls(location)]
    missing = [shard for shard in shards if not Path(shard).is_file()]
    if missing:
        raise UsageError(f"shard {missing[0]} does not exist ({len(missing)} of {len(shards)} missing)")
    return shards


def _stem(shard: str) -> str:
    """'/data/00012.tar', 'http://host/00012.tar', 'pipe:cat /data/00012.tar' -> '00012'."""
    match = _SHARD_NAME.search(shard)
    return match.group(1) if match else Path(shard).stem


def _split_member(name: str) -> tuple[str, str]:
    """'dir/000010005.jpg' -> ('000010005', 'jpg'), splitting like webdataset at the first dot."""
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return key, ext.lower()


def _scan(shard: Path) -> _Scan:
    """Keys with an image member in ``shard``, read up to any damage."""
    keys_with_image: set[str] = set()
    damage = None
    try:
        size = shard.stat().st_size
        with tarfile.open(shard) as tar:
            # Offsets are checked against the file size only for a plain (uncompressed) tar.
            plain = isinstance(tar.fileobj, io.BufferedReader)
            try:
                for member in tar:
                    if plain and member.offset_data + member.size > size:
                        damage = f"truncated: member {member.name} is cut off"
                        break
                    key, ext = _split_member(member.name)
                    if member.isreg() and ext in IMAGE_EXTS:
                        keys_with_image.add(key)
                else:
                    if plain:
                        damage = _check_end(tar.fileobj, tar.offset)
            except _TAR_ERRORS as error:
                damage = _reason(error)
    except _TAR_ERRORS as error:  # could not even be opened
        damage = _reason(error, opening=True)
    try:
        largest = max((int(key) for key in keys_with_image), default=-1)
    except ValueError:
        raise UsageError(f"{shard}: keys are not integers, so the key id rule cannot apply") from None
    return _Scan(len(keys_with_image), largest, damage)


def _scan_url(url: str) -> _Scan:
    """Keys with an image member in the shard at ``url``, streamed once (with the loader's retries)."""
    keys_with_image: set[str] = set()
    read = ShardRead(url)
    for sample in read_shard(url, read, retries=PipelineConfig.shard_retries):
        if any(ext in sample for ext in IMAGE_EXTS):
            keys_with_image.add(sample["__key__"].rsplit("/", 1)[-1])
    try:
        largest = max((int(key) for key in keys_with_image), default=-1)
    except ValueError:
        raise UsageError(f"{url}: keys are not integers, so the key id rule cannot apply") from None
    return _Scan(len(keys_with_image), largest, None if read.error is None else describe(read.error))


def _scan_all(shards: list[str]) -> list[_Scan]:
    """:func:`_scan` or :func:`_scan_url` of every shard, several at a time, with a progress bar."""
    def scan(shard: str) -> _Scan:
        return _scan_url(shard) if is_url(shard) else _scan(Path(shard))

    with ThreadPoolExecutor(SCAN_THREADS) as pool, tqdm(total=len(shards), desc="index", unit="shard",
                                                        disable=None) as bar:
        scans = []
        for result in pool.map(scan, shards):
            scans.append(result)
            bar.update()
        return scans


def _check_end(handle, offset: int) -> str | None:
    """Why a plain tar's iteration stopped at ``offset`` early, or None at a proper end.

    tarfile ends iteration quietly at an invalid header or at the end of the file; a complete
    tar has its end-of-archive marker (zero blocks) there instead."""
    handle.seek(offset)
    block = handle.read(tarfile.BLOCKSIZE)
    if block.strip(b"\0"):
        return f"corrupt: invalid tar header at byte {offset}"
    if len(block) < tarfile.BLOCKSIZE:
        return f"truncated: the file ends at byte {offset + len(block)} without the end-of-archive marker"
    return None


def _reason(error: BaseException, opening: bool = False) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip().splitlines()[0].rstrip(":") if str(error).strip() else type(error).__name__
    if opening and isinstance(error, tarfile.ReadError):
        return f"not a readable tar ({text})"
    return text


def _first_key(shard: str) -> str | None:
    """The KEY of the first member (None for a tar without members); raises :class:`_Unreadable`."""
    if is_url(shard):
        read = ShardRead(shard)
        first = next(read_shard(shard, read, stop=1, retries=PipelineConfig.shard_retries), None)
        if first is None and read.error is not None:
            raise _Unreadable(describe(read.error))
        return None if first is None else first["__key__"].rsplit("/", 1)[-1]
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                return _split_member(member.name)[0]
    except _TAR_ERRORS as error:
        raise _Unreadable(_reason(error, opening=True)) from None
    return None


def _stats_text(shard: str) -> tuple[str, str] | None:
    """(name, text) of the img2dataset stats file beside ``shard``, or None where there is none."""
    match = _SHARD_NAME.search(shard)
    if match is None:
        return None
    name = shard[:match.start()] + f"{match.group(1)}_stats.json" + shard[match.end():]
    if not is_url(shard):
        if not Path(name).is_file():
            return None
        try:
            return name, Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"{name}: cannot read the stats file ({error})") from None
    try:
        with open_url(name) as stream:
            return name, stream.read().decode("utf-8")
    except Exception:  # noqa: BLE001 -- a stats URL that cannot be fetched is a missing stats file
        return None


def _read_stats(name: str, text: str) -> tuple[int, int]:
    """(count, successes) of one ``{shard}_stats.json`` named ``name`` holding ``text``."""
    try:
        stats = json.loads(text)
        count, successes = stats["count"], stats["successes"]
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise UsageError(f"{name}: not an img2dataset stats file ({type(error).__name__}: {error})") from None
    if not (type(count) is int and type(successes) is int and 0 <= successes <= count):
        raise UsageError(f"{name}: count {count!r} and successes {successes!r} must be integers, "
                         "0 <= successes <= count")
    return count, successes


def _from_stats(shards: list[str], damaged: list[DamagedShard]) -> tuple[list[int | None], int, int, list[int]] | None:
    """(per-shard successes (None: unreadable, left out), num_samples, key digits, per-shard rows
    tried) from the stats files, or None if any is missing. A shard whose tar cannot be opened
    for the first KEY is recorded in ``damaged``."""
    if not all(_stem(shard).isdigit() for shard in shards):
        return None
    stats_files = []
    for shard in shards:  # stops at the first shard without stats
        stats_files.append(_stats_text(shard))
        if stats_files[-1] is None:
            return None
    stats = [_read_stats(name, text) for name, text in stats_files]
    successes: list[int | None] = [st[1] for st in stats]
    first_key = None
    for index, shard in enumerate(shards):
        if not successes[index]:
            continue
        try:
            key = _first_key(shard)
        except _Unreadable as error:
            damaged.append(DamagedShard(shard, 0, str(error)))
            successes[index] = None
            continue
        if key is None:
            damaged.append(DamagedShard(shard, 0, f"no members, though its stats report {successes[index]} "
                                                  "successes"))
            successes[index] = None
            continue
        first_key = key, shard
        break
    if first_key is None:
        if damaged:
            raise UsageError(f"no readable shard among the {len(shards)} with stats (first: {damaged[0].path}: "
                             f"{damaged[0].reason})")
        raise UsageError("every shard's stats report 0 successes")
    key, shard = first_key
    key_digits = len(key) - len(_stem(shard))
    if not key.isdigit() or key_digits < 0:
        raise UsageError(f"{shard}: first key {key!r} is not the shard number followed by row digits")
    for (name, _), (count, _) in zip(stats_files, stats, strict=True):
        if count > 10**key_digits:
            raise UsageError(f"{name}: count {count} exceeds the {10**key_digits} rows the {key_digits}-digit "
                             "row keys allow")
    # Row r of shard s has key s * 10**k + r with r < count, so this bounds every key + 1.
    num_samples = max(int(_stem(shard)) * 10**key_digits + count
                      for shard, (count, _) in zip(shards, stats, strict=True))
    return successes, num_samples, key_digits, [count for count, _ in stats]


def _entry(shard: str, root: Path) -> str:
    """How the manifest at ``root`` names ``shard``: a URL as given, a path relative to ``root``."""
    return shard if is_url(shard) else os.path.relpath(shard, root)


def index_shards(location: str | Path, out: str | Path) -> ShardIndex:
    """Write the manifest of the img2dataset shards at ``location``; return it with the accounting.

    ``out`` is the manifest file or its folder; shard paths are stored relative to it.
    """
    shards = shard_locations(location)
    out = Path(out)
    if out.suffix != ".json":
        out = out / FILENAME
    root = out.parent
    damaged: list[DamagedShard] = []
    from_stats = _from_stats(shards, damaged)
    accounting = {}
    if from_stats is not None:
        successes, num_samples, key_digits, rows = from_stats
        counts = successes
        extra = {"source": "img2dataset stats", "key_digits": key_digits}
        accounting = {"rows_tried": sum(rows), "key_digits": key_digits, "max_rows": max(rows),
                      "failed_downloads": sum(row - count for row, count in zip(rows, counts, strict=True)
                                              if count is not None),
                      "unreadable_rows": sum(row for row, count in zip(rows, counts, strict=True) if count is None)}
    else:
        scans = _scan_all(shards)
        damaged = [DamagedShard(shard, scan.num_samples, scan.damage)
                   for shard, scan in zip(shards, scans, strict=True) if scan.damage is not None]
        # Nothing readable: leave the shard out (training would only count it as bad_shard).
        counts = [scan.num_samples if scan.damage is None or scan.num_samples else None for scan in scans]
        num_samples = max(scan.largest_key for scan in scans) + 1
        extra = {"source": "member scan"}
    if num_samples < 1:
        detail = f" ({len(damaged)} damaged, first {damaged[0].path}: {damaged[0].reason})" if damaged else ""
        raise UsageError(f"no samples in the shards at {location}{detail}")
    if damaged:
        extra["damaged_shards"] = [{"path": _entry(d.path, root), "num_samples": d.num_samples,
                                    "error": d.reason} for d in damaged]
    manifest = Manifest(num_samples=num_samples, id_rule="key", root=root, extra=extra,
                        shards=[ShardInfo(_entry(shard, root), count)
                                for shard, count in zip(shards, counts, strict=True) if count is not None])
    manifest.save(out)
    return ShardIndex(manifest=manifest, out=out, source=extra["source"], damaged=damaged, **accounting)
