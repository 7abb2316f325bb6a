"""benchmarks/paper/duplicate_captions.py: anchors get one or two partners with their exact caption."""

import collections
import json

import torch
import webdataset as wds

from benchmarks.paper import duplicate_taus
from benchmarks.paper.duplicate_captions import main, plan_duplicates
from clipdro.checkpoint import checkpoint_path, save_sharded_checkpoint
from clipdro.data.manifest import Manifest
from clipdro.data.writer import ShardSample, write_shards


def read(folder):
    manifest = Manifest.load(folder)
    return manifest, [sample for url in manifest.shard_urls() for sample in wds.tarfile_samples([{"url": url}])]


def test_the_plan_gives_each_anchor_one_or_two_distinct_partners():
    partners = plan_duplicates(100, 0.2, seed=1)
    counts = collections.Counter(partners.values())
    assert len(counts) == 20 and set(counts.values()) <= {1, 2} and len(set(counts.values())) == 2
    assert not set(partners) & set(partners.values())  # a partner is never an anchor
    assert plan_duplicates(100, 0.2, seed=1) == partners


def write_clean(folder, captions):
    write_shards((ShardSample(f"image {i}".encode(), "png", caption, {"source": f"s/{i}.svg"})
                  for i, caption in enumerate(captions)), folder, samples_per_shard=8)


def test_partners_carry_their_anchors_caption_and_nothing_else_changes(tmp_path):
    write_clean(tmp_path / "clean", [f"caption {i}" for i in range(30)])
    assert main(["--shards", str(tmp_path / "clean"), "--fraction", "0.2", "--seed", "0",
                 "--output", str(tmp_path / "dup")]) == 0
    clean_manifest, clean = read(tmp_path / "clean")
    manifest, dup = read(tmp_path / "dup")
    assert [shard.num_samples for shard in manifest.shards] == [8, 8, 8, 6]
    partners = plan_duplicates(30, 0.2, seed=0)
    for position, (before, after) in enumerate(zip(clean, dup, strict=True)):
        metadata = json.loads(after["json"])
        assert metadata["sample_id"] == position and after["png"] == before["png"]
        if position in partners:
            assert after["txt"] == clean[partners[position]]["txt"] and metadata["duplicate_of"] == partners[position]
            assert metadata["original_caption"] == before["txt"].decode()
        else:
            assert after["txt"] == before["txt"] and "original_caption" not in metadata


def test_duplicate_taus_groups_an_oracle_runs_tables_by_caption(tmp_path, capsys):
    partners = plan_duplicates(30, 0.2, seed=0)
    planted = set(partners) | set(partners.values())
    twins = [i for i in range(30) if i not in planted][:2]  # share a caption in the source: "repeated"
    write_clean(tmp_path / "clean", ["a twin" if i in twins else f"caption {i}" for i in range(30)])
    assert main(["--shards", str(tmp_path / "clean"), "--fraction", "0.2", "--seed", "0",
                 "--output", str(tmp_path / "dup")]) == 0
    groups = ["planted" if i in planted else "repeated" if i in twins else "unique" for i in range(30)]
    assert duplicate_taus.caption_groups(tmp_path / "dup") == groups
    # a run whose oracle gave planted samples 0.08, repeated 0.1, unique 0.02 and 0.05 (image), 0.03 (text)
    unique = [i for i in range(30) if groups[i] == "unique"]
    image = torch.tensor([{"planted": 0.08, "repeated": 0.1, "unique": 0.05}[group] for group in groups])
    image[unique[: len(unique) // 2]] = 0.02
    text = torch.full((30,), 0.03)
    save_sharded_checkpoint({"format": 1, "loss": {"image_taus": image, "text_taus": text}}, {},
                            checkpoint_path(tmp_path / "oracle-run", 132))
    assert duplicate_taus.main([str(tmp_path / "oracle-run"), "--shards", str(tmp_path / "dup"),
                                "--output", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert capsys.readouterr().out.endswith(table)
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    halves = len(unique) // 2, len(unique) - len(unique) // 2
    geo_mean = (0.02 ** halves[0] * 0.05 ** halves[1]) ** (1 / len(unique))
    assert f"0.0800 / 0.0800 ({len(planted)})" in rows["image"] and "0.1000 / 0.1000 (2)" in rows["image"]
    assert f"{geo_mean:.4f} / " in rows["image"] and f"({len(unique)})" in rows["image"]
    assert rows["text"].count("0.0300 / 0.0300") == 3


def test_duplicate_taus_refuses_a_run_without_oracle_tables_or_of_other_data(tmp_path, capsys):
    write_clean(tmp_path / "shards", [f"caption {i}" for i in range(10)])
    save_sharded_checkpoint({"format": 1, "loss": {"tau": torch.tensor(0.07)}}, {},
                            checkpoint_path(tmp_path / "clip-run", 5))
    assert duplicate_taus.main([str(tmp_path / "clip-run"), "--shards", str(tmp_path / "shards")]) == 2
    assert "not a dataset-oracle run" in capsys.readouterr().err
    taus = {"image_taus": torch.full((12,), 0.05), "text_taus": torch.full((12,), 0.05)}
    save_sharded_checkpoint({"format": 1, "loss": taus}, {}, checkpoint_path(tmp_path / "other-run", 5))
    assert duplicate_taus.main([str(tmp_path / "other-run"), "--shards", str(tmp_path / "shards")]) == 2
    assert "the run has 12 samples, the shards 10" in capsys.readouterr().err
