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
"""

from __future__ import annotations

import io
import json
import lzma
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from clipdro.data.manifest import FILENAME, Manifest, ShardInfo, is_url
from clipdro.errors import UsageError

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp"}
# What reading a damaged or foreign file as a tar raises (gzip/bz2 raise OSError and EOFError).
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


@dataclass
class DamagedShard:
    path: Path
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


def local_shards(location: str | Path) -> list[Path]:
    """A folder's ``*.tar`` (sorted) or the files a brace pattern names; all must exist."""
    if is_url(str(location)):
        raise UsageError(f"{location}: indexing reads local shards; copy or mount them first")
    if Path(location).is_dir():
        shards = sorted(Path(location).glob("*.tar"))
        if not shards:
            raise UsageError(f"no *.tar shards in {location}")
        return shards
    shards = [Path(url) for url in wds.shardlists.expand_urls(str(location))]
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        raise UsageError(f"shard {missing[0]} does not exist ({len(missing)} of {len(shards)} missing)")
    return shards


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


def _first_key(shard: Path) -> str | None:
    """The KEY of the first member (None for a tar without members)."""
    with tarfile.open(shard) as tar:
        for member in tar:
            return _split_member(member.name)[0]
    return None


def _read_stats(path: Path) -> tuple[int, int]:
    """(count, successes) of one ``{shard}_stats.json``."""
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
        count, successes = stats["count"], stats["successes"]
    except OSError as error:
        raise UsageError(f"{path}: cannot read the stats file ({error.strerror or error})") from None
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UsageError(f"{path}: not an img2dataset stats file ({type(error).__name__}: {error})") from None
    if not (type(count) is int and type(successes) is int and 0 <= successes <= count):
        raise UsageError(f"{path}: count {count!r} and successes {successes!r} must be integers, "
                         "0 <= successes <= count")
    return count, successes


def _from_stats(shards: list[Path], damaged: list[DamagedShard]) -> tuple[list[int | None], int, int, list[int]] | None:
    """(per-shard successes (None: unreadable, left out), num_samples, key digits, per-shard rows
    tried) from the stats files, or None if any is missing. A shard whose tar cannot be opened
    for the first KEY is recorded in ``damaged``."""
    stats_files = [shard.with_name(f"{shard.stem}_stats.json") for shard in shards]
    if not all(path.is_file() for path in stats_files) or not all(s.stem.isdigit() for s in shards):
        return None
    stats = [_read_stats(path) for path in stats_files]
    successes: list[int | None] = [st[1] for st in stats]
    first_key = None
    for index, shard in enumerate(shards):
        if not successes[index]:
            continue
        try:
            key = _first_key(shard)
        except _TAR_ERRORS as error:
            damaged.append(DamagedShard(shard, 0, _reason(error, opening=True)))
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
    key_digits = len(key) - len(shard.stem)
    if not key.isdigit() or key_digits < 0:
        raise UsageError(f"{shard}: first key {key!r} is not the shard number followed by row digits")
    for path, (count, _) in zip(stats_files, stats, strict=True):
        if count > 10**key_digits:
            raise UsageError(f"{path}: count {count} exceeds the {10**key_digits} rows the {key_digits}-digit "
                             "row keys allow")
    # Row r of shard s has key s * 10**k + r with r < count, so this bounds every key + 1.
    num_samples = max(int(shard.stem) * 10**key_digits + count
                      for shard, (count, _) in zip(shards, stats, strict=True))
    return successes, num_samples, key_digits, [count for count, _ in stats]


def index_shards(location: str | Path, out: str | Path) -> ShardIndex:
    """Write the manifest of the img2dataset shards at ``location``; return it with the accounting.

    ``out`` is the manifest file or its folder; shard paths are stored relative to it.
    """
    shards = local_shards(location)
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
        scans = [_scan(shard) for shard in shards]
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
        extra["damaged_shards"] = [{"path": os.path.relpath(d.path, root), "num_samples": d.num_samples,
                                    "error": d.reason} for d in damaged]
    manifest = Manifest(num_samples=num_samples, id_rule="key", root=root, extra=extra,
                        shards=[ShardInfo(os.path.relpath(shard, root), count)
                                for shard, count in zip(shards, counts, strict=True) if count is not None])
    manifest.save(out)
    return ShardIndex(manifest=manifest, out=out, source=extra["source"], damaged=damaged, **accounting)
