"""Embedding: batching and order, the distributed shard + all-gather path (2 gloo ranks), and
unreadable images (one error naming them, the same on every rank, with or without workers)."""

import io

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from clipdro.data.images import load_image
from clipdro.errors import UsageError
from clipdro.eval.embed import embed_images, embed_texts


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


def jpeg(colour: tuple[int, int, int] = (200, 10, 10), size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


class MeanColourModel(torch.nn.Module):
    """Image feature = (mean red, mean green, mean blue) of the preprocessed image."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


def mean_colour(image: Image.Image) -> torch.Tensor:
    return torch.tensor(image.resize((1, 1)).getpixel((0, 0)), dtype=torch.float32) + 1


def test_load_image_decodes_fully_or_names_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.new("L", (4, 4), 7).save(good)
    image = load_image(good)
    assert image.mode == "RGB" and image.size == (4, 4)
    assert load_image(jpeg()).size == (16, 16)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg(size=64)[:300])
    with pytest.raises(UsageError, match=r"cut\.jpg: unreadable image \("):
        load_image(truncated)
    with pytest.raises(UsageError, match=r"^image 4 of the set: unreadable image \(not an image PIL can identify\)$"):
        load_image(b"plain text", name="image 4 of the set")
    with pytest.raises(UsageError, match=r"missing\.png: unreadable image \(No such file or directory\)"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_images_are_named_after_the_pass(num_workers):
    images = [jpeg(), jpeg()[:200], jpeg(), b"junk", jpeg()]
    with pytest.raises(UsageError) as error:
        embed_images(MeanColourModel(), mean_colour, images, batch_size=2, num_workers=num_workers)
    message = str(error.value)
    assert message.startswith("2 unreadable images in the evaluation images: image 1 of the set (")
    assert "image 3 of the set (not an image PIL can identify)" in message and "\n" not in message
    features = embed_images(MeanColourModel(), mean_colour, [jpeg(), jpeg((0, 0, 250))], batch_size=1,
                            num_workers=num_workers)
    assert features.shape == (2, 3) and torch.allclose(features.norm(dim=1), torch.ones(2))


def _embed_bad_image_on_rank(rank: int, world: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # 4 images: rank 0 embeds 0-1 (readable), rank 1 embeds 2-3 (3 is truncated).
        images = [jpeg(), jpeg(), jpeg(), jpeg()[:200]]
        embed_images(MeanColourModel(), mean_colour, images, batch_size=2,
                     names=[f"img/{i}.jpg" for i in range(4)], where="set 'x'")
        results[rank] = "no error"
    except UsageError as error:
        results[rank] = str(error)
    finally:
        dist.destroy_process_group()


def test_every_rank_raises_the_same_error_for_an_unreadable_image(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_embed_bad_image_on_rank, args=(2, str(tmp_path / "init"), results), nprocs=2,
                           start_method="fork")
        gathered = dict(results)
    assert gathered[0] == gathered[1]
    assert gathered[0].startswith("1 unreadable image in set 'x': img/3.jpg (")
