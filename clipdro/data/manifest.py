"""Shard manifests: which shards make a training set and how its samples get their ids.

A manifest is ``manifest.json`` in the shard folder::

    {
      "format": "clipdro-manifest/1",
      "num_samples": 4000,                 # size of the per-sample DRO tables
      "id_rule": "dense",                  # or "key"
      "shards": [{"path": "train-000000.tar", "num_samples": 1000}, ...],
      ...                                  # optional extra fields (key_digits, source, ...)
    }

Invariant the loss relies on: every sample id the pipeline yields lies in
``[0, num_samples)`` and no two samples of one manifest share an id.

Id rules:

- ``dense``: our writers (:func:`clipdro.data.writer.write_shards`) store ``"sample_id"``
  in each ``KEY.json``; ids are ``0..num_samples-1`` without gaps, so the shard counts
  add up to ``num_samples`` exactly.
- ``key``: shards written by img2dataset; the id is ``int(KEY)``, where KEY is
  ``shard * 10**k + row``. Failed downloads leave gaps, so ``num_samples = max key + 1``
  is at least the sum of the shard counts and the DRO tables carry a few unused rows.
  We keep the keys rather than re-indexing densely because a re-index would depend on
  the scan order and could not be recomputed from one sample alone inside a worker.

Shard paths are relative to the manifest's folder; an entry may also be a URL
(``scheme://...`` or ``pipe:...``) that webdataset opens as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdro.errors import UsageError

FORMAT = "clipdro-manifest/1"
FILENAME = "manifest.json"
ID_RULES = ("dense", "key")
_STANDARD_FIELDS = ("format", "num_samples", "id_rule", "shards")


def is_url(path: str) -> bool:
    """True for shard locations webdataset opens itself (remote URLs, ``pipe:`` commands)."""
    return "://" in path or path.startswith("pipe:")


@dataclass
class ShardInfo:
    path: str
    num_samples: int


@dataclass
class Manifest:
    num_samples: int
    id_rule: str
    shards: list[ShardInfo]
    root: Path = field(default_factory=Path)  # the manifest's folder; shard paths are relative to it
    extra: dict[str, Any] = field(default_factory=dict)

    def shard_url(self, shard: ShardInfo) -> str:
        """Where webdataset reads ``shard``: a URL as is, else a path under :attr:`root`."""
        return shard.path if is_url(shard.path) else str(self.root / shard.path)

    def shard_urls(self) -> list[str]:
        return [self.shard_url(shard) for shard in self.shards]

    def validate(self) -> None:
        """Check the invariants above; raises :class:`UsageError` naming the first violation."""
        where = self.root / FILENAME
        if self.id_rule not in ID_RULES:
            raise UsageError(f"{where}: id_rule {self.id_rule!r}, expected one of {ID_RULES}")
        if not self.shards:
            raise UsageError(f"{where}: no shards")
        paths = [shard.path for shard in self.shards]
        if len(set(paths)) != len(paths):
            raise UsageError(f"{where}: a shard is listed twice")
        for shard in self.shards:
            if not shard.path or Path(shard.path).is_absolute():
                raise UsageError(f"{where}: shard path {shard.path!r} must be relative to the manifest")
            if not isinstance(shard.num_samples, int) or shard.num_samples < 0:
                raise UsageError(f"{where}: shard {shard.path} has num_samples {shard.num_samples!r}")
        counted = sum(shard.num_samples for shard in self.shards)
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise UsageError(f"{where}: num_samples {self.num_samples!r} must be a positive integer")
        if self.id_rule == "dense" and counted != self.num_samples:
            raise UsageError(f"{where}: dense ids but the shards hold {counted} samples, "
                             f"not {self.num_samples}")
        if self.id_rule == "key" and counted > self.num_samples:
            raise UsageError(f"{where}: the shards hold {counted} samples, more than num_samples "
                             f"{self.num_samples} (= max key + 1)")

    def check_files(self) -> None:
        """Every local shard exists (URLs are not checked: that would mean opening them)."""
        missing = [path for path in (self.root / s.path for s in self.shards if not is_url(s.path))
                   if not path.is_file()]
        if missing:
            raise UsageError(f"{self.root / FILENAME}: shard {missing[0]} is missing "
                             f"({len(missing)} of {len(self.shards)} shards missing)")

    def save(self, path: str | Path | None = None) -> Path:
        """Write ``manifest.json`` into :attr:`root` (``path``, a file or folder, must be there)."""
        target = self.root / FILENAME if path is None else Path(path)
        if target.is_dir() or target.suffix != ".json":
            target = target / FILENAME
        if target.parent.resolve() != self.root.resolve():
            raise UsageError(f"cannot save the manifest to {target}: "
                             f"its shard paths are relative to {self.root}")
        self.validate()
        payload = {"format": FORMAT, "num_samples": self.num_samples, "id_rule": self.id_rule,
                   "shards": [{"path": s.path, "num_samples": s.num_samples} for s in self.shards],
                   **self.extra}
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and validate a manifest given as its file or its folder."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise UsageError(f"no manifest at {path}")
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if payload.get("format") != FORMAT:
                raise UsageError(f"{path}: format {payload.get('format')!r}, expected {FORMAT!r}")
            manifest = cls(
                num_samples=payload["num_samples"],
                id_rule=payload["id_rule"],
                shards=[ShardInfo(path=s["path"], num_samples=s["num_samples"]) for s in payload["shards"]],
                root=path.parent,
                extra={k: v for k, v in payload.items() if k not in _STANDARD_FIELDS},
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UsageError(f"{path}: not a valid manifest ({type(error).__name__}: {error})") from None
        manifest.validate()
        return manifest
