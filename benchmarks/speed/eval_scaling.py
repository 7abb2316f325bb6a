"""Retrieval-metric scaling: clipdro's FAISS harness vs the dense score matrix CLIP_benchmark builds.

    python -m benchmarks.speed.eval_scaling compare           # 5,000 images x 25,000 captions
    python -m benchmarks.speed.eval_scaling gallery           # 5,000 images x 1,000,000 captions

Features are random unit vectors (dim 512): each image a Gaussian direction, each caption its
image's vector plus Gaussian noise (``--noise`` times the signal's norm), renormalised, so
the recalls are neither 0 nor 1.  Every method runs in a fresh child process that generates
the same features from the seed, so each peak-memory figure is that method's own:
``peak_rss_mb`` is the child's high-water resident set (``resource.getrusage`` ru_maxrss,
which sees torch, numpy and faiss allocations alike; tracemalloc would miss torch's), and
``extra_rss_mb`` is that peak minus the resident set once the features exist, i.e. the
working memory of the metric computation itself.  Timings exclude feature generation.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from clipdro.eval import retrieval_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
METHODS = ("harness", "harness-exact", "dense")
GENERATION_CHUNK = 65_536  # rows per generation step, so generating 1M captions stays within ~2 x their size


def make_features(num_images: int, captions_per_image: int, dim: int, noise: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    text_to_image = torch.arange(num_images).repeat_interleave(captions_per_image)
    texts = torch.empty(len(text_to_image), dim)
    noise_scale = noise / dim ** 0.5  # a noise vector's expected norm is noise x (unit) signal norm
    for start in range(0, len(texts), GENERATION_CHUNK):
        owners = text_to_image[start:start + GENERATION_CHUNK]
        rows = images[owners] + noise_scale * torch.randn(len(owners), dim, generator=generator)
        texts[start:start + len(owners)] = torch.nn.functional.normalize(rows, dim=1)
    return images, texts, text_to_image


def dense_recalls(images: torch.Tensor, texts: torch.Tensor, text_to_image: torch.Tensor, ks: list[int],
                  batch_size: int = 64) -> dict[str, float]:
    """CLIP_benchmark's computation: the full text x image score matrix and a boolean positive-pair
    matrix; for each K, top-K per row in batches, one-hot the indices, count positives hit."""
    scores = texts @ images.T
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(texts)), text_to_image] = True

    def hit_rate(rows: torch.Tensor, positives: torch.Tensor, k: int) -> float:
        hits = []
        for start in range(0, len(rows), batch_size):
            topk = rows[start:start + batch_size].topk(k, dim=1).indices
            one_hot = torch.nn.functional.one_hot(topk, num_classes=rows.shape[1])
            true_positives = (one_hot * positives[start:start + batch_size, None, :]).sum(dim=(1, 2))
            hits.append(true_positives > 0)
        return torch.cat(hits).float().mean().item()

    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = hit_rate(scores, positive_pairs, k)
        metrics[f"text_retrieval_recall@{k}"] = hit_rate(scores.T, positive_pairs.T, k)
    return metrics


def measure(args: argparse.Namespace) -> dict:
    """Runs in the child process: one method on freshly generated features."""
    images, texts, text_to_image = make_features(args.images, args.captions_per_image, args.dim, args.noise,
                                                 args.seed)
    rss_with_features = _current_rss_mb()
    started = time.perf_counter()
    if args.method == "dense":
        metrics = dense_recalls(images, texts, text_to_image, args.ks)
    else:
        metrics = retrieval_metrics(images, texts, text_to_image, args.ks,
                                    exact_ranks=args.method == "harness-exact")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"method": args.method, "images": args.images, "texts": len(texts), "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak), "extra_rss_mb": round(peak - rss_with_features), "metrics": metrics}


def run_child(args: argparse.Namespace, method: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.speed.eval_scaling", "measure", "--method", method,
               "--images", str(args.images), "--captions-per-image", str(args.captions_per_image),
               "--dim", str(args.dim), "--noise", str(args.noise), "--seed", str(args.seed),
               "--ks", *map(str, args.ks)]
    completed = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout)


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _print_table(results: list[dict]) -> None:
    print("| method | images | captions | seconds | peak RSS (MB) | extra RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(f"| {result['method']} | {result['images']:,} | {result['texts']:,} | {result['seconds']} "
              f"| {result['peak_rss_mb']:,} | {result['extra_rss_mb']:,} |")
    print("metrics:", json.dumps(results[0]["metrics"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["compare", "gallery", "measure"],
                        help="compare: all methods on 5,000 x 25,000; gallery: the harness on 1M captions; "
                             "measure: one method (used by the other two in a child process)")
    parser.add_argument("--method", choices=METHODS, default="harness")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=None,
                        help="default: 5 for compare, 200 for gallery (1,000,000 captions)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    args = parser.parse_args()
    if args.captions_per_image is None:
        args.captions_per_image = 200 if args.mode == "gallery" else 5

    if args.mode == "measure":
        print(json.dumps(measure(args)))
        return
    methods = METHODS if args.mode == "compare" else ("harness",)
    results = [run_child(args, method) for method in methods]
    for result in results[1:]:
        _assert_same_recalls(results[0], result)
    _print_table(results)


def _assert_same_recalls(expected: dict, actual: dict) -> None:
    """Same hit counts: one query is 1/len(queries) >= 1e-6, far above float32-mean rounding."""
    for name, value in expected["metrics"].items():
        assert math.isclose(actual["metrics"][name], value, rel_tol=1e-6, abs_tol=1e-9), \
            (actual["method"], name, actual["metrics"][name], value)


if __name__ == "__main__":
    main()
