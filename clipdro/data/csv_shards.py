"""CSV/TSV of (local image path, caption) rows -> shards with dense ids and a manifest.

Image paths are taken as they are when absolute, else relative to the CSV's folder. The
image bytes are copied unchanged (no re-encoding); images that do not decode are left to
the training pipeline, which skips and counts them. Rows that cannot become a sample are
skipped here and counted by reason (see :data:`ROW_SKIP_REASONS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from clipdro.data.manifest import Manifest
from clipdro.data.writer import ShardSample, write_shards
from clipdro.errors import UsageError

ROW_SKIP_REASONS = {
    "missing_image": "the image file does not exist",
    "unsupported_format": "the file extension is not .jpg, .jpeg, .png or .webp",
    "empty_caption": "the caption cell is empty or whitespace",
}
_EXT_OF_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def _rows_to_samples(table: pd.DataFrame, base: Path, image_column: str, caption_column: str,
                     skipped: Counter[str]) -> Iterator[ShardSample]:
    for row, (image_cell, caption) in enumerate(zip(table[image_column], table[caption_column], strict=True)):
        path = base / image_cell  # an absolute cell replaces the base
        ext = _EXT_OF_SUFFIX.get(path.suffix.lower())
        if not caption.strip():
            skipped["empty_caption"] += 1
        elif ext is None:
            skipped["unsupported_format"] += 1
        elif not path.is_file():
            skipped["missing_image"] += 1
        else:
            yield ShardSample(image=path.read_bytes(), image_ext=ext, caption=caption.strip(),
                              metadata={"row": row, "image": image_cell})


def csv_to_shards(csv_path: str | Path, image_column: str, caption_column: str, out_dir: str | Path,
                  sep: str | None = None, samples_per_shard: int = 1000) -> tuple[Manifest, Counter[str]]:
    """Write the rows of ``csv_path`` as shards; returns the manifest and the skipped-row counts.

    ``sep`` defaults to a tab for ``.tsv`` files and a comma otherwise.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UsageError(f"no CSV file at {csv_path}")
    if sep is None:
        sep = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    # Strings only, and empty cells stay "" (pandas would turn them into NaN floats).
    table = pd.read_csv(csv_path, sep=sep, dtype=str, keep_default_na=False)
    missing = [column for column in (image_column, caption_column) if column not in table.columns]
    if missing:
        raise UsageError(f"{csv_path}: no column {missing[0]!r}; columns are {list(table.columns)}")
    skipped: Counter[str] = Counter()
    samples = _rows_to_samples(table, csv_path.parent, image_column, caption_column, skipped)
    manifest = write_shards(samples, Path(out_dir), samples_per_shard=samples_per_shard)
    manifest.extra["source"] = str(csv_path)
    manifest.save()
    return manifest, skipped
