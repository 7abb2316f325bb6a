"""benchmarks/paper/coarse_captions.py: the planted-false-negative split keeps everything but some captions."""

import json

import webdataset as wds

from benchmarks.paper.coarse_captions import family_caption, main
from clipdro.data.manifest import Manifest
from clipdro.data.writer import ShardSample, write_shards


def test_family_caption_names_the_innermost_folder():
    assert family_caption("shapes/stars/star_15pt07step.svg") == "clip art of stars"
    assert family_caption("signs_and_symbols/map_symbols/x.svg") == "clip art of map symbols"
    assert family_caption("people/man.svg") == "clip art of people"


def read(folder):
    manifest = Manifest.load(folder)
    samples = [sample for url in manifest.shard_urls() for sample in wds.tarfile_samples([{"url": url}])]
    return manifest, samples


def test_a_fraction_of_captions_becomes_the_family_caption_and_nothing_else_changes(tmp_path):
    sources = ["cards/c1.svg", "cards/c2.svg", "stars/s1.svg", "stars/s2.svg", "signs/road/r1.svg"] * 2
    write_shards((ShardSample(f"image {i}".encode(), "png", f"caption {i}", {"source": source})
                  for i, source in enumerate(sources)), tmp_path / "clean", samples_per_shard=4)

    assert main(["--shards", str(tmp_path / "clean"), "--fraction", "0.5", "--seed", "3",
                 "--output", str(tmp_path / "coarse")]) == 0

    clean_manifest, clean = read(tmp_path / "clean")
    coarse_manifest, coarse = read(tmp_path / "coarse")
    assert [shard.num_samples for shard in coarse_manifest.shards] == [4, 4, 2]
    changed = 0
    for position, (before, after) in enumerate(zip(clean, coarse, strict=True)):
        metadata = json.loads(after["json"])
        assert metadata["sample_id"] == position and metadata["source"] == sources[position]
        assert after["png"] == before["png"]
        if after["txt"] != before["txt"]:
            changed += 1
            assert after["txt"].decode() == family_caption(sources[position])
            assert metadata["original_caption"] == before["txt"].decode()
        else:
            assert "original_caption" not in metadata
    assert changed == 5

    main(["--shards", str(tmp_path / "clean"), "--fraction", "0.5", "--seed", "3",
          "--output", str(tmp_path / "again")])
    assert [sample["txt"] for sample in read(tmp_path / "again")[1]] == [sample["txt"] for sample in coarse]
