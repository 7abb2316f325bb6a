"""Retrieval metrics: hand-computed cases, the pessimistic tie rule, parity with a dense
CLIP_benchmark-style computation, and invariance to chunking."""

import math

import numpy as np
import pytest
import torch

from clipdro.eval import retrieval as retrieval_module
from clipdro.eval import retrieval_metrics
from clipdro.eval.retrieval import (
    brute_force_positive_ranks,
    faiss_positive_ranks,
    metrics_from_ranks,
    retrieval_ranks,
)


def features_from_scores(scores: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Images = standard basis vectors, so text t scores exactly scores[t][j] against image j.

    One extra "slack" coordinate brings each text to unit norm without touching any score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    num_texts, num_images = scores.shape
    slack = np.sqrt(1.0 - (scores ** 2).sum(axis=1))
    texts = np.concatenate([scores, slack[:, None]], axis=1).astype(np.float32)
    images = np.eye(num_images, num_images + 1, dtype=np.float32)
    return images, texts


# --- hand-computed cases -------------------------------------------------------------------

# 3 images, one caption each. Rows: text, columns: image score.
ONE_CAPTION_SCORES = [
    [0.5, 0.6, 0.4],   # t0 -> image 0: image 1 scores higher            -> rank 1
    [0.1, 0.7, 0.15],  # t1 -> image 1: best                              -> rank 0
    [0.3, 0.6, 0.2],   # t2 -> image 2: images 0 and 1 score higher       -> rank 2
]
# Text retrieval reads the columns. Image 0: t0 0.5, t1 0.1, t2 0.3 -> t0 first (rank 0).
# Image 1: t0 0.6, t1 0.7, t2 0.6 -> t1 first (rank 0). Image 2: t0 0.4, t1 0.15, t2 0.2 -> rank 1.


@pytest.mark.parametrize("exact_ranks", [False, True])
def test_one_caption_per_image_by_hand(exact_ranks):
    images, texts = features_from_scores(ONE_CAPTION_SCORES)
    metrics = retrieval_metrics(images, texts, [0, 1, 2], ks=(1, 2, 3), exact_ranks=exact_ranks)
    expected = {
        "image_retrieval_recall@1": 1 / 3, "text_retrieval_recall@1": 2 / 3,
        "image_retrieval_recall@2": 2 / 3, "text_retrieval_recall@2": 1.0,
        "image_retrieval_recall@3": 1.0, "text_retrieval_recall@3": 1.0,
    }
    if exact_ranks:  # 1-based ranks: image retrieval 2, 1, 3; text retrieval 1, 1, 2
        expected |= {"image_retrieval_mean_rank": 2.0, "image_retrieval_median_rank": 2.0,
                     "text_retrieval_mean_rank": 4 / 3, "text_retrieval_median_rank": 1.0}
    assert list(metrics) == list(expected)  # CLIP_benchmark's key order
    assert metrics == pytest.approx(expected)


@pytest.mark.parametrize("exact_ranks", [False, True])
def test_per_query_ranks_by_hand(exact_ranks):
    images, texts = features_from_scores(ONE_CAPTION_SCORES)
    ranks = retrieval_ranks(images, texts, [0, 1, 2], ks=(1,), exact_ranks=exact_ranks)
    # 0-based (negatives ahead of the best positive); FAISS ranks are capped at max(ks) = 1.
    assert ranks["image_retrieval"].tolist() == ([1, 0, 2] if exact_ranks else [1, 0, 1])
    assert ranks["text_retrieval"].tolist() == [0, 0, 1]
    assert ranks["image_retrieval"].dtype == np.int64


# 2 images, 5 captions each (t0-t4 -> image 0, t5-t9 -> image 1); columns: image 0, image 1.
FIVE_CAPTION_SCORES = [
    [0.9, 0.1],   # t0 (image 0) hit@1
    [0.2, 0.7],   # t1 (image 0) miss@1
    [0.5, 0.4],   # t2 (image 0) hit@1
    [0.3, 0.6],   # t3 (image 0) miss@1
    [0.45, 0.05],  # t4 (image 0) hit@1
    [0.8, 0.3],   # t5 (image 1) miss@1
    [0.1, 0.2],   # t6 (image 1) hit@1
    [0.35, 0.15],  # t7 (image 1) miss@1
    [0.05, 0.5],  # t8 (image 1) hit@1
    [0.25, 0.45],  # t9 (image 1) hit@1
]
# Image 0's column sorted: t0 0.9 (own caption) first -> rank 0.
# Image 1's column sorted: t1 0.7 (image 0's), t3 0.6 (image 0's), t8 0.5 (own) -> rank 2.


@pytest.mark.parametrize("exact_ranks", [False, True])
def test_five_captions_per_image_by_hand(exact_ranks):
    images, texts = features_from_scores(FIVE_CAPTION_SCORES)
    text_to_image = [0] * 5 + [1] * 5
    metrics = retrieval_metrics(images, texts, text_to_image, ks=(1, 2, 3), exact_ranks=exact_ranks)
    assert metrics["image_retrieval_recall@1"] == pytest.approx(6 / 10)
    assert metrics["image_retrieval_recall@2"] == 1.0
    assert metrics["text_retrieval_recall@1"] == 0.5
    assert metrics["text_retrieval_recall@2"] == 0.5  # image 1 needs 3 texts: two of image 0 come first
    assert metrics["text_retrieval_recall@3"] == 1.0
    if exact_ranks:  # image retrieval 1-based ranks: 1,2,1,2,1,2,1,2,1,1; text retrieval: 1, 3
        assert metrics["image_retrieval_mean_rank"] == pytest.approx(1.4)
        assert metrics["image_retrieval_median_rank"] == 1.0
        assert metrics["text_retrieval_mean_rank"] == 2.0
        assert metrics["text_retrieval_median_rank"] == 2.0


# --- tie rule --------------------------------------------------------------------------------

def test_tied_negative_counts_ahead_whatever_its_index():
    # t0 belongs to image 0 and ties image 1 (a larger index): an index-order rule would call
    # it a hit at 1, the pessimistic rule a miss. t1 belongs to image 1 and ties image 0.
    images, texts = features_from_scores([[0.6, 0.6, 0.0], [0.6, 0.6, 0.0], [0.0, 0.1, 0.9]])
    for exact_ranks in (False, True):
        metrics = retrieval_metrics(images, texts, [0, 1, 2], ks=(1, 2), exact_ranks=exact_ranks)
        assert metrics["image_retrieval_recall@1"] == pytest.approx(1 / 3)
        assert metrics["image_retrieval_recall@2"] == 1.0


def test_ties_across_the_top_k_cut_are_settled_exactly():
    # Every text scores 0.4 against every image: each best positive ties 5 negatives, so
    # its rank is 5 whatever order FAISS returns the tied items in. With k = 5 < 6 the tie
    # crosses the cut, and the brute-force fallback must decide.
    num = 6
    images, texts = features_from_scores([[0.4] * num] * num)
    for exact_ranks in (False, True):
        metrics = retrieval_metrics(images, texts, range(num), ks=(1, 5, 6), exact_ranks=exact_ranks)
        for direction in ("image", "text"):
            assert metrics[f"{direction}_retrieval_recall@1"] == 0.0
            assert metrics[f"{direction}_retrieval_recall@5"] == 0.0
            assert metrics[f"{direction}_retrieval_recall@6"] == 1.0
    groups = np.arange(num, dtype=np.int64)
    ranks = faiss_positive_ranks(texts, images, groups, groups, k=5)
    assert np.minimum(ranks, 5).tolist() == [5] * num
    assert brute_force_positive_ranks(texts, images, groups, groups).tolist() == [5] * num


# --- parity with the dense score-matrix computation ------------------------------------------

def clip_benchmark_style_recall(images: torch.Tensor, texts: torch.Tensor, text_to_image: torch.Tensor,
                                k: int) -> tuple[float, float]:
    """Dense reference: full text x image score matrix, top-k, "any positive in the top k"."""
    scores = texts @ images.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(texts)), text_to_image] = True
    text_topk = scores.topk(k, dim=1).indices
    image_hits = positive.gather(1, text_topk).any(dim=1).float().mean().item()
    image_topk = scores.T.topk(k, dim=1).indices
    text_hits = positive.T.gather(1, image_topk).any(dim=1).float().mean().item()
    return image_hits, text_hits


def random_retrieval_set(num_images: int, captions_per_image: int, dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(num_images, dim, generator=generator), dim=1)
    text_to_image = torch.arange(num_images).repeat_interleave(captions_per_image)
    noise = torch.randn(len(text_to_image), dim, generator=generator)
    texts = torch.nn.functional.normalize(images[text_to_image] + 0.9 * noise, dim=1)
    return images, texts, text_to_image


@pytest.mark.parametrize("exact_ranks", [False, True])
def test_parity_with_dense_topk_on_tie_free_data(exact_ranks):
    images, texts, text_to_image = random_retrieval_set(60, 5, 16)
    ks = (1, 5, 10)
    metrics = retrieval_metrics(images, texts, text_to_image, ks, exact_ranks=exact_ranks)
    for k in ks:
        image_recall, text_recall = clip_benchmark_style_recall(images, texts, text_to_image, k)
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(image_recall)
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(text_recall)
    assert 0.0 < metrics["image_retrieval_recall@1"] < metrics["image_retrieval_recall@10"] < 1.0


def test_exact_mean_rank_matches_a_sort():
    images, texts, text_to_image = random_retrieval_set(40, 3, 8, seed=1)
    metrics = retrieval_metrics(images, texts, text_to_image, exact_ranks=True)
    order = (texts @ images.T).argsort(dim=1, descending=True)
    one_based = (order == text_to_image[:, None]).int().argmax(dim=1) + 1
    assert metrics["image_retrieval_mean_rank"] == pytest.approx(one_based.float().mean().item())
    assert metrics["image_retrieval_median_rank"] == float(np.median(one_based.numpy()))


def test_capped_ranks_are_the_exact_ranks_cut_at_max_k_and_give_the_metrics():
    images, texts, text_to_image = random_retrieval_set(60, 5, 16, seed=3)
    ks = (1, 5, 10)
    exact = retrieval_ranks(images, texts, text_to_image, ks, exact_ranks=True)
    capped = retrieval_ranks(images, texts, text_to_image, ks)
    assert (len(capped["image_retrieval"]), len(capped["text_retrieval"])) == (300, 60)
    for direction in ("image_retrieval", "text_retrieval"):
        assert capped[direction].tolist() == np.minimum(exact[direction], 10).tolist()
        assert exact[direction].max() > 10  # the cap is exercised
    assert metrics_from_ranks(capped, ks) == retrieval_metrics(images, texts, text_to_image, ks)
    assert metrics_from_ranks(exact, ks, exact_ranks=True) == retrieval_metrics(images, texts, text_to_image, ks,
                                                                                exact_ranks=True)


# --- chunking ---------------------------------------------------------------------------------

@pytest.mark.parametrize("exact_ranks", [False, True])
def test_chunking_does_not_change_metrics(exact_ranks, monkeypatch):
    images, texts, text_to_image = random_retrieval_set(50, 5, 16, seed=2)
    reference = retrieval_metrics(images, texts, text_to_image, exact_ranks=exact_ranks,
                                  query_chunk_size=10_000)
    for chunk in (1, 7, 64):
        assert retrieval_metrics(images, texts, text_to_image, exact_ranks=exact_ranks,
                                 query_chunk_size=chunk) == reference
    # The brute-force path also caps a chunk by its score count (query rows x gallery size).
    monkeypatch.setattr(retrieval_module, "MAX_SCORES_PER_CHUNK", 300)
    assert retrieval_metrics(images, texts, text_to_image, exact_ranks=exact_ranks) == reference


# --- input checks -----------------------------------------------------------------------------

def test_inputs_are_checked():
    images, texts, text_to_image = random_retrieval_set(4, 2, 8)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(images, texts, torch.zeros_like(text_to_image))
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(images, texts, text_to_image[:-1])
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics(images, texts, text_to_image, ks=(0,))
    with pytest.raises(ValueError, match="dims differ"):
        retrieval_metrics(images[:, :4], texts, text_to_image)


def test_accepts_half_precision_tensors_and_numpy():
    images, texts, text_to_image = random_retrieval_set(20, 2, 8)
    from_numpy = retrieval_metrics(images.numpy(), texts.numpy(), text_to_image.numpy())
    from_bf16 = retrieval_metrics(images.bfloat16(), texts.bfloat16(), text_to_image.tolist())
    assert from_numpy.keys() == from_bf16.keys()
    assert all(math.isfinite(value) for value in from_bf16.values())


# --- the faiss import guard and the recorded backend ------------------------------------------

def _pretend_installed(monkeypatch, names: set[str]) -> None:
    """importlib.metadata as clipdro's faiss guard sees it: exactly ``names`` among the faiss distributions."""
    from clipdro.eval import faiss_backend

    real_version = faiss_backend.metadata.version

    def version(name: str) -> str:
        if name in faiss_backend.FAISS_DISTRIBUTIONS:
            if name in names:
                return "1.15.1"
            raise faiss_backend.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(faiss_backend.metadata, "version", version)


def test_faiss_guard_refuses_both_builds_with_the_fix(monkeypatch):
    from clipdro.errors import UsageError
    from clipdro.eval.faiss_backend import load_faiss

    _pretend_installed(monkeypatch, {"faiss-cpu", "faiss-gpu"})
    with pytest.raises(UsageError, match="faiss-cpu and faiss-gpu are both installed") as refusal:
        load_faiss()
    assert "pip uninstall -y faiss-cpu faiss-gpu && pip install 'clipdro[gpu]'" in str(refusal.value)
    images, texts = features_from_scores(ONE_CAPTION_SCORES)
    with pytest.raises(UsageError, match="both installed"):  # the FAISS search path goes through the guard
        retrieval_metrics(images, texts, range(3))
    assert retrieval_metrics(images, texts, range(3), exact_ranks=True)  # brute force needs no faiss


def test_faiss_guard_refuses_a_missing_faiss_with_the_fix(monkeypatch):
    import sys

    from clipdro.errors import UsageError
    from clipdro.eval.faiss_backend import faiss_environment, load_faiss

    _pretend_installed(monkeypatch, set())
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'clipdro\[cpu\]' \(or 'clipdro\[gpu\]' on a CUDA machine\)"):
        load_faiss()
    assert faiss_environment() == {"faiss": None, "faiss_gpus": None}  # result files: null, not a crash


def test_search_backend_names_what_searches(monkeypatch):
    import faiss

    from clipdro.eval.retrieval import BRUTE_FORCE_BACKEND, search_backend

    assert search_backend((1, 5, 10), (100, 500), exact_ranks=True) == BRUTE_FORCE_BACKEND
    assert BRUTE_FORCE_BACKEND == "brute force (exact ranks)"
    _pretend_installed(monkeypatch, {"faiss-cpu"})
    assert search_backend((1, 5, 10), (100, 500)) == "faiss-cpu"
    _pretend_installed(monkeypatch, {"faiss-gpu"})
    assert search_backend((1, 5, 10), (100, 500)) == "faiss-cpu (faiss-gpu installed, no GPU visible)"
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert search_backend((1, 5, 10), (100, 500)) == "faiss-gpu (1 GPU)"
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 4)
    assert search_backend((1, 5, 10), (100, 500)) == "faiss-gpu (1 GPU of 4 visible)"
    # k above faiss-gpu's limit: the CPU index, unless the gallery is smaller than the limit anyway.
    assert search_backend((1, 3000), (100_000, 500_000)) == (
        "faiss-cpu (faiss-gpu's top-k is limited to k <= 2048, k = 3000)")
    assert search_backend((1, 3000), (1000, 500_000)) == (
        "1000-item gallery: faiss-gpu (1 GPU of 4 visible); "
        "500000-item gallery: faiss-cpu (faiss-gpu's top-k is limited to k <= 2048, k = 3000)")


def test_use_gpu_forces_or_requires_an_index():
    images, texts = features_from_scores(ONE_CAPTION_SCORES)
    groups = np.arange(3, dtype=np.int64)
    assert faiss_positive_ranks(texts, images, groups, groups, k=2, use_gpu=False).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="use_gpu=True needs faiss-gpu"):  # faiss-cpu here: no GPU index
        faiss_positive_ranks(texts, images, groups, groups, k=2, use_gpu=True)
