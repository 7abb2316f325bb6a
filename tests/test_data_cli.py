import json
import tarfile

import pytest
import torch
from shard_factory import image_bytes, write_img2dataset, write_tar

from clipdro.cli import main
from clipdro.data.evalset import EvalSet
from clipdro.data.manifest import Manifest
from clipdro.data.pipeline import DataSource, PipelineConfig, build_train_loader


def test_from_csv_writes_dense_shards_and_counts_skipped_rows(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    for i in range(5):
        (tmp_path / f"img/{i}.jpg").write_bytes(image_bytes(i))
    (tmp_path / "img/x.gif").write_bytes(b"GIF89a")
    rows = [f"img/{i}.jpg\ta photo number {i}" for i in range(5)]
    rows += ["img/missing.jpg\tgone", "img/x.gif\tanimated", "img/0.jpg\t  "]
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    assert main(["data", "from-csv", "--csv", str(tmp_path / "pairs.tsv"), "--image-column", "filepath",
                 "--caption-column", "title", "--out", str(tmp_path / "shards"),
                 "--samples-per-shard", "2"]) == 0
    assert "'missing_image': 1" in capsys.readouterr().out
    manifest = Manifest.load(tmp_path / "shards")
    assert manifest.num_samples == 5 and [s.num_samples for s in manifest.shards] == [2, 2, 1]


@pytest.mark.parametrize("with_stats", [True, False])
def test_index_img2dataset_shards_with_and_without_stats(tmp_path, with_stats):
    keys = write_img2dataset(tmp_path / "i2d", [[0, 3, 7], [2, 9]], rows_digits=1, stats=with_stats)
    out = tmp_path / "meta" / "manifest.json"
    assert main(["data", "index", str(tmp_path / "i2d"), "--out", str(out)]) == 0
    manifest = Manifest.load(out)
    assert manifest.id_rule == "key" and [s.num_samples for s in manifest.shards] == [3, 2]
    # Stats bound the keys by rows tried (2 shards x 10 rows); a scan by the largest key.
    assert manifest.num_samples == (20 if with_stats else max(keys) + 1)
    config = PipelineConfig([DataSource(str(out))], batch_size=1, resampled=False, num_workers=0)
    loader = build_train_loader(config, lambda image: torch.zeros(1),
                                lambda texts: torch.zeros(len(texts), 2, dtype=torch.long))
    assert sorted(int(b.sample_ids) for b in loader) == keys


def test_index_accepts_a_brace_pattern(tmp_path):
    write_img2dataset(tmp_path, [[0], [1], [2]], rows_digits=1, stats=False)
    assert main(["data", "index", str(tmp_path / "{00000..00001}.tar"), "--out", str(tmp_path)]) == 0
    assert [s.path for s in Manifest.load(tmp_path).shards] == ["00000.tar", "00001.tar"]


@pytest.mark.parametrize("flavour", ["karpathy", "albef"])
def test_convert_karpathy(tmp_path, flavour):
    (tmp_path / "coco/val2014").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "coco/val2014" / name).write_bytes(image_bytes(1))
    if flavour == "karpathy":
        payload = {"images": [{"filepath": "val2014", "filename": name, "split": split,
                               "sentences": [{"raw": f"{name} one"}, {"raw": f"{name} two"}]}
                              for name, split in (("a.jpg", "test"), ("b.jpg", "train"), ("c.jpg", "test"))]}
    else:
        payload = [{"image": f"val2014/{name}", "caption": [f"{name} one", f"{name} two"]}
                   for name in ("a.jpg", "c.jpg")]
    (tmp_path / "k.json").write_text(json.dumps(payload))
    assert main(["data", "convert-karpathy", "--json", str(tmp_path / "k.json"), "--image-root",
                 str(tmp_path / "coco"), "--out", str(tmp_path / "eval")]) == 0
    evalset = EvalSet.load(tmp_path / "eval")
    assert evalset.captions == [["a.jpg one", "a.jpg two"], ["c.jpg one", "c.jpg two"]]
    assert evalset.image_path(1) == (tmp_path / "coco/val2014/c.jpg").resolve()


def test_convert_clip_benchmark_copies_images_and_splits_caption_lines(tmp_path):
    write_tar(tmp_path / "test/0.tar", [("s0000000.webp", image_bytes(0, fmt="WEBP")),
                                        ("s0000000.txt", b"a red square\na small red square\n")])
    write_tar(tmp_path / "test/1.tar", [("s0000001.jpg", image_bytes(1)),
                                        ("s0000001.txt", b"a green one")])
    assert main(["data", "convert-clip-benchmark", "--shards", str(tmp_path / "test/{0..1}.tar"),
                 "--out", str(tmp_path / "eval")]) == 0
    evalset = EvalSet.load(tmp_path / "eval")
    assert evalset.images == ["images/000000.webp", "images/000001.jpg"]
    assert evalset.captions == [["a red square", "a small red square"], ["a green one"]]
    assert evalset.image_path(0).read_bytes() == image_bytes(0, fmt="WEBP")


def test_convert_imagefolder_labels_classnames_and_templates(tmp_path):
    for folder, count in (("golden_retriever", 2), ("tabby", 1)):
        (tmp_path / "val" / folder).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "val" / folder / f"{i}.JPEG").write_bytes(image_bytes(i))
    (tmp_path / "val/tabby/notes.txt").write_text("not an image")
    assert main(["data", "convert-imagefolder", "--root", str(tmp_path / "val"),
                 "--out", str(tmp_path / "a")]) == 0
    evalset = EvalSet.load(tmp_path / "a")
    assert evalset.labels == [0, 0, 1] and evalset.classnames == ["golden retriever", "tabby"]
    assert len(evalset.templates) == 80 and evalset.templates[0] == "a bad photo of a {}."
    (tmp_path / "names.txt").write_text("dog\ncat\n")
    assert main(["data", "convert-imagefolder", "--root", str(tmp_path / "val"), "--out", str(tmp_path / "b"),
                 "--classnames", str(tmp_path / "names.txt"), "--templates", "simple"]) == 0
    evalset = EvalSet.load(tmp_path / "b")
    assert evalset.classnames == ["dog", "cat"] and len(evalset.templates) == 7
    assert main(["data", "convert-imagefolder", "--root", str(tmp_path / "val"), "--out", str(tmp_path / "c"),
                 "--classnames", "imagenet"]) == 2


@pytest.mark.parametrize("argv", [
    ["from-csv", "--csv", "{missing}/x.csv", "--image-column", "a", "--caption-column", "b",
     "--out", "{tmp}/o"],
    ["index", "{missing}", "--out", "{tmp}/m.json"],
    ["convert-karpathy", "--json", "{missing}/k.json", "--image-root", "{tmp}", "--out", "{tmp}/o"],
    ["convert-clip-benchmark", "--shards", "{missing}/{{0..1}}.tar", "--out", "{tmp}/o"],
    ["convert-imagefolder", "--root", "{missing}", "--out", "{tmp}/o"],
    ["index"],
    ["no-such-verb"],
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv):
    argv = [part.format(missing=tmp_path / "missing", tmp=tmp_path) for part in argv]
    assert main(["data", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("clipdro data: error:") and error.count("\n") == 1


def _cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def _member_offsets(path):
    """Member name -> (offset of its header, offset of its data)."""
    with tarfile.open(path) as tar:
        return {member.name: (member.offset, member.offset_data) for member in tar}


def test_index_reads_a_truncated_shard_up_to_the_damage_and_names_it(tmp_path, capsys):
    keys = write_img2dataset(tmp_path, [[0, 3, 7], [1, 2, 5, 8], [4]], rows_digits=1, stats=False)
    # Keep shard 1's first sample whole and cut its second image in the middle of its data.
    _cut(tmp_path / "00001.tar", _member_offsets(tmp_path / "00001.tar")["000012.jpg"][1] + 100)
    (tmp_path / "00002.tar").write_bytes(b"this is not a tar file" * 50)
    assert main(["data", "index", str(tmp_path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 damaged shard(s)" in out
    assert f"{tmp_path / '00001.tar'}: 1 sample read before the damage (truncated: member 000012.jpg is cut off)" in out
    assert f"{tmp_path / '00002.tar'}: nothing readable, left out of the manifest (not a readable tar" in out
    manifest = Manifest.load(tmp_path)
    assert [(s.path, s.num_samples) for s in manifest.shards] == [("00000.tar", 3), ("00001.tar", 1)]
    assert manifest.num_samples == 12  # the largest readable key (11) + 1
    assert [(d["path"], d["num_samples"]) for d in manifest.extra["damaged_shards"]] == [("00001.tar", 1),
                                                                                          ("00002.tar", 0)]
    # The count is what training reads: the loader skips the unreadable tail (bad_shard).
    config = PipelineConfig([DataSource(str(tmp_path))], batch_size=1, resampled=False, num_workers=0)
    loader = build_train_loader(config, lambda image: torch.zeros(1),
                                lambda texts: torch.zeros(len(texts), 2, dtype=torch.long))
    assert sorted(int(b.sample_ids) for b in loader) == keys[:4]


def test_index_names_a_corrupt_header_and_a_shard_without_end_marker(tmp_path, capsys):
    write_img2dataset(tmp_path, [[0, 3], [1, 2], [5]], rows_digits=1, stats=False)
    header = _member_offsets(tmp_path / "00000.tar")["000003.jpg"][0]  # the second sample's image
    data = bytearray((tmp_path / "00000.tar").read_bytes())
    data[header:header + 128] = b"x" * 128
    (tmp_path / "00000.tar").write_bytes(bytes(data))
    offsets = _member_offsets(tmp_path / "00001.tar")
    _cut(tmp_path / "00001.tar", offsets["000012.json"][1] + 512)  # both samples whole, no end-of-archive blocks
    assert main(["data", "index", str(tmp_path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"00000.tar: 1 sample read before the damage (corrupt: invalid tar header at byte {header})" in out
    assert "00001.tar: 2 samples read before the damage (truncated: the file ends at byte" in out
    assert [s.num_samples for s in Manifest.load(tmp_path).shards] == [1, 2, 1]


def test_index_with_only_unreadable_shards_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "00000.tar").write_bytes(b"")
    assert main(["data", "index", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "00000.tar" in err and "no samples" in err


@pytest.mark.parametrize("stats, message", [
    ("{", "00001_stats.json: not an img2dataset stats file (JSONDecodeError"),
    ('{"count": 10}', "00001_stats.json: not an img2dataset stats file (KeyError"),
    ('{"count": 2, "successes": 3}', "00001_stats.json: count 2 and successes 3"),
    ('{"count": 11, "successes": 3}', "00001_stats.json: count 11 exceeds the 10 rows"),
])
def test_index_names_a_bad_stats_file(tmp_path, capsys, stats, message):
    write_img2dataset(tmp_path, [[0, 3], [1, 2]], rows_digits=1, stats=True)
    (tmp_path / "00001_stats.json").write_text(stats)
    assert main(["data", "index", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_index_with_stats_skips_a_shard_that_cannot_be_opened(tmp_path, capsys):
    write_img2dataset(tmp_path, [[0, 3], [1, 2]], rows_digits=1, stats=True)
    (tmp_path / "00000.tar").write_bytes(b"\0" * 100)
    assert main(["data", "index", str(tmp_path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "00000.tar: nothing readable, left out of the manifest" in out
    assert "10 rows of unreadable shards" in out
    manifest = Manifest.load(tmp_path)
    assert [s.path for s in manifest.shards] == ["00001.tar"] and manifest.num_samples == 20


def test_index_summary_separates_the_key_layout_from_failed_downloads(tmp_path, capsys):
    # 4-digit row keys, shards of at most 450 rows: each shard reserves 10000 ids.
    write_img2dataset(tmp_path, [[0, 1, 2], [0, 5]], rows_digits=4, stats=True)
    for shard, successes in ((0, 3), (1, 2)):
        (tmp_path / f"0000{shard}_stats.json").write_text(json.dumps({"count": 450, "successes": successes}))
    assert main(["data", "index", str(tmp_path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(N unused ids from gaps)" not in out and "from gaps" not in out
    assert ("num_samples 10450: 5 samples, 10445 ids unused (9550 reserved by the key layout, which gives each "
            "shard 10000 ids for at most 450 rows; failed downloads leave 895 gaps)") in out
    # tempnet: 2 tables x (2 float32 + 1 bool) = 18 bytes per id
    assert "the per-sample tables hold num_samples rows (0.188 MB at float32 for the tempnet loss" in out

    write_img2dataset(tmp_path / "scan", [[0, 1, 2], [0, 5]], rows_digits=4, stats=False)
    assert main(["data", "index", str(tmp_path / "scan"), "--out", str(tmp_path / "scan")]) == 0
    out = capsys.readouterr().out
    assert ("num_samples 10006: 5 samples, 10001 ids unused (ids not present in the shards: failed downloads "
            "or the key layout)") in out
