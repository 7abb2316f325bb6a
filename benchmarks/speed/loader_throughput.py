"""Images/s of the training loader (decode + open_clip train transform + tokenize + batch).

    python -m benchmarks.speed.loader_throughput --manifest data/embedded/manifest.json
    python -m benchmarks.speed.loader_throughput --synthetic /tmp/loader-bench   # 4 x 500 JPEGs, 64 px

Runs one resampled epoch of --samples samples per worker count and reports the steady
rate: from the first batch (worker start-up and the shuffle-buffer fill excluded) to the
last. The model name fixes the image size and the tokenizer.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from clipdro.data.manifest import FILENAME
from clipdro.data.pipeline import DataSource, PipelineConfig, build_train_loader
from clipdro.data.writer import ShardSample, write_shards
from clipdro.model_configs import register_model_configs


def synthetic_samples(count: int, size: int, seed: int = 0):
    """Smooth random colour fields (upsampled 8x8 noise) as JPEGs: about photo-like decode cost."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        small.resize((size, size), Image.BILINEAR).save(buffer, format="JPEG", quality=90)
        yield ShardSample(image=buffer.getvalue(), image_ext="jpg",
                          caption=f"a synthetic picture number {index}")


def measure(manifest: Path, model: str, workers: int, batch_size: int, samples: int) -> dict:
    image_size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    transform = open_clip.image_transform(image_size, is_train=True)
    tokenizer = open_clip.get_tokenizer(model)
    config = PipelineConfig(sources=[DataSource(str(manifest))], batch_size=batch_size, epoch_samples=samples,
                            num_workers=workers)
    loader = build_train_loader(config, transform, tokenizer)
    start = time.perf_counter()
    first = None
    images = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter()
        else:
            images += len(batch.sample_ids)
    end = time.perf_counter()
    return {"workers": workers, "images_per_s": round(images / (end - first), 1),
            "first_batch_s": round(first - start, 2), "epoch_s": round(end - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="manifest.json (or its folder) of the shards to read")
    source.add_argument("--synthetic", type=Path, help="folder for 4 x 500 generated 64 px JPEGs (made once)")
    parser.add_argument("--model", default="clipdro-small-vit", help="open_clip model: image size, tokenizer")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2048, help="samples per measured epoch")
    args = parser.parse_args()
    register_model_configs()
    manifest = args.manifest
    if args.synthetic is not None:
        manifest = args.synthetic / FILENAME
        if not manifest.exists():
            write_shards(synthetic_samples(2000, 64), args.synthetic, samples_per_shard=500)
    print(f"torch threads {torch.get_num_threads()}, manifest {manifest}, model {args.model}, "
          f"batch {args.batch_size}")
    for workers in args.workers:
        print(json.dumps(measure(manifest, args.model, workers, args.batch_size, args.samples)))


if __name__ == "__main__":
    main()
