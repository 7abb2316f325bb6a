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
from clipdro.eval import retrieval, zeroshot
from clipdro.eval.embed import embed_images, embed_texts
from clipdro.eval.results import PER_QUERY_FORMAT, query_sha256
from clipdro.eval.zeroshot import Template, build_classifier

Tokenizer = Callable[[list[str]], torch.Tensor]
Preprocess = Callable[[Image.Image], torch.Tensor]


@dataclass
class TaskResult:
    metrics: dict[str, float]
    timings: dict[str, float]  # seconds: embedding_s, search_s (zero-shot adds classifier_s)
    sizes: dict[str, int]  # num_images and num_texts / num_classes
    # The per-query ranks the metrics are computed from, as written to result files (see
    # docs/evaluation.md, "Comparing two models"): format, query_sha256, rank_cap, then
    # image_retrieval_rank + text_retrieval_rank (retrieval) or label + true_class_rank (zero-shot).
    per_query: dict | None = None


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
    paths = [evalset.image_source(i) for i in range(len(evalset.images))]
    started = time.perf_counter()
    image_features = embed_images(model, preprocess, paths, batch_size, device, num_workers, precision,
                                  names=evalset.images, where=evalset.description)
    text_features = embed_texts(model, tokenizer, texts, batch_size, device, precision)
    embedded = time.perf_counter()
    ranks = retrieval.retrieval_ranks(image_features, text_features, text_to_image, ks, exact_ranks=exact_ranks)
    metrics = retrieval.metrics_from_ranks(ranks, ks, exact_ranks=exact_ranks)
    searched = time.perf_counter()
    per_query = {
        "format": PER_QUERY_FORMAT,
        "query_sha256": query_sha256(evalset.images, texts=texts, text_to_image=text_to_image),
        "rank_cap": None if exact_ranks else max(int(k) for k in ks),
        "image_retrieval_rank": ranks["image_retrieval"].tolist(),  # one per caption (text query)
        "text_retrieval_rank": ranks["text_retrieval"].tolist(),  # one per image (image query)
    }
    return TaskResult(metrics=metrics,
                      timings={"embedding_s": embedded - started, "search_s": searched - embedded},
                      sizes={"num_images": len(paths), "num_texts": len(texts)}, per_query=per_query)


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
    paths = [evalset.image_source(i) for i in range(len(evalset.images))]
    started = time.perf_counter()
    classifier = build_classifier(model, tokenizer, classnames, templates, device, precision=precision)
    built = time.perf_counter()
    image_features = embed_images(model, preprocess, paths, batch_size, device, num_workers, precision,
                                  names=evalset.images, where=evalset.description)
    embedded = time.perf_counter()
    ranks = zeroshot.zeroshot_ranks(image_features @ classifier.cpu(), evalset.labels)
    metrics = zeroshot.metrics_from_ranks(ranks, evalset.labels, len(classnames))
    scored = time.perf_counter()
    per_query = {
        "format": PER_QUERY_FORMAT,
        "query_sha256": query_sha256(evalset.images, labels=evalset.labels),
        "rank_cap": None,
        "label": [int(label) for label in evalset.labels],
        "true_class_rank": ranks.tolist(),
    }
    return TaskResult(metrics=metrics,
                      timings={"classifier_s": built - started, "embedding_s": embedded - built,
                               "search_s": scored - embedded},
                      sizes={"num_images": len(paths), "num_classes": len(classnames)}, per_query=per_query)
