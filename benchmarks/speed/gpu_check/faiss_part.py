"""The GPU check's faiss part: retrieval on synthetic features with FAISS's GPU index and its CPU index
(clipdro.eval.retrieval's search); equal recalls expected. Named faiss_part so as not to shadow faiss."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks.speed.gpu_check.startup import Context, part_result

FAISS_NOT_BROUGHT = "GPU FAISS not measured: no wheel within the 64 MiB budget"


def synthetic_retrieval_set(num_captions: int, dim: int = 512, seed: int = 0):
    """(image features, text features, text_to_image): 5 captions per image, each a noisy copy of its image."""
    import numpy as np

    rng = np.random.default_rng(seed)
    num_images = num_captions // 5
    images = rng.standard_normal((num_images, dim), dtype=np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    owners = np.repeat(np.arange(num_images), 5)[:num_captions]
    texts = images[owners] + 6.0 * rng.standard_normal((len(owners), dim), dtype=np.float32) / dim ** 0.5
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts, owners


def faiss_agreement(num_captions: int, use_gpu: Sequence[bool] = (False, True), ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Ranks and recalls of both directions with each index in ``use_gpu``; equal recalls expected."""
    import numpy as np

    from clipdro.eval.retrieval import faiss_positive_ranks, metrics_from_ranks

    images, texts, owners = synthetic_retrieval_set(num_captions)
    image_ids = np.arange(len(images), dtype=np.int64)
    runs = {}
    for gpu in use_gpu:
        started = time.perf_counter()
        ranks = {"image_retrieval": faiss_positive_ranks(texts, images, owners, image_ids, max(ks), use_gpu=gpu),
                 "text_retrieval": faiss_positive_ranks(images, texts, image_ids, owners, max(ks), use_gpu=gpu)}
        seconds = time.perf_counter() - started
        runs["gpu" if gpu else "cpu"] = {"ranks": ranks, "seconds": seconds,
                                         "metrics": metrics_from_ranks(ranks, ks)}
    names = list(runs)
    first, second = runs[names[0]], runs[names[-1]]
    differing = {direction: int((first["ranks"][direction] != second["ranks"][direction]).sum())
                 for direction in first["ranks"]}
    return {"num_images": len(images), "num_captions": len(texts), "dim": images.shape[1],
            "metrics": {name: run["metrics"] for name, run in runs.items()},
            "search_seconds": {name: round(run["seconds"], 3) for name, run in runs.items()},
            "recalls_equal": first["metrics"] == second["metrics"], "differing_ranks": differing}


def faiss_part(args: argparse.Namespace, context: Context) -> dict:
    from clipdro.errors import UsageError
    from clipdro.eval.faiss_backend import installed_faiss_distributions, load_faiss

    gpu_builds = [name for name in installed_faiss_distributions() if name.startswith("faiss-gpu")]
    if not gpu_builds:
        return part_result("skipped", FAISS_NOT_BROUGHT + " (faiss-gpu is not installed)",
                           reason=FAISS_NOT_BROUGHT, installed=installed_faiss_distributions())
    try:
        faiss = load_faiss()
    except UsageError as error:
        return part_result("skipped", f"GPU FAISS not measured: {error}", reason=str(error))
    if faiss.get_num_gpus() == 0:
        return part_result("skipped", f"GPU FAISS not measured: {gpu_builds[0]} {faiss.__version__} sees no GPU",
                           reason="faiss.get_num_gpus() == 0")
    result = faiss_agreement(args.faiss_captions)
    seconds = result["search_seconds"]
    summary = (f"{result['num_captions']} captions x {result['num_images']} images: recalls "
               f"{'equal' if result['recalls_equal'] else 'DIFFER'}, ranks differing {result['differing_ranks']}; "
               f"search {seconds['gpu']:.2f} s GPU vs {seconds['cpu']:.2f} s CPU")
    header = "| metric | CPU index | GPU index |\n|---|---:|---:|\n"
    rows = "".join(f"| {key} | {value:.4f} | {result['metrics']['gpu'][key]:.4f} |\n"
                   for key, value in result["metrics"]["cpu"].items())
    return part_result("passed" if result["recalls_equal"] else "failed", summary, faiss=faiss.__version__,
                       **result, table_md=header + rows + f"| search seconds | {seconds['cpu']:.3f} | "
                                                          f"{seconds['gpu']:.3f} |\n")
