"""Text -> packed sequences -> per-rank slices of global batches."""

import json

import pytest
import torch

from clipdro.errors import UsageError
from clipdro.llm.data import (
    IGNORE_INDEX,
    PYDOC_TOPICS,
    GlobalBatches,
    load_packed,
    pack_sequences,
    read_documents,
    split_tail,
    tokenize_documents,
)
from clipdro.llm.tokenizer import ByteTokenizer, load_tokenizer


def test_byte_tokenizer_round_trips_text_and_saves_itself(tmp_path):
    tokenizer = ByteTokenizer()
    text = "température ≈ 0.7"
    assert tokenizer.decode(tokenizer.encode(text) + [tokenizer.eos_token_id]) == text
    tokenizer.save(tmp_path)
    assert isinstance(load_tokenizer(str(tmp_path)), ByteTokenizer)


def test_packing_predicts_every_stream_token_once_and_masks_padding():
    stream = torch.arange(1, 24)  # 23 tokens -> ceil(22 / 5) = 5 sequences of 5
    inputs, targets = pack_sequences(stream, seq_len=5, pad_id=0)
    assert inputs.shape == targets.shape == (5, 5)
    valid = targets != IGNORE_INDEX
    assert targets[valid].tolist() == stream[1:].tolist()  # each token after the first, once, in order
    assert inputs.flatten()[: stream.numel() - 1].tolist() == stream[:-1].tolist()
    assert valid[:4].all() and valid[4].tolist() == [True, True, False, False, False]
    assert (inputs[4, 3:] == 0).all()  # right padding with the pad id
    # Within a sequence the target is the next input token.
    assert torch.equal(targets[:, :-1][valid[:, :-1]], inputs[:, 1:][valid[:, :-1]])


def test_documents_end_with_end_of_text_and_jsonl_is_checked(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "ab"}) + "\n\n" + json.dumps({"text": "c"}) + "\n")
    documents = read_documents(str(path))
    assert documents == ["ab", "c"]
    stream, owners = tokenize_documents(documents, ByteTokenizer())
    assert stream.tolist() == [97, 98, 256, 99, 256] and owners.tolist() == [0, 0, 0, 1, 1]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(UsageError, match="bad.jsonl:1: no string field 'text'"):
        read_documents(str(tmp_path / "bad.jsonl"))
    with pytest.raises(UsageError, match="must be .txt or .jsonl"):
        (tmp_path / "x.csv").write_text("a")
        read_documents(str(tmp_path / "x.csv"))
    with pytest.raises(UsageError, match="not found"):
        read_documents(str(tmp_path / "missing.txt"))


def test_pydoc_topics_is_a_real_offline_corpus():
    documents = read_documents(PYDOC_TOPICS)
    assert len(documents) > 50 and sum(map(len, documents)) > 400_000
    packed = load_packed([PYDOC_TOPICS], ByteTokenizer(), seq_len=256)
    train, heldout = split_tail(packed, 0.05)
    num_sequences = packed.inputs.shape[0]
    assert heldout.inputs.shape[0] == round(0.05 * num_sequences)
    assert train.inputs.shape[0] + heldout.inputs.shape[0] == num_sequences
    assert torch.equal(heldout.documents, packed.documents[-heldout.inputs.shape[0]:])
    assert packed.num_documents == len(documents)


def test_every_target_knows_its_document(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in ("abc", "de", "f")))
    packed = load_packed([str(path)], ByteTokenizer(), seq_len=4)
    # stream: a b c <eot> d e <eot> f <eot> (9 tokens, documents 0 0 0 0 1 1 1 2 2); targets = stream[1:]
    valid = packed.targets != IGNORE_INDEX
    assert packed.targets[valid].tolist() == [98, 99, 256, 100, 101, 256, 102, 256]
    assert packed.documents[valid].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert (packed.documents[~valid] == IGNORE_INDEX).all() and packed.num_documents == 3
    assert packed.rows(slice(1, None)).documents.tolist() == packed.documents[1:].tolist()


def test_ranks_split_exactly_the_global_batches_of_one_process():
    inputs = torch.arange(22)[:, None].repeat(1, 3)  # row i is all i
    single = GlobalBatches(inputs, inputs, batch_size=4, rank=0, world_size=1, seed=7)
    ranks = [GlobalBatches(inputs, inputs, batch_size=2, rank=rank, world_size=2, seed=7) for rank in range(2)]
    assert len(single) == len(ranks[0]) == 5  # 22 // 4, the incomplete batch dropped
    for _epoch in range(2):
        single_rows = [batch[:, 0].tolist() for batch, _ in single]
        rank_rows = [[batch[:, 0].tolist() for batch, _ in ranks[rank]] for rank in range(2)]
        assert single_rows == [first + second for first, second in zip(*rank_rows, strict=True)]
    assert single.state_dict() == {"epoch": 2, "batches_done": 0}


def test_resumed_batches_continue_where_they_stopped():
    inputs = torch.arange(12)[:, None]
    reference = [batch.tolist() for batch, _ in GlobalBatches(inputs, inputs, 3, 0, 1, seed=1)]
    interrupted = GlobalBatches(inputs, inputs, 3, 0, 1, seed=1)
    iterator = iter(interrupted)
    first = [next(iterator)[0].tolist() for _ in range(2)]
    resumed = GlobalBatches(inputs, inputs, 3, 0, 1, seed=1)
    resumed.load_state_dict(interrupted.state_dict())
    assert first + [batch.tolist() for batch, _ in resumed] == reference


def test_too_little_text_for_one_global_batch_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot fill one global batch"):
        GlobalBatches(torch.zeros(3, 4), torch.zeros(3, 4), batch_size=2, rank=0, world_size=2, seed=0)
