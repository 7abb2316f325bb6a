"""Text files -> token stream -> fixed-length packed sequences -> per-rank slices of global batches.

Packing: every document is tokenized without special tokens and followed by end-of-text;
the documents are concatenated into one stream, and sequence i covers stream positions
[i * L, i * L + L] (L + 1 tokens, consecutive sequences share one boundary token):
inputs = the first L tokens, targets = the last L, so every stream token after the first is
predicted exactly once. The last, shorter sequence is right-padded with end-of-text and its
padded targets are IGNORE_INDEX. Right padding needs no attention mask: under causal
attention a position never sees the padding after it, and padded positions carry no loss.
Beside the targets, :class:`PackedText` keeps which document each target token belongs to (a
document's end-of-text is its own last token), so evaluation can resample whole documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from clipdro.errors import UsageError
from clipdro.llm.config import LMDataConfig
from clipdro.llm.tokenizer import TextTokenizer

IGNORE_INDEX = -100
PYDOC_TOPICS = "builtin:pydoc_topics"

Packed = tuple[torch.Tensor, torch.Tensor]  # (inputs [N, L], targets [N, L]) of packed sequences


class PackedText(NamedTuple):
    """Packed sequences of a list of documents."""

    inputs: torch.Tensor  # [N, L] token ids
    targets: torch.Tensor  # [N, L] next-token ids, IGNORE_INDEX at the right padding
    documents: torch.Tensor  # [N, L] index of each target's document in the loaded order, IGNORE_INDEX at padding

    def rows(self, selection: slice) -> PackedText:
        return PackedText(self.inputs[selection], self.targets[selection], self.documents[selection])

    @property
    def num_documents(self) -> int:
        return int(self.documents.max()) + 1 if self.documents.numel() else 0


def read_documents(source: str, text_field: str = "text") -> list[str]:
    """The documents of one source: a .txt file (one document), a .jsonl file (one per line) or
    ``builtin:pydoc_topics`` (Python's own help topics, one document each, in sorted topic order)."""
    if source == PYDOC_TOPICS:
        from pydoc_data.topics import topics

        return [topics[name] for name in sorted(topics)]
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"data file not found: {path}")
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".jsonl":
        documents = []
        for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{line_number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise UsageError(f"{path}:{line_number}: no string field {text_field!r}")
            documents.append(record[text_field])
        return documents
    raise UsageError(f"{path}: data files must be .txt or .jsonl")


def tokenize_documents(documents: list[str], tokenizer: TextTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two int64 streams: each document's tokens followed by end-of-text, and for every token the index of
    its document."""
    stream: list[int] = []
    owners: list[int] = []
    for index, document in enumerate(documents):
        tokens = tokenizer.encode(document)
        stream.extend(tokens)
        stream.append(tokenizer.eos_token_id)
        owners.extend([index] * (len(tokens) + 1))
    return torch.tensor(stream, dtype=torch.long), torch.tensor(owners, dtype=torch.long)


def pack_sequences(stream: torch.Tensor, seq_len: int, pad_id: int) -> Packed:
    """(inputs [N, L], targets [N, L]) as described in the module docstring."""
    if stream.numel() < 2:
        raise UsageError("the token stream is empty: no text to train or evaluate on")
    num_sequences = -(-(stream.numel() - 1) // seq_len)  # ceil: the last sequence may be short
    padded_length = num_sequences * seq_len + 1
    tokens = torch.full((padded_length,), pad_id, dtype=torch.long)
    tokens[: stream.numel()] = stream
    targets_stream = torch.full((padded_length,), IGNORE_INDEX, dtype=torch.long)
    targets_stream[: stream.numel()] = stream
    starts = torch.arange(num_sequences)[:, None] * seq_len
    offsets = torch.arange(seq_len)[None, :]
    return tokens[starts + offsets], targets_stream[starts + offsets + 1]


def load_packed(sources: list[str], tokenizer: TextTokenizer, seq_len: int,
                text_field: str = "text") -> PackedText:
    documents = [document for source in sources for document in read_documents(source, text_field)]
    stream, owners = tokenize_documents(documents, tokenizer)
    inputs, targets = pack_sequences(stream, seq_len, tokenizer.eos_token_id)
    _, target_documents = pack_sequences(owners, seq_len, IGNORE_INDEX)  # padded targets: IGNORE_INDEX
    return PackedText(inputs, targets, target_documents)


def split_tail(packed: PackedText, fraction: float) -> tuple[PackedText, PackedText]:
    """(training part, held-out part): the held-out part is the last ``fraction`` of the sequences, a
    contiguous tail of the stream (no overlap except one token; the document cut there is in both)."""
    held_out = max(1, round(fraction * packed.inputs.shape[0]))
    if held_out >= packed.inputs.shape[0]:
        raise UsageError(f"data.eval_fraction={fraction} leaves no training sequences")
    return packed.rows(slice(None, -held_out)), packed.rows(slice(-held_out, None))


def load_datasets(config: LMDataConfig, tokenizer: TextTokenizer) -> tuple[PackedText, PackedText | None]:
    """(training sequences, held-out sequences or None): data.eval files if given, else the
    data.eval_fraction tail of the training stream, else no held-out set."""
    train = load_packed(config.train, tokenizer, config.seq_len, config.text_field)
    if config.eval:
        return train, load_packed(config.eval, tokenizer, config.seq_len, config.text_field)
    if config.eval_fraction > 0:
        return split_tail(train, config.eval_fraction)
    return train, None


class GlobalBatches:
    """Epochs of shuffled global batches; each rank iterates over its own rows of each.

    The order of epoch e is a permutation drawn from ``seed + e`` (the same on every rank); global
    batch k is rows [k * G, (k + 1) * G) of it with G = batch_size * world_size, and rank r takes
    rows [r * batch_size, (r + 1) * batch_size) of that. A world of W ranks therefore sees exactly
    the global batches one process with batch_size * W sees. The incomplete last batch is dropped.
    The position (epoch, batches done) is all the state a resume needs.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, rank: int,
                 world_size: int, seed: int):
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.global_batch = batch_size * world_size
        if inputs.shape[0] < self.global_batch:
            raise UsageError(f"{inputs.shape[0]} training sequences cannot fill one global batch of "
                             f"{self.global_batch}: lower data.batch_size or data.seq_len, or add text")
        self.epoch, self.batches_done = 0, 0

    def __len__(self) -> int:
        return self.inputs.shape[0] // self.global_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the current epoch; the next ``iter`` starts the following one."""
        order = torch.randperm(self.inputs.shape[0], generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.batches_done < len(self):
            start = self.batches_done * self.global_batch + self.rank * self.batch_size
            rows = order[start:start + self.batch_size]
            self.batches_done += 1
            yield self.inputs[rows], self.targets[rows]
        self.epoch, self.batches_done = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
