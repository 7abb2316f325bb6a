"""`clipdro train` on 2 gloo ranks equals 1 process on the same global batches (3 steps)."""

import json
from pathlib import Path

import pytest
import torch

from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.config import load_config
from clipdro.data.manifest import Manifest, ShardInfo
from clipdro.data.plan import plan_finite
from clipdro.train import train
from clipdro.train_config import TrainConfig
from tests.launch import run_torchrun
from tests.shard_factory import image_bytes, write_tar

LOCAL_BATCH, STEPS = 4, 3


def write_shard(folder: Path, name: str, sample_ids: list[int]) -> ShardInfo:
    members = []
    for position, sample_id in enumerate(sample_ids):
        key = f"{position:06d}"
        members += [(f"{key}.jpg", image_bytes(sample_id, size=32)), (f"{key}.txt", f"picture {sample_id}".encode()),
                    (f"{key}.json", json.dumps({"sample_id": sample_id}).encode())]
    write_tar(folder / name, members)
    return ShardInfo(name, len(sample_ids))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Two shards of 12, one per rank (the finite-mode plan, data.seed 0, decides which rank reads which);
    the 1-process shard interleaves the ranks' samples batch by batch, so global batch k is [rank 0's
    batch k, rank 1's batch k] in both runs, with the same ids."""
    root = tmp_path_factory.mktemp("data")
    shard_ids = {"shard0.tar": list(range(0, 12)), "shard1.tar": list(range(12, 24))}
    two = root / "two"
    shards = [write_shard(two, name, ids) for name, ids in shard_ids.items()]
    manifest = Manifest(24, "dense", shards, root=two)
    manifest.save()
    plan = plan_finite(manifest.shard_urls(), [shard.num_samples for shard in shards], 2, LOCAL_BATCH, seed=0)
    rank_ids = [shard_ids[Path(piece.url).name] for (piece,) in plan.rank_pieces]  # one whole shard each
    interleaved = [i for step in range(STEPS) for ids in rank_ids
                   for i in ids[step * LOCAL_BATCH:(step + 1) * LOCAL_BATCH]]
    one = root / "one"
    Manifest(24, "dense", [write_shard(one, "all.tar", interleaved)], root=one).save()
    return one, two


def overrides(shards: Path, run_dir: Path, batch_size: int, loss_name: str) -> list[str]:
    # optim.eps: Adam turns float-rounding gradients (attention key biases, whose true gradient is 0)
    # into +-lr steps that differ between any two summation orders; a large eps keeps updates
    # proportional to the gradient, so the comparison tests the distributed math, not that noise.
    return ["optim.eps=1e-3", f"data.sources=[{{shards: {shards}}}]", f"data.batch_size={batch_size}",
            "data.num_workers=0", "data.resampled=false", "data.shuffle_buffer=1", f"loss.name={loss_name}",
            "loss.rho=1.0",
            "tempnet.dropout=0.0", "tempnet.num_prototypes=4", "tempnet.lr=1e-3", "model.train_transform=eval",
            f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}", "run.log_every=1", "run.epochs=1"]


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


@pytest.mark.parametrize("loss_name", ["tempnet", pytest.param("clip", marks=pytest.mark.slow)])
def test_two_ranks_equal_one_process(datasets, tmp_path, loss_name):
    one, two = datasets
    single_dir, double_dir = tmp_path / "single", tmp_path / "double"
    train(load_config(TrainConfig, None, overrides(one, single_dir, 2 * LOCAL_BATCH, loss_name)))
    run_torchrun("-m", "clipdro.cli", "train", *overrides(two, double_dir, LOCAL_BATCH, loss_name))

    assert len(losses(single_dir)) == STEPS
    assert losses(double_dir) == pytest.approx(losses(single_dir), abs=1e-5)
    single = load_checkpoint(list_checkpoints(single_dir)[-1])
    double = load_checkpoint(list_checkpoints(double_dir)[-1])
    assert single["step"] == double["step"] == STEPS
    for section in ("model", "loss"):
        for key, value in single[section].items():
            other = double[section][key]
            if value.is_floating_point():
                # Tables hold sums of exp(h / tau) up to B - 1: compare them relative to their size.
                torch.testing.assert_close(other, value, atol=1e-5, rtol=1e-5 if section == "loss" else 0,
                                           msg=f"{section}.{key}")
            else:
                assert torch.equal(other, value), f"{section}.{key}"


@pytest.mark.slow
def test_a_two_rank_run_resumes_on_one_process_with_every_table_row_in_place(datasets, tmp_path):
    _, two = datasets
    run_dir = tmp_path / "run"
    arguments = overrides(two, run_dir, LOCAL_BATCH, "tempnet")
    run_torchrun("-m", "clipdro.cli", "train", *arguments, "run.stop_after=2")
    saved = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert saved["step"] == 2 and int(saved["loss"]["image_table.seen"].sum()) == 2 * 2 * LOCAL_BATCH
    train(load_config(TrainConfig, None, [*arguments, "run.stop_after=3"]), resume="latest")
    resumed = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert resumed["step"] == 3 and losses(run_dir)[-1] == pytest.approx(losses(run_dir)[-1])  # finite
    # The one step taken on 1 process rewrote at most its own batch's rows; every other row is the 2-rank run's.
    for key, before in saved["loss"].items():
        changed = resumed["loss"][key] != before
        assert int(changed.sum()) <= LOCAL_BATCH, key
    assert bool((resumed["loss"]["text_table.seen"] >= saved["loss"]["text_table.seen"]).all())
