"""clipdro's evaluation-set format: one folder with an ``eval.json`` and the images.

One file serves retrieval (several captions per image) and zero-shot classification
(one label per image), so a held-out split can be both at once::

    {
      "format": "clipdro-evalset/1",
      "name": "openclipart-test",
      "images": ["images/000000.png", ...],      # relative to the folder, or absolute
      "captions": [["a red apple", ...], ...],   # optional: per image, >= 1 caption each
      "labels": [3, 0, ...],                     # optional: per image, index into classnames
      "classnames": ["animals", ...],            # required with labels
      "templates": ["a drawing of {}.", ...]     # optional: zero-shot prompt templates
    }

``clipdro data convert-*`` (clipdro/data/eval_converters.py) writes this format from COCO/Flickr Karpathy JSON,
CLIP_benchmark WebDataset retrieval sets and ImageFolder trees.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from clipdro.data.images import UnreadableImage, load_image, unreadable_images_error
from clipdro.errors import UsageError

FORMAT = "clipdro-evalset/1"
FILENAME = "eval.json"


@dataclass
class EvalSet:
    root: Path
    name: str
    images: list[str]
    captions: list[list[str]] | None = None
    labels: list[int] | None = None
    classnames: list[str] | None = None
    templates: list[str] | None = None
    # Encoded image bytes, one per image, for a set read from shards (CLIP_benchmark's webdataset
    # layout); ``images`` then only names them. Never written by :meth:`save`.
    image_data: list[bytes] | None = None

    def image_path(self, index: int) -> Path:
        path = Path(self.images[index])
        return path if path.is_absolute() else self.root / path

    def image_source(self, index: int) -> Path | bytes:
        """What :func:`clipdro.eval.embed.embed_images` reads for image ``index``: its bytes when the
        set holds them, else its file."""
        return self.image_data[index] if self.image_data is not None else self.image_path(index)

    @property
    def description(self) -> str:
        """How error messages name the set: its name and folder (image paths are relative to it)."""
        return f"evaluation set {self.name!r} at {self.root}"

    def check_images(self, workers: int | None = None) -> None:
        """Decode every image once (no model); raise one :class:`UsageError` naming the first
        unreadable ones (as listed in ``images``), PIL's reasons and how many there are.

        Decoding runs in ``workers`` threads (default: up to 8; PIL releases the GIL while it
        decodes). Local to this process: no collective, so any rank may call it alone."""
        from concurrent.futures import ThreadPoolExecutor

        def failure(index: int) -> tuple[str, str] | None:
            try:
                load_image(self.image_source(index)).close()
            except UnreadableImage as error:
                return self.images[index], error.reason
            return None

        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            failures = [found for found in pool.map(failure, range(len(self.images))) if found is not None]
        if failures:
            raise unreadable_images_error(failures, self.description)

    @property
    def has_captions(self) -> bool:
        return self.captions is not None

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """All captions in order and, for each, the index of its image (``text_to_image``)."""
        if self.captions is None:
            raise UsageError(f"evaluation set {self.name!r} has no captions")
        texts, text_to_image = [], []
        for image_index, captions in enumerate(self.captions):
            texts.extend(captions)
            text_to_image.extend([image_index] * len(captions))
        return texts, text_to_image

    def validate(self) -> None:
        count = len(self.images)
        if count == 0:
            raise UsageError(f"evaluation set {self.name!r} has no images")
        if self.captions is not None:
            if len(self.captions) != count:
                raise UsageError(f"{self.name}: {len(self.captions)} caption lists for {count} images")
            empty = [i for i, captions in enumerate(self.captions) if not captions]
            if empty:
                raise UsageError(f"{self.name}: image {empty[0]} has no caption ({len(empty)} such images)")
        if self.labels is not None:
            if self.classnames is None:
                raise UsageError(f"{self.name}: labels given without classnames")
            if len(self.labels) != count:
                raise UsageError(f"{self.name}: {len(self.labels)} labels for {count} images")
            bad = [label for label in self.labels if not 0 <= label < len(self.classnames)]
            if bad:
                raise UsageError(f"{self.name}: label {bad[0]} outside [0, {len(self.classnames)})")
        if self.image_data is not None and len(self.image_data) != count:
            raise UsageError(f"{self.name}: {len(self.image_data)} encoded images for {count} names")
        if self.templates is not None and any("{}" not in template for template in self.templates):
            raise UsageError(f"{self.name}: every template needs a '{{}}' placeholder")

    def save(self) -> Path:
        self.validate()
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {"format": FORMAT, "name": self.name, "images": self.images}
        for key in ("captions", "labels", "classnames", "templates"):
            value = getattr(self, key)
            if value is not None:
                payload[key] = value
        path = self.root / FILENAME
        path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, root: str | Path) -> EvalSet:
        root = Path(root)
        path = root / FILENAME if root.is_dir() else root
        if not path.is_file():
            raise UsageError(f"no evaluation set at {root} (expected {FILENAME})")
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != FORMAT:
            raise UsageError(f"{path}: format {payload.get('format')!r}, expected {FORMAT!r}")
        evalset = cls(
            root=path.parent,
            name=payload.get("name", path.parent.name),
            images=payload["images"],
            captions=payload.get("captions"),
            labels=payload.get("labels"),
            classnames=payload.get("classnames"),
            templates=payload.get("templates"),
        )
        evalset.validate()
        return evalset
