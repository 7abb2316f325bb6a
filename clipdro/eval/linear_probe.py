"""Linear probe: a logistic-regression head on frozen, L2-normalised image features (CLIP_benchmark's
``linear_probe`` recipe, trained with torch on any device, the CPU included).

Recipe (as CLIP_benchmark 1.6.2): one ``nn.Linear(D, C)``, cross-entropy, AdamW (``lr`` 0.1, no
warm-up, cosine decay to 0 over all steps), ``epochs`` 10 over shuffled mini-batches. The weight
decay is chosen on a held-out ``val_proportion`` of the training split: 97 values log-spaced over
[1e-6, 1e2]; first the 7 at 1e-6, 1e-4.67, ..., 1e2, then around the best so far at index steps 8,
4, 2, 1 (best = highest validation top-1; the first seen wins ties); the final head is trained on
the whole training split (train + held-out) with that weight decay and scored on the test split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError
from clipdro.eval.embed import embed_images
from clipdro.eval.results import PER_QUERY_FORMAT, query_sha256
from clipdro.eval.tasks import Preprocess, TaskResult
from clipdro.eval.zeroshot import metrics_from_ranks, zeroshot_ranks

# CLIP_benchmark's weight-decay grid and its coarse first pass (every 16th value: 7 of them).
WEIGHT_DECAYS = np.logspace(-6, 2, num=97).tolist()
COARSE_STEP = 16
REFINE_SPANS = (8, 4, 2, 1)


@dataclass
class ProbeOptions:
    lr: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    val_proportion: float = 0.2  # held out of the training split to choose the weight decay
    weight_decay: float | None = None  # given: no search, the head is trained on the whole training split
    seed: int = 0


@dataclass
class ProbeFit:
    head: torch.nn.Linear
    weight_decay: float
    validation_acc1: dict[float, float]  # weight decay -> held-out top-1, for every value tried


def train_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
               options: ProbeOptions) -> torch.nn.Linear:
    """A linear head trained on ``features`` [N, D] (float32) with CLIP_benchmark's schedule, seeded by
    ``options.seed`` (initialisation and batch order)."""
    generator = torch.Generator().manual_seed(options.seed)
    head = torch.nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():  # nn.Linear's default init, drawn from the seeded generator
        bound = 1 / math.sqrt(features.shape[1])
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=weight_decay)
    batches_per_epoch = math.ceil(len(features) / options.batch_size)
    total_steps = options.epochs * batches_per_epoch
    step = 0
    for _ in range(options.epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), options.batch_size):
            batch = order[start:start + options.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(math.pi * step / total_steps)) * options.lr
            loss = torch.nn.functional.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return head


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, options: ProbeOptions) -> ProbeFit:
    """Choose the weight decay on a held-out part of the training split (unless given), then train the
    final head on the whole split."""
    features, labels = features.float().cpu(), torch.as_tensor(labels, dtype=torch.long)
    if options.weight_decay is not None:
        return ProbeFit(train_head(features, labels, num_classes, options.weight_decay, options),
                        options.weight_decay, {})
    held_out = round(len(features) * options.val_proportion)
    if not 0 < held_out < len(features):
        raise UsageError(f"--val-proportion {options.val_proportion} of {len(features)} training images leaves "
                         "no image to train or to validate on (or give --weight-decay)")
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(options.seed))
    train, val = order[held_out:], order[:held_out]
    tried: dict[float, float] = {}

    def peak(indices: list[int]) -> int:
        """CLIP_benchmark's ``find_peak``: the index of the best held-out top-1 among ``indices``
        (strictly better than 0 and than earlier ones; index 0 when none beats 0)."""
        best_index, best_acc = 0, 0.0
        for index in indices:
            decay = WEIGHT_DECAYS[index]
            if decay not in tried:  # training is deterministic given the seed: a value is trained once
                head = train_head(features[train], labels[train], num_classes, decay, options)
                with torch.no_grad():  # top-1 with the pessimistic tie rule: a diverged (NaN) head scores 0
                    tried[decay] = float(np.mean(zeroshot_ranks(head(features[val]), labels[val]) == 0))
            if tried[decay] > best_acc:
                best_index, best_acc = index, tried[decay]
        return best_index

    best = peak(list(range(0, len(WEIGHT_DECAYS), COARSE_STEP)))
    for span in REFINE_SPANS:
        best = peak([max(best - span, 0), best, min(best + span, len(WEIGHT_DECAYS) - 1)])
    decay = WEIGHT_DECAYS[best]
    return ProbeFit(train_head(features, labels, num_classes, decay, options), decay, tried)


def evaluate_linear_probe(
    model: torch.nn.Module,
    preprocess: Preprocess,
    train_set: EvalSet,
    test_set: EvalSet,
    options: ProbeOptions,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    num_workers: int = 0,
) -> tuple[TaskResult, ProbeFit]:
    """Embed both splits with the frozen image tower, fit the probe on ``train_set``, score ``test_set``:
    acc1, acc5, mean_per_class_recall and the per-query true-class ranks (as zero-shot results)."""
    test_labels = labels_in_training_classes(train_set, test_set)
    num_classes = len(train_set.classnames)
    started = time.perf_counter()
    features = [embed_images(model, preprocess, [split.image_source(i) for i in range(len(split.images))],
                             batch_size, device, num_workers, precision, names=split.images, where=split.description)
                for split in (train_set, test_set)]
    embedded = time.perf_counter()
    fit = fit_probe(features[0], torch.tensor(train_set.labels), num_classes, options)
    trained = time.perf_counter()
    with torch.no_grad():
        ranks = zeroshot_ranks(fit.head(features[1]), test_labels)
    per_query = {
        "format": PER_QUERY_FORMAT,
        "query_sha256": query_sha256(test_set.images, labels=test_labels),
        "rank_cap": None,
        "label": test_labels,
        "true_class_rank": ranks.tolist(),
    }
    result = TaskResult(metrics=metrics_from_ranks(ranks, test_labels, num_classes),
                        timings={"embedding_s": embedded - started, "training_s": trained - embedded,
                                 "search_s": time.perf_counter() - trained},
                        sizes={"num_images": len(test_set.images), "num_train_images": len(train_set.images),
                               "num_classes": num_classes}, per_query=per_query)
    return result, fit


def labels_in_training_classes(train_set: EvalSet, test_set: EvalSet) -> list[int]:
    """The test images' labels in the training split's class order (matched by class name when the
    two splits list their classes differently); a test class the training split lacks is refused."""
    for split in (train_set, test_set):
        if not split.has_labels:
            raise UsageError(f"evaluation set {split.name!r} has no labels for a linear probe")
    if train_set.classnames == test_set.classnames:
        return list(test_set.labels)
    index = {name: label for label, name in enumerate(train_set.classnames)}
    unknown = sorted({test_set.classnames[label] for label in test_set.labels} - set(index))
    if unknown:
        raise UsageError(f"{len(unknown)} class(es) of test set {test_set.name!r} are not in training set "
                         f"{train_set.name!r}: {', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}")
    return [index[test_set.classnames[label]] for label in test_set.labels]
