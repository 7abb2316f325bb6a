import pytest
import torch
from shard_factory import image_bytes, sample_members, write_dense, write_img2dataset, write_tar

from clipdro.data.manifest import Manifest, ShardInfo
from clipdro.data.pipeline import DataSource, PipelineConfig, ShardStream, build_train_loader
from clipdro.errors import UsageError


def noisy_transform(image):
    """Mean colour plus a random draw: exposes both the sample and the transform RNG stream."""
    pixels = torch.tensor(image.getpixel((0, 0)), dtype=torch.float32)
    return torch.cat([pixels, torch.rand(1)])


def number_tokenizer(texts):
    """'picture number 12' -> [12, 0]: lets a test check caption/id pairing."""
    return torch.tensor([[int(text.split()[-1]), 0] for text in texts])


def make_loader(sources, **options):
    options.setdefault("num_workers", 0)
    options.setdefault("batch_size", 4)
    options.setdefault("shuffle_buffer", 8)
    config = PipelineConfig(sources=[s if isinstance(s, DataSource) else DataSource(str(s)) for s in sources],
                            **options)
    return build_train_loader(config, noisy_transform, number_tokenizer)


def epoch_ids(loader):
    return [int(i) for batch in loader for i in batch.sample_ids]


def epoch_tensors(loader):
    """One epoch, each batch flattened into one tensor (images, tokens and ids)."""
    return [torch.cat([b.images.flatten(), b.tokens.flatten().float(), b.sample_ids.float()]) for b in loader]


def same_tensors(first, second):
    return len(first) == len(second) and all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


@pytest.fixture
def dense(tmp_path):
    write_dense(tmp_path / "dense", count=48, per_shard=12)
    return tmp_path / "dense"


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_finite_epoch_reads_each_sample_once(dense, workers):
    loader = make_loader([dense], resampled=False, num_workers=workers)
    assert len(loader) == 12
    batches = list(loader)
    assert len(batches) == 12 and loader.epoch == 1
    ids = [int(i) for b in batches for i in b.sample_ids]
    assert sorted(ids) == list(range(48))
    for batch in batches:
        assert batch.images.shape == (4, 4) and batch.tokens.dtype == torch.long
        assert batch.tokens[:, 0].tolist() == batch.sample_ids.tolist()  # caption stays with its image
    assert sum(loader.counts.values()) == 0


def test_same_seed_same_stream_and_epochs_differ(dense):
    first, second = make_loader([dense], resampled=False), make_loader([dense], resampled=False)
    epoch0 = epoch_tensors(first)
    assert same_tensors(epoch0, epoch_tensors(second))
    assert not same_tensors(epoch0, epoch_tensors(first))  # epoch 1: new shard order, shuffle and crops
    assert not same_tensors(epoch0, epoch_tensors(make_loader([dense], resampled=False, seed=1)))


def test_finite_ranks_read_fixed_disjoint_ranges_with_more_workers_than_shards(dense, monkeypatch):
    # 3 ranks x 2 workers = 6 readers of 4 shards: whole shards per worker would refuse this layout.
    per_rank = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        loader = make_loader([dense], resampled=False, num_workers=2)
        assert len(loader) == 4  # 48 samples / 3 ranks = 16 = 4 batches of 4: nothing left out
        pieces = [piece for worker in (0, 1) for piece in loader.dataset.planned_pieces(rank, worker, epoch=0)]
        assert any(piece.start > 0 for piece in pieces)  # some shard is split between readers
        epochs = [epoch_ids(loader), epoch_ids(loader)]
        assert len(epochs[0]) == 16 and set(epochs[0]) == set(epochs[1])  # a fixed rank partition
        assert epochs[0] != epochs[1]  # ... in a new order each epoch
        per_rank.append(set(epochs[0]))
    assert set.union(*per_rank) == set(range(48)) and sum(len(ids) for ids in per_rank) == 48


def test_resampled_mode_mixes_sources_by_weight_and_differs_per_rank(tmp_path, monkeypatch):
    write_dense(tmp_path / "a", count=40, per_shard=10)
    write_dense(tmp_path / "b", count=20, per_shard=5)
    sources = [DataSource(str(tmp_path / "a"), weight=3.0),
               DataSource(str(tmp_path / "b/train-{000000..000003}.tar"))]
    loader = make_loader(sources, epoch_samples=800, num_workers=2)
    assert loader.dataset.num_samples == 60 and len(loader) == 200
    ids = epoch_ids(loader)
    assert len(ids) == 800 and all(0 <= i < 60 for i in ids)
    share_a = sum(i < 40 for i in ids) / len(ids)
    assert 0.65 < share_a < 0.85  # weights 3:1 are sample shares
    assert ids[0:4] != ids[4:8]  # batches 0 and 1 come from workers 0 and 1, seeded apart
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert epoch_ids(make_loader(sources, epoch_samples=800, num_workers=2))[:50] != ids[:50]


@pytest.mark.parametrize("resampled", [True, False])
def test_resume_continues_the_interrupted_epoch_exactly(dense, resampled):
    options = dict(resampled=resampled, num_workers=2, epoch_samples=40 if resampled else None)
    full = make_loader([dense], **options)
    list(full)  # epoch 0
    reference = epoch_tensors(full)  # epoch 1
    interrupted = make_loader([dense], **options)
    list(interrupted)
    for _ in zip(range(3), interrupted, strict=False):
        pass
    state = interrupted.state_dict()
    assert state["epoch"] == 1 and state["batches_done"] == 3
    resumed = make_loader([dense], **options)
    resumed.load_state_dict(state)
    assert same_tensors(epoch_tensors(resumed), reference[3:])
    assert resumed.epoch == 2 and resumed.batches_done == 0


def test_resume_checks_seed_and_restarts_epoch_on_new_layout(dense):
    state = make_loader([dense], resampled=False).state_dict() | {"batches_done": 2}
    with pytest.raises(UsageError, match="seed"):
        make_loader([dense], resampled=False, seed=5).load_state_dict(state)
    changed = make_loader([dense], resampled=False, num_workers=2)
    changed.load_state_dict(state)
    assert changed.batches_done == 0


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "i2d"
    keys = write_img2dataset(folder, [[0, 2, 5], [1, 3]])  # gappy keys: rows 1, 3, 4 of shard 0 failed
    # Corrupt members first and a good sample last: reading the last good sample of the
    # epoch (batch 1, no shuffle) means every corrupt member before it was read and counted.
    write_tar(folder / "00002.tar", [
        ("000020001.jpg", b"not an image"), ("000020001.txt", b"broken jpeg"),
        ("000020002.jpg", image_bytes(1)),
        ("000020003.jpg", image_bytes(2)), ("000020003.txt", b"  \n"),
        ("000020004.jpg", image_bytes(3)), ("000020004.txt", b"caf\xe9 latin-1"),
        ("000020005.txt", b"a caption without image"),
        ("abc.jpg", image_bytes(4)), ("abc.txt", b"key is not a number"),
        ("000099999.jpg", image_bytes(5)), ("000099999.txt", b"key beyond num_samples"),
        *sample_members("000020000", 20000),
    ])
    shards = [ShardInfo("00000.tar", 3), ShardInfo("00001.tar", 2), ShardInfo("00002.tar", 8)]
    Manifest(num_samples=20006, id_rule="key", shards=shards, root=folder).save()
    good = sorted(keys + [20000])
    loader = make_loader([folder], resampled=False, batch_size=1, shuffle_buffer=1, epoch_samples=len(good))
    assert sorted(epoch_ids(loader)) == good
    assert dict(loader.counts) == {"bad_image": 1, "missing_caption": 1, "empty_caption": 1, "bad_text": 1,
                                   "missing_image": 1, "bad_id": 2}


def test_broken_shards_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "broken"
    write_dense(folder, count=8, per_shard=4)
    truncated = folder / "train-000001.tar"
    truncated.write_bytes(truncated.read_bytes()[:4000])  # cut inside the second sample
    write_tar(folder / "empty.tar", [])
    (folder / "zero-bytes.tar").write_bytes(b"")
    (folder / "gone.tar").write_bytes(b"")
    # Counted as full shards (resampled draws skip shards listed with 0 samples); the key
    # rule gives our writer's shards the same ids as the dense rule.
    shards = [ShardInfo(name, 4) for name in ("train-000000.tar", "train-000001.tar", "empty.tar",
                                              "zero-bytes.tar", "gone.tar")]
    Manifest(num_samples=20, id_rule="key", shards=shards, root=folder).save()
    loader = make_loader([folder], epoch_samples=64, batch_size=1)
    (folder / "gone.tar").unlink()  # vanishes after start-up, e.g. an unmounted disk
    ids = epoch_ids(loader)
    assert len(ids) == 64 and set(ids) <= set(range(5))  # the truncated shard's first sample survives
    assert 4 in ids and loader.counts["bad_shard"] >= 2 and loader.counts["empty_shard"] >= 1


def test_unusable_data_raises_instead_of_hanging(tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    write_tar(folder / "a.tar", [])
    Manifest(num_samples=1, id_rule="key", shards=[ShardInfo("a.tar", 1)], root=folder).save()
    monkeypatch.setattr(ShardStream, "max_failures_in_a_row", 20)
    with pytest.raises(RuntimeError, match="in a row were unusable"):
        list(make_loader([folder], resampled=False, batch_size=1))


def test_open_clip_transforms_and_tokenizer(dense):
    import open_clip

    from clipdro.model_configs import register_model_configs

    register_model_configs()
    transform = open_clip.image_transform(32, is_train=True)
    tokenizer = open_clip.get_tokenizer("clipdro-tiny-vit")
    config = PipelineConfig(sources=[DataSource(str(dense))], batch_size=8, epoch_samples=16, num_workers=0)
    before = torch.get_rng_state()
    batch = next(iter(build_train_loader(config, transform, tokenizer)))
    assert torch.equal(before, torch.get_rng_state())  # the trainer's RNG stream is untouched
    assert batch.images.shape == (8, 3, 32, 32) and batch.tokens.shape == (8, 32)


def test_resume_passes_over_delivered_samples_without_decoding_them(tmp_path, monkeypatch):
    import clipdro.data.pipeline as pipeline

    folder = tmp_path / "mixed"
    write_dense(folder, count=40, per_shard=10)
    # Undecodable images in the middle of shard 1: raw positions and good samples part ways.
    write_tar(folder / "bad.tar", [(f"{i:09d}.jpg", b"not an image") for i in range(3)] +
              [(f"{i:09d}.txt", b"picture number 0") for i in range(3)])
    Manifest(num_samples=43, id_rule="key", root=folder,
             shards=[ShardInfo(f"train-{i:06d}.tar", 10) for i in range(4)] + [ShardInfo("bad.tar", 3)]).save()
    options = dict(resampled=False, num_workers=0, shuffle_buffer=5)
    reference = epoch_tensors(make_loader([folder], **options))
    assert len(reference) == 10
    decoded = []
    real_decode = pipeline._decode_image
    monkeypatch.setattr(pipeline, "_decode_image", lambda sample: decoded.append(1) or real_decode(sample))
    interrupted = make_loader([folder], **options)
    for _ in zip(range(7), interrupted, strict=False):
        pass
    state = interrupted.state_dict()
    decoded.clear()
    resumed = make_loader([folder], **options)
    resumed.load_state_dict(state)
    assert same_tensors(epoch_tensors(resumed), reference[7:])
    assert len(decoded) <= 3 * 4 + 3  # the 3 resumed batches and at most the 3 bad images, nothing before


def test_old_loader_states_restart_the_epoch(dense, caplog):
    loader = make_loader([dense], resampled=False)
    state = loader.state_dict() | {"batches_done": 5}
    del state["positions"]
    loader.load_state_dict(state)
    assert loader.batches_done == 0 and "no worker positions" in caplog.text
