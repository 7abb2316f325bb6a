"""Embed images and texts with any open_clip-style model, in batches, for evaluation.

The model needs ``encode_image(images)`` and ``encode_text(tokens)``.  Features come back
L2-normalised, float32, on the CPU, in input order.  Under torch.distributed every rank
embeds one contiguous shard and the shards are all-gathered in rank order, so every rank
ends with the same full matrix (the collective runs on ``device``: CUDA tensors for NCCL).
``precision`` is :mod:`clipdro.runtime`'s: ``auto`` (the default) uses bf16 autocast on CUDA
where supported, else fp16, and stays fp32 on the CPU; training passes its ``run.precision``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clipdro.distributed import gather_shards, shard_bounds
from clipdro.runtime import autocast_context


def embed_images(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    paths: Sequence[str | Path | bytes],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    precision: str = "auto",
) -> torch.Tensor:
    """[len(paths), D] normalised image features; images are decoded as RGB and preprocessed.

    An item of ``paths`` is an image file or the encoded bytes of one (images read from shards)."""
    start, stop = shard_bounds(len(paths))
    loader = DataLoader(_ImageFiles(paths[start:stop], preprocess), batch_size=batch_size,
                        num_workers=num_workers, shuffle=False)
    return _encode(model, model.encode_image, loader, len(paths), device, precision)


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> torch.Tensor:
    """[len(texts), D] normalised text features."""
    start, stop = shard_bounds(len(texts))
    shard = list(texts[start:stop])
    batches = (tokenizer(shard[i:i + batch_size]) for i in range(0, len(shard), batch_size))
    return _encode(model, model.encode_text, batches, len(texts), device, precision)


@contextlib.contextmanager
def inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """eval() + no_grad for the block, then the model's previous train/eval mode is restored
    (the training loop calls evaluation in the middle of training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[str | Path | bytes], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        source = self.paths[index]
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return self.preprocess(image.convert("RGB"))


def _encode(model: torch.nn.Module, encoder: Callable[[torch.Tensor], torch.Tensor],
            batches: Iterator[torch.Tensor] | DataLoader, total: int,
            device: str | torch.device, precision: str) -> torch.Tensor:
    """Run ``encoder`` (a method of ``model``) on this rank's batches, normalise, gather ranks in order."""
    device = torch.device(device)
    features = []
    with inference_mode(model), autocast_context(precision, device):
        for batch in batches:
            features.append(F.normalize(encoder(batch.to(device)).float(), dim=-1))
    local = torch.cat(features) if features else torch.empty(0, 0, device=device)
    return gather_shards(local, total).cpu()
