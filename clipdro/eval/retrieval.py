"""Image-text retrieval metrics with the names and definitions of CLIP_benchmark.

Both directions reduce to one question per query: where does its best positive land in the
ranked gallery?  A text query has one positive (its image); an image query has every caption
of that image as a positive.  We express positives with *group ids*: a gallery item is a
positive of a query when both carry the same image index (text queries carry
``text_to_image[t]``, image galleries carry ``0..N-1``; image queries carry their own index,
text galleries carry ``text_to_image``).

Rank and tie rule (pessimistic): the rank of a query is the number of *negatives* whose
score is >= the score of its best positive.  A query hits at K when rank < K.  A negative
that ties the best positive is therefore always counted ahead of it, whatever the gallery
order, so the rule depends only on the scores: FAISS (whose order among equal scores is an
implementation detail: faiss-cpu 1.15 returns higher ids first) and the brute-force path agree.
Without ties this is exactly CLIP_benchmark's definition: a text query hits when its image
is among the top K images, an image query when ANY of its captions is among the top K texts.

How many neighbours to retrieve: K, not K + (captions per image) - 1.  "Any caption in the
top K texts" looks only at the first K results; a positive further down cannot make the
query a hit, however many captions the image has.  So one search with k = max(ks) answers
every K in ks.  The only case the top-k list cannot settle is a tie between the best
positive and the last retrieved score (negatives with that same score may lie beyond the
list); those rare queries are recomputed exactly by the brute-force path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from clipdro.eval.faiss_backend import installed_faiss_distributions, load_faiss

# faiss-gpu's brute-force top-k supports at most this k; larger k uses the CPU index.
GPU_MAX_K = 2048
# What search_backend says for exact_ranks (the chunked torch path; faiss is not used).
BRUTE_FORCE_BACKEND = "brute force (exact ranks)"
# Brute-force path: at most this many query x gallery scores (float32) per chunk, ~64 MB.
MAX_SCORES_PER_CHUNK = 1 << 24

ArrayLike = torch.Tensor | np.ndarray


def retrieval_metrics(
    image_features: ArrayLike,
    text_features: ArrayLike,
    text_to_image: Sequence[int] | ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    *,
    exact_ranks: bool = False,
    query_chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K in both directions, keyed like CLIP_benchmark.

    ``image_features`` [N, D] and ``text_features`` [M, D] are L2-normalised (cosine
    similarity = inner product); ``text_to_image[t]`` is the image of caption t, and every
    image needs at least one caption.  Returns, for each K in order,
    ``image_retrieval_recall@K`` (text -> image) and ``text_retrieval_recall@K``
    (image -> any of its captions).  With ``exact_ranks`` the scores are computed by the
    chunked brute-force path instead of FAISS, and the 1-based ``*_mean_rank`` and
    ``*_median_rank`` of the best positive are added.  Queries are processed
    ``query_chunk_size`` at a time so memory stays bounded for million-item galleries.
    The per-query ranks behind these numbers are :func:`retrieval_ranks`.
    """
    ranks = retrieval_ranks(image_features, text_features, text_to_image, ks, exact_ranks=exact_ranks,
                            query_chunk_size=query_chunk_size)
    return metrics_from_ranks(ranks, ks, exact_ranks=exact_ranks)


def retrieval_ranks(
    image_features: ArrayLike,
    text_features: ArrayLike,
    text_to_image: Sequence[int] | ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    *,
    exact_ranks: bool = False,
    query_chunk_size: int = 1024,
) -> dict[str, np.ndarray]:
    """0-based pessimistic rank of each query's best positive, per direction (int64 arrays).

    ``image_retrieval``: one rank per caption (text query), in caption order;
    ``text_retrieval``: one rank per image (image query), in image order.  A query hits at K
    when its rank < K.  With ``exact_ranks`` the ranks are exact; otherwise (FAISS top-k with
    k = max(ks)) they are capped at max(ks): a stored value of max(ks) means "not in the top
    max(ks)", which answers rank < K exactly for every K <= max(ks).
    """
    images = _as_float32_matrix(image_features, "image_features")
    texts = _as_float32_matrix(text_features, "text_features")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"feature dims differ: images {images.shape[1]}, texts {texts.shape[1]}")
    owners = _validate_text_to_image(text_to_image, len(texts), len(images))
    ks = _validate_ks(ks)
    if query_chunk_size < 1:
        raise ValueError(f"query_chunk_size must be >= 1, got {query_chunk_size}")

    image_ids = np.arange(len(images), dtype=np.int64)
    # image retrieval: text queries against the image gallery; text retrieval: the reverse.
    directions = {
        "image_retrieval": (texts, images, owners, image_ids),
        "text_retrieval": (images, texts, image_ids, owners),
    }
    ranks = {}
    for name, (queries, gallery, query_groups, gallery_groups) in directions.items():
        if exact_ranks:
            ranks[name] = brute_force_positive_ranks(queries, gallery, query_groups, gallery_groups,
                                                     query_chunk_size)
        else:
            found = faiss_positive_ranks(queries, gallery, query_groups, gallery_groups, max(ks), query_chunk_size)
            ranks[name] = np.minimum(found, max(ks))  # tie fallbacks may be exact beyond the cut
    return ranks


def metrics_from_ranks(ranks: dict[str, np.ndarray], ks: Sequence[int] = (1, 5, 10), *,
                       exact_ranks: bool = False) -> dict[str, float]:
    """:func:`retrieval_metrics`'s dict from :func:`retrieval_ranks`' output: recall@K = mean(rank < K)
    (K <= max(ks) when the ranks are capped); with ``exact_ranks`` also 1-based mean and median ranks."""
    ks = _validate_ks(ks)
    metrics = {}
    for k in ks:  # CLIP_benchmark's key order: image then text retrieval, for each K
        for name in ("image_retrieval", "text_retrieval"):
            metrics[f"{name}_recall@{k}"] = float(np.mean(ranks[name] < k))
    if exact_ranks:
        for name in ("image_retrieval", "text_retrieval"):
            one_based = ranks[name] + 1
            metrics[f"{name}_mean_rank"] = float(np.mean(one_based))
            metrics[f"{name}_median_rank"] = float(np.median(one_based))
    return metrics


def search_backend(ks: Sequence[int], gallery_sizes: Sequence[int], *, exact_ranks: bool = False) -> str:
    """What :func:`retrieval_ranks` searches with, as result files record it (``retrieval_backend``):
    ``brute force (exact ranks)``, ``faiss-cpu`` (FAISS's CPU index) or ``faiss-gpu (1 GPU)`` /
    ``faiss-gpu (1 GPU of N visible)`` (a GpuIndexFlatIP on GPU 0), with the reason when faiss-gpu
    falls back to its CPU index.  ``gallery_sizes``: the image and text gallery sizes (the number
    of images and of captions); the two directions are named when they differ.  The rare
    queries tied at the cut of the top-k list are re-ranked by the brute-force path whatever
    the backend (see the module docstring)."""
    if exact_ranks:
        return BRUTE_FORCE_BACKEND
    k = max(_validate_ks(ks))
    backends = [faiss_index_backend(k, size) for size in gallery_sizes]
    if len(set(backends)) == 1:
        return backends[0]
    return "; ".join(f"{size}-item gallery: {backend}" for size, backend in zip(gallery_sizes, backends, strict=True))


def faiss_index_backend(k: int, gallery_size: int) -> str:
    """The index :func:`faiss_positive_ranks` uses by default for top-``k`` over ``gallery_size`` items."""
    faiss = load_faiss()
    gpus = faiss.get_num_gpus()
    k = min(k, gallery_size)
    if _gpu_index_usable(faiss, k):
        return "faiss-gpu (1 GPU)" if gpus == 1 else f"faiss-gpu (1 GPU of {gpus} visible)"
    if gpus > 0:
        return f"faiss-cpu (faiss-gpu's top-k is limited to k <= {GPU_MAX_K}, k = {k})"
    if any(name.startswith("faiss-gpu") for name in installed_faiss_distributions()):
        return "faiss-cpu (faiss-gpu installed, no GPU visible)"
    return "faiss-cpu"


def _gpu_index_usable(faiss, k: int) -> bool:
    return faiss.get_num_gpus() > 0 and k <= GPU_MAX_K


def faiss_positive_ranks(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    k: int,
    query_chunk_size: int = 1024,
    *,
    use_gpu: bool | None = None,
) -> np.ndarray:
    """Pessimistic rank of each query's best positive, exact below ``k``.

    Searches an exact inner-product index (IndexFlatIP; on the GPU when faiss sees one and
    k <= GPU_MAX_K) for the top k.  A returned rank r < k is exact; r >= k only says the
    query misses at every K <= k (the value is then k, or the exact rank for tie fallbacks).
    ``use_gpu``: None picks as above (:func:`faiss_index_backend` names the choice); False
    forces the CPU index; True requires the GPU index (a ValueError where it cannot be used).
    """
    faiss = load_faiss()
    count, dim = gallery.shape
    k = min(k, count)  # asking for more than the gallery would return -1 ids
    if use_gpu is None:
        use_gpu = _gpu_index_usable(faiss, k)
    elif use_gpu and not _gpu_index_usable(faiss, k):
        raise ValueError(f"use_gpu=True needs faiss-gpu with a visible GPU and k <= {GPU_MAX_K} "
                         f"(faiss sees {faiss.get_num_gpus()} GPUs, k = {k})")
    gpu_resources = None  # must outlive the GPU index
    if use_gpu:
        gpu_resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(gpu_resources, dim)
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(gallery)

    ranks = np.empty(len(queries), dtype=np.int64)
    tied_at_cut = np.zeros(len(queries), dtype=bool)
    for start in range(0, len(queries), query_chunk_size):
        stop = min(start + query_chunk_size, len(queries))
        scores, ids = index.search(queries[start:stop], k)  # sorted by decreasing score
        positive = gallery_groups[ids] == query_groups[start:stop, None]
        has_positive = positive.any(axis=1)
        best = np.where(positive, scores, -np.inf).max(axis=1)
        ahead = ((scores >= best[:, None]) & ~positive).sum(axis=1)
        # No positive in the top k: k negatives score >= every positive, so rank >= k.
        ranks[start:stop] = np.where(has_positive, ahead, k)
        # Items beyond the list score <= scores[:, -1]; they can tie the best positive (and
        # count ahead of it) only when that last score equals it and the list is not the
        # whole gallery.
        tied_at_cut[start:stop] = has_positive & (scores[:, -1] >= best) & (k < count)
    del index, gpu_resources  # free the gallery copy before the fallback

    rows = np.flatnonzero(tied_at_cut)
    if len(rows):
        ranks[rows] = brute_force_positive_ranks(queries[rows], gallery, query_groups[rows], gallery_groups,
                                                 query_chunk_size)
    return ranks


def brute_force_positive_ranks(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_groups: np.ndarray,
    gallery_groups: np.ndarray,
    query_chunk_size: int = 1024,
) -> np.ndarray:
    """Exact pessimistic rank of each query's best positive from full score rows.

    Chunks are at most ``query_chunk_size`` queries and MAX_SCORES_PER_CHUNK scores, so the
    full query x gallery matrix is never held.
    """
    gallery_t = torch.from_numpy(gallery)
    gallery_groups_t = torch.from_numpy(gallery_groups)
    rows = max(1, min(query_chunk_size, MAX_SCORES_PER_CHUNK // len(gallery)))
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), rows):
        stop = min(start + rows, len(queries))
        scores = torch.from_numpy(queries[start:stop]) @ gallery_t.T
        positive = gallery_groups_t[None, :] == torch.from_numpy(query_groups[start:stop])[:, None]
        best = scores.masked_fill(~positive, -torch.inf).amax(dim=1, keepdim=True)
        ranks[start:stop] = ((scores >= best) & ~positive).sum(dim=1).numpy()
    return ranks


def _validate_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"recall K values must be positive integers, got {ks}")
    return ks


def _as_float32_matrix(features: ArrayLike, name: str) -> np.ndarray:
    """float32, C-contiguous [count, dim] numpy (what faiss requires); shares memory when it can."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    array = np.ascontiguousarray(features, dtype=np.float32)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty [count, dim] matrix, got shape {array.shape}")
    return array


def _validate_text_to_image(text_to_image: Sequence[int] | ArrayLike, num_texts: int,
                            num_images: int) -> np.ndarray:
    if isinstance(text_to_image, torch.Tensor):
        text_to_image = text_to_image.cpu().numpy()
    owners = np.asarray(text_to_image, dtype=np.int64)
    if owners.shape != (num_texts,):
        raise ValueError(f"text_to_image has shape {owners.shape}, expected ({num_texts},)")
    if owners.min() < 0 or owners.max() >= num_images:
        raise ValueError(f"text_to_image values must lie in [0, {num_images})")
    captions_per_image = np.bincount(owners, minlength=num_images)
    if (captions_per_image == 0).any():
        missing = int(np.flatnonzero(captions_per_image == 0)[0])
        raise ValueError(f"image {missing} has no caption; every image needs at least one")
    return owners
