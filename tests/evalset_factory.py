"""A tiny labelled evaluation set with captions (random 32 px images), written as eval.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipdro.data.evalset import EvalSet

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
