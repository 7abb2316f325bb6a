"""Embedding: batching and order, and the distributed shard + all-gather path (2 gloo ranks)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipdro.eval.embed import embed_texts


class LengthModel(torch.nn.Module):
    """Text feature = (text length, 1): a text out of place changes the matrix."""

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([tokens[:, 0], torch.ones(len(tokens))], dim=1)


def length_tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[float(len(text))] for text in texts])


TEXTS = ["a" * n for n in range(1, 8)]


def expected_features(texts: list[str]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor([[float(len(t)), 1.0] for t in texts]), dim=1)


def test_batches_keep_input_order():
    for batch_size in (1, 3, 100):
        features = embed_texts(LengthModel(), length_tokenizer, TEXTS, batch_size=batch_size)
        assert torch.allclose(features, expected_features(TEXTS))


def _embed_on_rank(rank: int, world: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results[rank] = [embed_texts(LengthModel(), length_tokenizer, texts, batch_size=2)
                         for texts in (TEXTS, TEXTS[:1])]  # 7 texts: shards 3 + 4; 1 text: an empty shard
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_shards_in_order(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        # fork: the children reuse the imported torch (spawn would spend seconds re-importing it)
        mp.start_processes(_embed_on_rank, args=(2, str(tmp_path / "init"), results), nprocs=2,
                           start_method="fork")
        gathered = dict(results)
    for rank in (0, 1):
        assert torch.allclose(gathered[rank][0], expected_features(TEXTS))
        assert torch.allclose(gathered[rank][1], expected_features(TEXTS[:1]))
