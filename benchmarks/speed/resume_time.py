"""Time to the first batch after an exact mid-epoch resume of the training loader.

    python -m benchmarks.speed.resume_time --shards /tmp/resume-bench   # 50,000 generated 64 px JPEGs (made once)

One uninterrupted finite epoch runs up to the last resume point, saving the loader's state at each
point (0 %, 50 % and 95 % of the epoch by default). For each state a fresh loader (new worker
processes) loads it, and we time from iter() to its first batch; that batch is checked against
the uninterrupted run's batch at the same index, so the measured resume is also an exact one.
Decode, the open_clip train transform (64 px) and tokenization are the real ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import open_clip
import torch

from benchmarks.speed.loader_throughput import synthetic_samples
from clipdro.data.manifest import FILENAME
from clipdro.data.pipeline import DataSource, PipelineConfig, build_train_loader
from clipdro.data.writer import write_shards
from clipdro.model_configs import register_model_configs


def make_loader(manifest: Path, model: str, workers: int, batch_size: int):
    image_size = open_clip.get_model_config(model)["vision_cfg"]["image_size"]
    config = PipelineConfig(sources=[DataSource(str(manifest))], batch_size=batch_size, resampled=False,
                            num_workers=workers, shuffle_buffer=1000)
    return build_train_loader(config, open_clip.image_transform(image_size, is_train=True),
                              open_clip.get_tokenizer(model))


def states_at(loader, points: list[int]) -> tuple[dict[int, dict], dict[int, torch.Tensor]]:
    """Run epoch 0 up to max(points); the loader state and the batch's images at each point."""
    states, images = {}, {}
    if 0 in points:
        states[0] = loader.state_dict()
    for index, batch in enumerate(loader):
        if index in points:
            images[index] = batch.images
        if index + 1 in points:
            states[index + 1] = loader.state_dict()
        if index >= max(points):
            break
    return states, images


def first_batch_after(manifest: Path, state: dict, args) -> tuple[float, torch.Tensor]:
    loader = make_loader(manifest, args.model, args.workers, args.batch_size)
    loader.load_state_dict(state)
    start = time.perf_counter()
    batch = next(iter(loader))
    return time.perf_counter() - start, batch.images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True, help="folder for the generated shards (made once)")
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--model", default="clipdro-small-vit", help="open_clip model: image size, tokenizer")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.95])
    args = parser.parse_args()
    register_model_configs()
    manifest = args.shards / FILENAME
    if not manifest.exists():
        write_shards(synthetic_samples(args.samples, 64), args.shards, samples_per_shard=1000)
    batches = len(make_loader(manifest, args.model, args.workers, args.batch_size))
    points = sorted({round(fraction * batches) for fraction in args.fractions})
    print(f"torch threads {torch.get_num_threads()}, {args.samples} samples, batch {args.batch_size}, "
          f"{args.workers} workers, {batches} batches per epoch, resume at batches {points}")
    states, reference = states_at(make_loader(manifest, args.model, args.workers, args.batch_size), points)
    base = None
    for point in points:
        seconds, images = first_batch_after(manifest, states[point], args)
        base = seconds if base is None else base
        print(json.dumps({"resume_at_batch": point, "epoch_fraction": round(point / batches, 3),
                          "first_batch_s": round(seconds, 2), "vs_first": round(seconds / base, 2),
                          "same_batch_as_uninterrupted": bool(torch.equal(images, reference[point]))}), flush=True)


if __name__ == "__main__":
    main()
