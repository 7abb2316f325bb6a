"""benchmarks/speed/scale_shards.py and scale_state.py: shards whose keys reach N size clipdro's tables to N rows;
checkpoint measurement of both layouts; the computed rows and the markdown; the whole benchmark (slow)."""

import argparse
import json
import tarfile
from pathlib import Path

import pytest

from benchmarks.speed import scale_state
from benchmarks.speed.scale_shards import count_arg, spread_keys, write_scaled_shards
from benchmarks.speed.scale_state import checkpoint_sizes, computed_rows, markdown, newest_checkpoint, table_summary
from clipdro.data.manifest import Manifest
from clipdro.data.pipeline import DataSource, PipelineConfig, ShardStream, read_samples
from clipdro.errors import UsageError
from clipdro.losses import build_contrastive_loss
from tests.shard_factory import write_dense

OPENCLIPART = Path(__file__).resolve().parents[1] / "data" / "openclipart" / "train"


def tar_names(folder: Path) -> dict[str, list[str]]:
    names = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            names[path.name] = tar.getnames()
    return names


def test_keys_reach_n_and_clipdro_sizes_its_tables_to_n(tmp_path):
    num_ids, out = 10_000, tmp_path / "shards"
    write_scaled_shards(OPENCLIPART, out, num_ids, samples=30, shards=3)

    names = tar_names(out)
    assert list(names) == ["00000.tar", "00001.tar", "00002.tar"]
    keys = [int(name.split(".")[0]) for members in names.values() for name in members[::3]]
    assert keys == spread_keys(num_ids, 30) and keys[0] == 0 and keys[-1] == num_ids - 1
    assert keys == sorted(set(keys)) and all(len(members) == 30 for members in names.values())
    assert {name.split(".", 1)[1] for members in names.values() for name in members} == {"webp", "txt", "json"}
    assert all(len(name.split(".")[0]) == 9 for members in names.values() for name in members)

    manifest = Manifest.load(out)
    assert (manifest.id_rule, manifest.num_samples) == ("key", num_ids)
    sources = [DataSource(str(out))]
    stream = ShardStream(PipelineConfig(sources=sources, batch_size=4, resampled=False, num_workers=0,
                                        shuffle_buffer=1), transform=None, tokenizer=None)
    assert stream.num_samples == num_ids
    assert [sample.sample_id for sample in read_samples(sources)] == keys  # the training stream's ids are the keys
    tables = table_summary(build_contrastive_loss("tempnet", stream.num_samples))
    assert [table["rows"] for table in tables.values()] == [num_ids, num_ids]
    assert sum(table["bytes"] for table in tables.values()) == 18 * num_ids  # 2 tables x (2 float32 + 1 bool)


def test_samples_repeat_when_the_source_has_fewer(tmp_path):
    write_dense(tmp_path / "source", count=3, per_shard=2)
    write_scaled_shards(tmp_path / "source", tmp_path / "out", num_ids=10**10, samples=7, shards=2)
    samples = list(read_samples([DataSource(str(tmp_path / "out"))]))
    assert [sample.caption for sample in samples] == [f"picture number {i % 3}" for i in range(7)]
    assert samples[-1].sample_id == 10**10 - 1
    assert len(tar_names(tmp_path / "out")["00001.tar"][0].split(".")[0]) == 10  # N - 1 needs 10 digits
    with pytest.raises(UsageError, match="already holds"):
        write_scaled_shards(tmp_path / "source", tmp_path / "out", num_ids=100, samples=7, shards=2)


def test_key_and_count_arguments():
    assert spread_keys(5, 1) == [4] and spread_keys(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(UsageError):
        spread_keys(4, 5)
    assert count_arg("1e8") == 10**8 and count_arg("4.13e8") == 413_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        count_arg("2.5")


def test_checkpoint_sizes_of_one_file_and_of_a_folder(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "step_000000002.pt").write_bytes(b"x" * 100)
    folder = checkpoints / "step_000000004"
    folder.mkdir()
    for name, size in [("__0_0.distcp", 30), ("__1_0.distcp", 20), (".metadata", 5), ("common.pt", 7)]:
        (folder / name).write_bytes(b"x" * size)
    (checkpoints / "step_000000006.pt.tmp").write_bytes(b"")  # an unfinished write is not a checkpoint

    assert newest_checkpoint(tmp_path) == folder
    sharded = checkpoint_sizes(folder, world_size=2)
    assert (sharded["per_rank_bytes"], sharded["common_bytes"], sharded["total_bytes"]) == ([30, 20], 12, 62)
    single = checkpoint_sizes(checkpoints / "step_000000002.pt", world_size=2)
    assert (single["per_rank_bytes"], single["common_bytes"], single["total_bytes"]) == ([100, 0], 0, 100)


def fake_row(num_ids: int, world_size: int, table_bytes: int, step_bytes: dict[str, int]) -> dict:
    """A measured row as scale_state.measure returns it, with only the fields the tables read."""
    return {"num_ids": num_ids, "world_size": world_size, "resume_world_size": world_size,
            "peak_rss_bytes": {"train": [2**30] * world_size, "resume": [2**30] * world_size},
            "table_bytes": {"train": [table_bytes] * world_size, "resume": [table_bytes] * world_size},
            "checkpoint": {"per_rank_bytes": [2**20] + [0] * (world_size - 1), "common_bytes": 0},
            "checkpoint_write_s": [0.5] * world_size, "restore_s": [0.25] * world_size,
            "collective_bytes_per_step": step_bytes}


def steps(table: int, ddp: int, other: int) -> dict[str, int]:
    return {"table": table, "ddp": ddp, "other": other}


def test_computed_rows_replicated_and_sharded_tables():
    replicated = [fake_row(10**6, 1, 18 * 10**6, steps(0, 0, 0)),
                  fake_row(10**6, 2, 18 * 10**6, steps(256, 1000, 100 + 50 * 2)),
                  fake_row(10**7, 4, 18 * 10**7, steps(256, 1000, 100 + 50 * 4))]
    rows = {(row["num_ids"], row["world_size"]): row for row in computed_rows(replicated)["rows"]}
    assert set(rows) == {(3_300_000, 8), (3_300_000, 256), (413_000_000, 8), (413_000_000, 256)}
    assert rows[3_300_000, 8]["table_bytes_per_rank"] == 18 * 3_300_000
    assert rows[413_000_000, 256]["table_bytes_per_rank"] == 18 * 413_000_000
    assert rows[413_000_000, 256]["collective_bytes_per_step"] == steps(256, 1000, 100 + 50 * 256)

    sharded = [fake_row(10**6, world_size, 18 * 10**6 // world_size, steps(0, 1000, 10)) for world_size in (1, 2, 4)]
    result = computed_rows(sharded)
    rows = {(row["num_ids"], row["world_size"]): row for row in result["rows"]}
    assert rows[413_000_000, 256]["table_bytes_per_rank"] == pytest.approx(18 * 413_000_000 / 256, abs=2)
    assert rows[3_300_000, 8]["collective_bytes_per_step"] == steps(0, 1000, 10)
    assert result["basis"]["table_bytes_per_id"] == pytest.approx({"on_every_rank": 0.0, "split_over_ranks": 18.0},
                                                                  abs=1e-9)


def test_markdown_marks_computed_rows_and_says_what_it_cannot_compute():
    rows = [fake_row(10**6, 1, 18 * 10**6, steps(0, 0, 0)), fake_row(10**6, 2, 18 * 10**6, steps(256, 2048, 1024))]
    text = markdown({"measured": rows, "computed": computed_rows(rows)})
    assert "| 1e6 | 2 | 1,024 / 1,024 | 2 | 17.17 | 1; 0 | 0.50 | 0.25 | 0.25 / 2 / 1 |" in text
    assert "## Computed, not measured" in text
    assert "| 4.13e8 | 256 | 7,090 | 0.25 / 2 / 1 |" in text

    only_one = [fake_row(10**6, 1, 18 * 10**6, steps(0, 0, 0))]
    text = markdown({"measured": only_one, "computed": computed_rows(only_one)})
    assert "| 3.3e6 | 8 | n/a | n/a |" in text
    assert "Tables: not computed" in text and "Collectives: not computed" in text


@pytest.mark.slow
def test_whole_benchmark_at_ten_thousand_ids(tmp_path):
    output = tmp_path / "scale_state.json"
    assert scale_state.main(["--num-ids", "1e4", "--world-sizes", "1", "2", "--samples", "128", "--output",
                             str(output), "--markdown", str(tmp_path / "scale_state.md"),
                             "--work-dir", str(tmp_path / "work")]) == 0
    result = json.loads(output.read_text())
    one, two = result["measured"]
    assert [(row["num_ids"], row["world_size"], row["resume_world_size"]) for row in (one, two)] == \
        [(10_000, 1, 1), (10_000, 2, 2)]
    assert [table["rows"] for table in one["tables"]["train"][0].values()] == [10_000, 10_000]
    assert 0 < max(two["table_bytes"]["train"]) <= 18 * 10_000
    assert one["collective_bytes_per_step"] == steps(0, 0, 0)  # one process: no process group
    assert two["collective_bytes_per_step"]["ddp"] > 0
    for row in (one, two):
        assert min(row["peak_rss_bytes"]["train"] + row["peak_rss_bytes"]["resume"]) > 0
        assert row["checkpoint"]["total_bytes"] > 0 and min(row["checkpoint_write_s"] + row["restore_s"]) > 0
        assert [len(rank_steps) for rank_steps in row["step_bytes"]["resume"]] == [2] * row["resume_world_size"]
    assert len(result["computed"]["rows"]) == 4
    assert "## Computed, not measured" in (tmp_path / "scale_state.md").read_text()
