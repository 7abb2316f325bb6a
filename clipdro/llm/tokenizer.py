"""Text <-> token ids for the LLM path: a byte-level tokenizer that needs no files, or a transformers one.

Both kinds expose the small interface the data packer, generation and evaluation need
(:class:`TextTokenizer`), and both save into the folder of an exported model, so
``load_tokenizer(folder)`` finds the right one again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from clipdro.errors import UsageError


class TextTokenizer(Protocol):
    eos_token_id: int
    vocab_size: int  # ids are in [0, vocab_size); the LM's vocabulary may be larger (padded), never smaller

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, folder: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and one end-of-text id, 256 (vocabulary 257, log V = 5.549).

    It works offline on any text and round-trips it exactly, at the price of one token per byte.
    End-of-text separates documents in packed sequences; it is also the id that fills padding
    positions (whose targets are ignored, so the choice does not matter there).
    """

    FILE_NAME = "clipdro_byte_tokenizer.json"
    eos_token_id = 256
    vocab_size = 257

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        # Special ids are dropped; a sampled byte sequence need not be valid UTF-8.
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / self.FILE_NAME).write_text(
            json.dumps({"kind": "byte", "eos_token_id": self.eos_token_id, "vocab_size": self.vocab_size}) + "\n",
            encoding="utf-8")


class HFTokenizer:
    """A transformers tokenizer (a local folder, or a hub name when the network is there)."""

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except OSError as error:
            raise UsageError(f"cannot load tokenizer {name_or_path!r}: {str(error).splitlines()[0]}") from None
        if self.tokenizer.eos_token_id is None:
            raise UsageError(f"tokenizer {name_or_path!r} has no end-of-text token to separate documents")
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self.vocab_size = len(self.tokenizer)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))


def load_tokenizer(spec: str) -> TextTokenizer:
    """``"byte"``, a folder holding a saved byte tokenizer, or anything ``AutoTokenizer`` loads."""
    if spec == "byte" or (Path(spec) / ByteTokenizer.FILE_NAME).is_file():
        return ByteTokenizer()
    return HFTokenizer(spec)
