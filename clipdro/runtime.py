"""Where and in which precision clipdro computes: one device parser and one autocast policy.

Training (`run.device`, `run.precision`), evaluation during training and the evaluation
commands (`--device`, `--precision`) all go through these two functions, so "amp_bf16" means
the same thing everywhere.

Precisions:

* ``fp32``: no autocast.
* ``amp_bf16``: autocast to bfloat16 (no loss scaling needed).
* ``amp``: autocast to float16; the trainer adds a GradScaler.
* ``auto`` (evaluation only): ``amp_bf16`` on a CUDA device that has bfloat16, ``amp`` on
  older GPUs, ``fp32`` elsewhere (the CPU path stays exact).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from clipdro.errors import UsageError

Precision = Literal["fp32", "amp_bf16", "amp"]
PRECISIONS: tuple[str, ...] = ("fp32", "amp_bf16", "amp")
EVAL_PRECISIONS: tuple[str, ...] = ("auto", *PRECISIONS)


def parse_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; any torch device name
    otherwise. A malformed name, or CUDA asked for where there is none, is a :class:`UsageError`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name} requested but CUDA is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """A concrete precision; ``auto`` picks by device (see the module docstring)."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "amp_bf16" if torch.cuda.is_bf16_supported() else "amp"
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is not one of {list(EVAL_PRECISIONS)}")
    return precision  # type: ignore[return-value]


def autocast_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast region for ``precision`` on ``device`` (a no-op for fp32)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
