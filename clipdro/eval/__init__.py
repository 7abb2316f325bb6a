"""Evaluation harness: FAISS retrieval and zero-shot classification with CLIP_benchmark's metrics."""

from clipdro.eval.retrieval import retrieval_metrics

__all__ = ["retrieval_metrics"]
