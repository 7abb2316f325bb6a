"""benchmarks/paper/duplicate_captions.py: anchors get one or two partners with their exact caption."""

import collections
import json

import webdataset as wds

from benchmarks.paper.duplicate_captions import main, plan_duplicates
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


def test_partners_carry_their_anchors_caption_and_nothing_else_changes(tmp_path):
    write_shards((ShardSample(f"image {i}".encode(), "png", f"caption {i}", {"source": f"s/{i}.svg"})
                  for i in range(30)), tmp_path / "clean", samples_per_shard=8)
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
