"""A tiny labelled evaluation set with captions (random 32 px images), written as eval.json; the same
images in CLIP_benchmark's webdataset layout and as an ImageFolder tree."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from clipdro.data.evalset import EvalSet
from tests.shard_factory import write_tar

CLASSNAMES = ["circle", "square", "star"]


def write_tiny_evalset(root: Path, num_images: int = 6) -> EvalSet:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i in range(num_images):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    evalset = EvalSet(root=root, name="tiny-shapes", images=[f"images/{i}.png" for i in range(num_images)],
                      captions=[[f"a {CLASSNAMES[i % 3]} number {i}", f"drawing {i}"] for i in range(num_images)],
                      labels=[i % 3 for i in range(num_images)], classnames=CLASSNAMES,
                      templates=["a drawing of a {}."])
    evalset.save()
    return evalset


def coloured_png(index: int, label: int, size: int = 32) -> bytes:
    """A PNG whose colour depends on its class (plus noise), so a model's scores vary by class."""
    rng = np.random.default_rng(index)
    base = np.array([(label * 67) % 256, (label * 131) % 256, (label * 29 + 80) % 256], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-60, 61, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()



def write_clip_benchmark_classification(root: Path, labels: list[int], classnames: list[str], templates: list[str],
                                        num_shards: int = 2, split: str = "test", first_index: int = 0) -> list[bytes]:
    """CLIP_benchmark's webdataset layout: ``SPLIT/{0..n-1}.tar`` with ``KEY.png`` + ``KEY.cls``,
    ``SPLIT/nshards.txt``, ``classnames.txt``, ``zeroshot_classification_templates.txt`` ({c}).
    Images are :func:`coloured_png` of index ``first_index + i``; returns their bytes in sample order."""
    images = [coloured_png(first_index + i, label) for i, label in enumerate(labels)]
    per_shard = -(-len(labels) // num_shards)
    for shard in range(num_shards):
        members = []
        for i in range(shard * per_shard, min(len(labels), (shard + 1) * per_shard)):
            members += [(f"s{i:07d}.png", images[i]), (f"s{i:07d}.cls", str(labels[i]).encode())]
        write_tar(root / split / f"{shard}.tar", members)
    (root / split / "nshards.txt").write_text(f"{num_shards}\n")
    (root / "classnames.txt").write_text("".join(f"{name}\n" for name in classnames))
    (root / "zeroshot_classification_templates.txt").write_text("".join(f"{line}\n" for line in templates))
    return images


def write_imagefolder(root: Path, images: list[bytes], labels: list[int], folders: list[str]) -> Path:
    """The same images as an ImageFolder tree: ``root/FOLDER/NNNNN.png`` (image i in its class's folder)."""
    for i, (data, label) in enumerate(zip(images, labels, strict=True)):
        (root / folders[label]).mkdir(parents=True, exist_ok=True)
        (root / folders[label] / f"{i:05d}.png").write_bytes(data)
    return root
