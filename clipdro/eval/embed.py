"""Embed images and texts with any open_clip-style model, in batches, for evaluation.

The model needs ``encode_image(images)`` and ``encode_text(tokens)``.  Features come back
L2-normalised, float32, on the CPU, in input order.  Under torch.distributed every rank
embeds one contiguous shard and the shards are all-gathered in rank order, so every rank
ends with the same full matrix (the collective runs on ``device``: CUDA tensors for NCCL).
Autocast (bf16 where supported, else fp16) is used on CUDA only; the CPU path stays fp32.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset


def embed_images(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    paths: Sequence[str | Path | bytes],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> torch.Tensor:
    """[len(paths), D] normalised image features; images are decoded as RGB and preprocessed.

    An item of ``paths`` is an image file or the encoded bytes of one (images read from shards)."""
    start, stop = _shard_bounds(len(paths))
    loader = DataLoader(_ImageFiles(paths[start:stop], preprocess), batch_size=batch_size,
                        num_workers=num_workers, shuffle=False)
    return _encode(model, model.encode_image, loader, len(paths), device)


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """[len(texts), D] normalised text features."""
    start, stop = _shard_bounds(len(texts))
    shard = list(texts[start:stop])
    batches = (tokenizer(shard[i:i + batch_size]) for i in range(0, len(shard), batch_size))
    return _encode(model, model.encode_text, batches, len(texts), device)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 if the GPU has it, else fp16); a no-op elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


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
            device: str | torch.device) -> torch.Tensor:
    """Run ``encoder`` (a method of ``model``) on this rank's batches, normalise, gather ranks in order."""
    device = torch.device(device)
    features = []
    with inference_mode(model), autocast_for(device):
        for batch in batches:
            features.append(F.normalize(encoder(batch.to(device)).float(), dim=-1))
    local = torch.cat(features) if features else torch.empty(0, 0, device=device)
    if _world_size() > 1:
        local = _gather_shards(local, total)
    return local.cpu()


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _shard_bounds(total: int, rank: int | None = None) -> tuple[int, int]:
    """This rank's contiguous slice [start, stop) of ``total`` items (sizes differ by at most 1)."""
    world = _world_size()
    if rank is None:
        rank = dist.get_rank() if world > 1 else 0
    return rank * total // world, (rank + 1) * total // world


def _gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate every rank's shard in rank order (all_gather needs equal shapes: pad, then trim)."""
    world = _world_size()
    sizes = [stop - start for start, stop in (_shard_bounds(total, rank) for rank in range(world))]
    # A rank with an empty shard does not know the feature dim: agree on it first.
    dim = torch.tensor([local.shape[1]], device=local.device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    padded = torch.zeros(max(sizes), int(dim), device=local.device)
    if len(local):
        padded[:len(local)] = local
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded)
    return torch.cat([shard[:size] for shard, size in zip(shards, sizes, strict=True)])
