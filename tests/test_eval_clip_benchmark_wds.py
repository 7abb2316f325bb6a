"""CLIP_benchmark's webdataset layout read directly by `clipdro eval zeroshot|retrieval --data DIR_OR_URL`:
the same numbers (and per-query ranks) as the same images as an ImageFolder tree / converted eval.json."""

import functools
import http.server
import json
import threading

import pytest
from evalset_factory import coloured_png, write_clip_benchmark_classification, write_imagefolder
from shard_factory import write_tar

from clipdro.cli import main
from clipdro.data.eval_converters import read_clip_benchmark_set

CLASSNAMES = ["red fox", "green frog", "blue whale", "yellow duck", "grey wolf", "pink pig"]
LABELS = [label for label in range(6) for _ in range(3)]  # 18 images, class-sorted (the tree's order too)
COMMON = ["--model", "clipdro-tiny-vit", "--seed", "0", "--device", "cpu", "--batch-size", "8"]


@pytest.fixture(scope="module")
def classification(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds_classification")
    images = write_clip_benchmark_classification(root / "wds", LABELS, CLASSNAMES,
                                                 ["a photo of a {c}.", "a {c} in {{braces}}."], num_shards=3)
    folders = [f"class{label:02d}" for label in range(6)]
    write_imagefolder(root / "tree", images, LABELS, folders)
    (root / "names.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "templates.txt").write_text("a photo of a {}.\na {} in {{braces}}.\n")
    return root


def _zeroshot(data, output, *extra):
    assert main(["eval", "zeroshot", *COMMON, "--data", str(data), "--output", str(output), *extra]) == 0
    return json.loads(output.read_text())


def test_reader_keeps_bytes_labels_classnames_and_renders_templates(classification):
    evalset = read_clip_benchmark_set(classification / "wds")
    assert evalset.labels == LABELS and evalset.classnames == CLASSNAMES
    assert evalset.templates == ["a photo of a {}.", "a {} in {{braces}}."]  # {c} -> {}, escapes kept
    assert evalset.images[:2] == ["test/0.tar/s0000000.png", "test/0.tar/s0000001.png"]
    assert evalset.images[-1] == "test/2.tar/s0000017.png"
    assert evalset.image_source(4) == coloured_png(4, LABELS[4])  # bytes, not a file


def test_zeroshot_on_the_wds_layout_equals_the_imagefolder_tree(classification, tmp_path):
    wds = _zeroshot(classification / "wds", tmp_path / "wds.json")
    tree = _zeroshot(classification / "tree", tmp_path / "tree.json", "--classnames",
                     str(classification / "names.txt"), "--templates", str(classification / "templates.txt"))
    assert (wds["classnames"], wds["templates"]) == ("evalset", "evalset")  # classnames.txt and its {c} templates
    assert [entry["name"] for entry in wds["classes"]] == CLASSNAMES
    assert wds["metrics"] == tree["metrics"]
    assert wds["per_query"]["true_class_rank"] == tree["per_query"]["true_class_rank"]
    assert wds["per_query"]["label"] == tree["per_query"]["label"] == LABELS
    assert 0 < wds["metrics"]["acc5"] < 1 or wds["metrics"]["acc1"] < 1  # not a degenerate all-hit set


def test_zeroshot_reads_the_layout_from_a_url(classification, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(classification))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/wds"
        remote = _zeroshot(url, tmp_path / "remote.json")
    finally:
        server.shutdown()
        server.server_close()
    local = _zeroshot(classification / "wds", tmp_path / "local.json")
    assert remote["data"] == url
    assert remote["metrics"] == local["metrics"]
    assert remote["per_query"] == local["per_query"]  # same image names, so the same query hash


def test_retrieval_on_the_wds_layout_equals_the_converted_set(tmp_path):
    members = {0: [], 1: []}
    for i in range(8):
        captions = "".join(f"picture {i} variant {j}\n" for j in range(1 + i % 3)).encode()
        members[i // 4] += [(f"s{i:07d}.png", coloured_png(i, i)), (f"s{i:07d}.txt", captions)]
    for shard, shard_members in members.items():
        write_tar(tmp_path / "wds" / "test" / f"{shard}.tar", shard_members)
    (tmp_path / "wds" / "test" / "nshards.txt").write_text("2")
    (tmp_path / "wds" / "dataset_type.txt").write_text("retrieval\n")
    assert main(["data", "convert-clip-benchmark", "--shards", str(tmp_path / "wds/test/{0..1}.tar"),
                 "--out", str(tmp_path / "converted")]) == 0
    records = []
    for data in ("wds", "converted"):
        output = tmp_path / f"{data}.json"
        assert main(["eval", "retrieval", *COMMON, "--data", str(tmp_path / data), "--output", str(output)]) == 0
        records.append(json.loads(output.read_text()))
    assert records[0]["num_texts"] == sum(1 + i % 3 for i in range(8))
    assert records[0]["metrics"] == records[1]["metrics"]
    for key in ("image_retrieval_rank", "text_retrieval_rank"):
        assert records[0]["per_query"][key] == records[1]["per_query"][key]


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "classnames.txt").unlink(), "no classnames.txt for a classification set"),
    (lambda root: (root / "test" / "nshards.txt").write_text("two"), "nshards.txt missing or not a number"),
    (lambda root: write_tar(root / "test" / "0.tar", [("s0000000.png", coloured_png(0, 0))]),
     "0.tar: sample s0000000 lacks its .cls label"),
    (lambda root: (root / "test" / "1.tar").unlink(), "no shard at"),
])
def test_a_broken_layout_exits_2_with_one_line(tmp_path, capsys, damage, message):
    root = tmp_path / "wds"
    write_clip_benchmark_classification(root, [0, 1, 2, 0], ["a", "b", "c"], ["{c}"], num_shards=2)
    damage(root)
    assert main(["eval", "zeroshot", *COMMON, "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
