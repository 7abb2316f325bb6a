"""Embed images and texts with any open_clip-style model, in batches, for evaluation.

The model needs ``encode_image(images)`` and ``encode_text(tokens)``.  Features come back
L2-normalised, float32, on the CPU, in input order.  Under torch.distributed every rank
embeds one contiguous shard and the shards are all-gathered in rank order, so every rank
ends with the same full matrix (the collective runs on ``device``: CUDA tensors for NCCL).
``precision`` is :mod:`clipdro.runtime`'s: ``auto`` (the default) uses bf16 autocast on CUDA
where supported, else fp16, and stays fp32 on the CPU; training passes its ``run.precision``.

Images are decoded by :func:`clipdro.data.images.decode_image`. An image that does not decode (truncated, not an
image, a decompression bomb, missing) is the user's input, not a bug: the dataset returns the
failure instead of raising (an exception in a DataLoader worker would come back as a
multi-line traceback), :func:`embed_images` still decodes the rest, and after the pass every
rank raises the same one-line :class:`~clipdro.errors.UsageError` naming the first few
unreadable images and their count (the failures of all ranks are gathered first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clipdro.data.images import DECODE_ERRORS, decode_failure, decode_image, unreadable_images_error
from clipdro.distributed import gather_objects, gather_shards, shard_bounds
from clipdro.runtime import autocast_context


def embed_images(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    paths: Sequence[str | Path | bytes],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    precision: str = "auto",
    *,
    names: Sequence[str] | None = None,
    where: str | None = None,
) -> torch.Tensor:
    """[len(paths), D] normalised image features; images are decoded as RGB and preprocessed.

    An item of ``paths`` is an image file or the encoded bytes of one (images read from shards).
    Unreadable images raise one :class:`UsageError` after the pass (on every rank), naming them
    by ``names`` (default: the path, or "image N of the set" for bytes) and the set by ``where``
    (default: the images' common folder)."""
    start, stop = shard_bounds(len(paths))
    loader = DataLoader(_ImageFiles(paths[start:stop], preprocess, offset=start), batch_size=batch_size,
                        num_workers=num_workers, shuffle=False, collate_fn=_collate_images)
    failures: list[tuple[int, str]] = []  # (index into paths, PIL's reason), this rank's shard

    def batches() -> Iterator[torch.Tensor]:
        for images, batch_failures in loader:
            failures.extend(batch_failures)
            # After a failure the features are discarded: keep decoding (to name every bad
            # image) but stop running the model.
            if not failures and images is not None:
                yield images

    local = _encode_local(model, model.encode_image, batches(), device, precision)
    # Every rank must take the same branch: gather the failures before deciding to raise.
    everyone = sorted(failure for rank_failures in gather_objects(failures) for failure in rank_failures)
    if everyone:
        described = [(_describe(paths, index, names), reason) for index, reason in everyone]
        raise unreadable_images_error(described, where or _common_folder(paths))
    return gather_shards(local, len(paths)).cpu()


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
    return gather_shards(_encode_local(model, model.encode_text, batches, device, precision), len(texts)).cpu()










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
    """Decoded, preprocessed images; a decode failure comes back as ``(index, None, reason)``."""

    def __init__(self, paths: Sequence[str | Path | bytes], preprocess: Callable[[Image.Image], torch.Tensor],
                 offset: int = 0):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.offset = offset  # index of paths[0] in the whole set (this rank's shard start)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = decode_image(self.paths[index])
        except DECODE_ERRORS as error:
            return self.offset + index, None, decode_failure(error)
        # Errors in the transform are bugs, not bad input: they propagate.
        return self.offset + index, self.preprocess(image), None




def _collate_images(items: list[tuple[int, torch.Tensor | None, str | None]]
                    ) -> tuple[torch.Tensor | None, list[tuple[int, str]]]:
    """(stacked decoded images or None, [(index, reason) of the failures]) of one batch."""
    images = [image for _, image, _ in items if image is not None]
    failures = [(index, reason) for index, image, reason in items if image is None]
    return (torch.stack(images) if images else None), failures


def _describe(paths: Sequence[str | Path | bytes], index: int, names: Sequence[str] | None) -> str:
    if names is not None:
        return str(names[index])
    source = paths[index]
    return f"image {index} of the set" if isinstance(source, bytes) else str(source)


def _common_folder(paths: Sequence[str | Path | bytes]) -> str:
    folders = {str(Path(source).parent) for source in paths if not isinstance(source, bytes)}
    return folders.pop() if len(folders) == 1 else "the evaluation images"


def _encode_local(model: torch.nn.Module, encoder: Callable[[torch.Tensor], torch.Tensor],
                  batches: Iterator[torch.Tensor], device: str | torch.device, precision: str) -> torch.Tensor:
    """Run ``encoder`` (a method of ``model``) on this rank's batches and normalise (no collective)."""
    device = torch.device(device)
    features = []
    with inference_mode(model), autocast_context(precision, device):
        for batch in batches:
            features.append(F.normalize(encoder(batch.to(device)).float(), dim=-1))
    return torch.cat(features) if features else torch.empty(0, 0, device=device)
