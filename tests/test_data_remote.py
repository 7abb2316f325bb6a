"""Shards named by URL: http:// from a loopback server, pipe: commands, and s3:// through a pipe: opener."""

import json
import logging
import os
import stat
import tarfile

import pytest
import torch
from shard_factory import serve_folder, write_dense, write_img2dataset

from clipdro.cli import main
from clipdro.data.manifest import Manifest, ShardInfo
from clipdro.data.pipeline import DataSource, PipelineConfig, ShardStream, build_train_loader

NAMES = "{00000..00005}.tar"
ROWS = [[0, 3, 7], [2, 9], [1], [4, 5], [0, 8], [6]]  # img2dataset rows per shard (1-digit row keys)
KEYS = sorted(shard * 10 + row for shard, rows in enumerate(ROWS) for row in rows)


def loader_ids(sources, **options):
    options = dict(dict(batch_size=1, resampled=False, num_workers=0, shuffle_buffer=4), **options)
    loader = build_train_loader(PipelineConfig(sources, **options), lambda image: torch.zeros(1),
                                lambda texts: torch.zeros(len(texts), 2, dtype=torch.long))
    return sorted(int(i) for batch in loader for i in batch.sample_ids), loader


def index(pattern, out):
    assert main(["data", "index", pattern, "--out", str(out)]) == 0
    return Manifest.load(out)


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "i2d"
    write_img2dataset(folder, ROWS, rows_digits=1, stats=False)
    return folder


@pytest.fixture
def fake_aws(tmp_path, monkeypatch, folder):
    """An `aws` on PATH whose `aws s3 cp s3://BUCKET/KEY -` writes FOLDER/KEY (the default s3 opener)."""
    script = tmp_path / "bin" / "aws"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\nexec cat "$FAKE_S3_ROOT/${3#s3://*/}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_S3_ROOT", str(folder))


def counts(manifest):
    return [s.num_samples for s in manifest.shards], manifest.num_samples


@pytest.mark.parametrize("with_stats", [False, True])
def test_index_of_http_pipe_and_s3_urls_matches_the_folder(folder, tmp_path, fake_aws, with_stats):
    if with_stats:
        write_img2dataset(folder, ROWS, rows_digits=1, stats=True)
    local = index(str(folder), tmp_path / "local.json")
    with serve_folder(folder) as served:
        http = index(f"{served.url}/{NAMES}", tmp_path / "http.json")
        assert served.requests["00000_stats.json"] == 1  # looked for beside the shard
        assert served.requests["00005_stats.json"] == with_stats  # all read with stats; the scan needs none
    pipe = index(f"pipe:cat {folder}/{NAMES}", tmp_path / "pipe.json")
    s3 = index(f"s3://bucket/{NAMES}", tmp_path / "s3.json")
    assert counts(http) == counts(pipe) == counts(s3) == counts(local)
    assert local.extra["source"] == http.extra["source"] == ("img2dataset stats" if with_stats else "member scan")
    assert [s.path for s in s3.shards] == [f"s3://bucket/{i:05d}.tar" for i in range(6)]
    assert pipe.shards[2].path == f"pipe:cat {folder}/00002.tar"


def test_training_reads_http_pipe_and_s3_shards_with_workers(folder, tmp_path, fake_aws):
    pipe = index(f"pipe:cat {folder}/{NAMES}", tmp_path / "pipe.json")
    s3 = index(f"s3://bucket/{NAMES}", tmp_path / "s3.json")
    assert loader_ids([DataSource(str(tmp_path / "pipe.json"))], num_workers=2)[0] == KEYS
    assert loader_ids([DataSource(str(tmp_path / "s3.json"))], num_workers=2)[0] == KEYS
    with serve_folder(folder) as served:
        http = index(f"{served.url}/{NAMES}", tmp_path / "http.json")
        assert loader_ids([DataSource(str(tmp_path / "http.json"))], num_workers=2)[0] == KEYS
        # A brace pattern of URLs names its manifest; only those shards are read.
        pattern = DataSource(f"{served.url}/{{00000..00001}}.tar", manifest=str(tmp_path / "http.json"))
        assert loader_ids([pattern])[0] == KEYS[:5]
    assert len(http.shards) == len(pipe.shards) == len(s3.shards) == 6


def cut_inside_second_sample(path):
    """Bytes up to the middle of the second sample's image: the first sample arrives whole."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    return members[3].offset_data + 10


def test_a_shard_cut_off_once_is_retried_and_read_exactly_once(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ShardStream, "retry_delay_s", 0.0)
    cut = {"00001.tar": (cut_inside_second_sample(folder / "00001.tar"), 1)}  # the first response only
    with serve_folder(folder, cut=cut) as served:
        index(f"{served.url}/{NAMES}", tmp_path / "http.json")
        served.requests.clear()
        with caplog.at_level(logging.WARNING):
            ids, loader = loader_ids([DataSource(str(tmp_path / "http.json"))])
        assert served.requests["00001.tar"] == 2
    assert ids == KEYS and "bad_shard" not in loader.counts
    assert "00001.tar failed after 0 samples" in caplog.text and "retry 1" in caplog.text


def test_a_server_that_dies_mid_shard_is_skipped_and_counted(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(ShardStream, "retry_delay_s", 0.0)
    with serve_folder(folder, cut={"00001.tar": (cut_inside_second_sample(folder / "00001.tar"), 99)},
                      die_after_cut=True) as served:
        # Shard 1 from the server, the others from the folder.
        shards = [ShardInfo(f"{served.url}/00001.tar" if i == 1 else f"{i:05d}.tar", n)
                  for i, n in enumerate([3, 2, 1, 2, 2, 1])]
        Manifest(num_samples=60, id_rule="key", shards=shards, root=folder).save()
        # Shard 1's second sample is lost; its first may be lost too (webdataset's pipe reader drops the
        # bytes of the read that sees curl's failed exit), so the epoch asks for one sample less.
        readable = [key for key in KEYS if key != 19]
        with caplog.at_level(logging.WARNING):
            ids, loader = loader_ids([DataSource(str(folder))], epoch_samples=len(readable) - 1, shard_retries=2)
        assert served.requests["00001.tar"] == 1 and served.stop.is_set()
    assert len(set(ids)) == len(ids) == len(readable) - 1 and set(ids) <= set(readable)
    assert loader.counts["bad_shard"] == 1 and "repeated" not in loader.counts
    assert "retry 2" in caplog.text and "00001.tar: " in caplog.text


def test_clipdro_train_trains_from_a_manifest_of_http_shards_with_loader_workers(tmp_path):
    write_dense(tmp_path / "dense", count=48, per_shard=12, size=32)
    with serve_folder(tmp_path / "dense") as served:
        manifest = index(f"{served.url}/train-{{000000..000003}}.tar", tmp_path / "http.json")
        assert manifest.num_samples == 48 and all(s.path.startswith("http://") for s in manifest.shards)
        served.requests.clear()
        run = tmp_path / "run"
        assert main(["train", f"data.sources=[{{shards: {tmp_path / 'http.json'}}}]", "data.batch_size=8",
                     "data.num_workers=2", "data.resampled=false", "data.shuffle_buffer=4", "loss.rho=1.0",
                     "model.train_transform=eval", f"run.output_dir={tmp_path}", "run.name=run", "run.epochs=1",
                     "run.log_every=1"]) == 0
        assert sum(served.requests.values()) == 4  # each shard streamed once
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in steps if "loss" in record] == [1, 2, 3, 4, 5, 6]
