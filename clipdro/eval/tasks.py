"""Whole evaluation tasks on an EvalSet: embed, then score.  Shared by the CLI and training.

Under torch.distributed every rank embeds its shard, receives all features and computes the
same metrics; the caller writes results from rank 0. ``precision`` follows :mod:`clipdro.runtime`
(``auto``: mixed precision on CUDA, fp32 on the CPU; training passes its own ``run.precision``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError
from clipdro.eval.embed import embed_images, embed_texts
from clipdro.eval.retrieval import retrieval_metrics
from clipdro.eval.zeroshot import Template, build_classifier, zeroshot_metrics

Tokenizer = Callable[[list[str]], torch.Tensor]
Preprocess = Callable[[Image.Image], torch.Tensor]


@dataclass
class TaskResult:
    metrics: dict[str, float]
    timings: dict[str, float]  # seconds: embedding_s, search_s (zero-shot adds classifier_s)
    sizes: dict[str, int]  # num_images and num_texts / num_classes


def evaluate_retrieval(
    model: torch.nn.Module,
    preprocess: Preprocess,
    tokenizer: Tokenizer,
    evalset: EvalSet,
    ks: Sequence[int] = (1, 5, 10),
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    num_workers: int = 0,
    exact_ranks: bool = False,
) -> TaskResult:
    texts, text_to_image = evalset.flat_captions()  # raises UsageError for a set without captions
    paths = [evalset.image_path(i) for i in range(len(evalset.images))]
    started = time.perf_counter()
    image_features = embed_images(model, preprocess, paths, batch_size, device, num_workers, precision,
                                  names=evalset.images, where=evalset.description)
    text_features = embed_texts(model, tokenizer, texts, batch_size, device, precision)
    embedded = time.perf_counter()
    metrics = retrieval_metrics(image_features, text_features, text_to_image, ks, exact_ranks=exact_ranks)
    searched = time.perf_counter()
    return TaskResult(metrics=metrics,
                      timings={"embedding_s": embedded - started, "search_s": searched - embedded},
                      sizes={"num_images": len(paths), "num_texts": len(texts)})


def evaluate_zeroshot(
    model: torch.nn.Module,
    preprocess: Preprocess,
    tokenizer: Tokenizer,
    evalset: EvalSet,
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    num_workers: int = 0,
) -> TaskResult:
    if not evalset.has_labels:
        raise UsageError(f"evaluation set {evalset.name!r} has no labels for zero-shot classification")
    paths = [evalset.image_path(i) for i in range(len(evalset.images))]
    started = time.perf_counter()
    classifier = build_classifier(model, tokenizer, classnames, templates, device, precision=precision)
    built = time.perf_counter()
    image_features = embed_images(model, preprocess, paths, batch_size, device, num_workers, precision,
                                  names=evalset.images, where=evalset.description)
    embedded = time.perf_counter()
    metrics = zeroshot_metrics(image_features @ classifier.cpu(), evalset.labels)
    scored = time.perf_counter()
    return TaskResult(metrics=metrics,
                      timings={"classifier_s": built - started, "embedding_s": embedded - built,
                               "search_s": scored - embedded},
                      sizes={"num_images": len(paths), "num_classes": len(classnames)})
