"""Decoding one image file (or its encoded bytes) for evaluation, and saying why one does not decode.

An image that does not decode (truncated, not an image, a decompression bomb, missing) is the
user's input, not a bug: callers catch :data:`DECODE_ERRORS` (or :class:`UnreadableImage`) and
report all failures of a pass at once with :func:`unreadable_images_error`. Used by evaluation
sets (:meth:`clipdro.data.evalset.EvalSet.check_images`) and the embedding passes of
:mod:`clipdro.eval.embed`; no torch here.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from clipdro.errors import UsageError

# What PIL raises for bytes that are not a (complete, sane) image: OSError covers truncated
# files, UnidentifiedImageError and missing files; the others come from individual plugins.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
                 Image.DecompressionBombError)
# How many unreadable images an error message names (the count covers them all).
NAMED_FAILURES = 3


def decode_image(source: str | Path | bytes) -> Image.Image:
    """The image at ``source`` (a file, or the encoded bytes of one), fully decoded, as RGB; PIL's
    errors (DECODE_ERRORS) pass through."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image.load()  # decode everything now: truncation shows here, not in the transform
        return image.convert("RGB")


def load_image(source: str | Path | bytes, name: str | None = None) -> Image.Image:
    """The image at ``source`` (a file, or the encoded bytes of one), fully decoded, as RGB.

    Any decode failure (truncated or damaged data, not an image, a decompression bomb, a missing
    file) raises :class:`UsageError` naming ``name`` (default: the path, or "encoded image" for
    bytes) and PIL's reason."""
    try:
        return decode_image(source)
    except DECODE_ERRORS as error:
        label = name or (str(source) if not isinstance(source, bytes) else "encoded image")
        raise UnreadableImage(label, decode_failure(error)) from None


class UnreadableImage(UsageError):
    """:func:`load_image`'s error: ``name`` and PIL's ``reason`` are kept for summaries."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: unreadable image ({reason})")
        self.name = name
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.name, self.reason)


def decode_failure(error: BaseException) -> str:
    """PIL's reason for a decode failure, short and on one line (no repeated path or object repr)."""
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image PIL can identify"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # FileNotFoundError & co.: the path is named by the caller
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def unreadable_images_error(failures: Sequence[tuple[str, str]], where: str) -> UsageError:
    """One line: ``N unreadable image(s) in WHERE: a.jpg (reason), b.png (reason), ...``."""
    named = ", ".join(f"{name} ({reason})" for name, reason in failures[:NAMED_FAILURES])
    more = f", ... ({len(failures) - NAMED_FAILURES} more)" if len(failures) > NAMED_FAILURES else ""
    noun = "image" if len(failures) == 1 else "images"
    return UsageError(f"{len(failures)} unreadable {noun} in {where}: {named}{more}")
