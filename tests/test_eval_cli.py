"""`clipdro eval ...` end to end with the random-init clipdro-tiny-vit on a generated 8-image set:
exit codes, result-file structure and the summary table (random weights: no accuracy checks)."""

import json

import numpy as np
import open_clip
import pytest
from PIL import Image

from clipdro.cli import main
from clipdro.data.evalset import EvalSet
from clipdro.eval.results import query_sha256

RETRIEVAL_KEYS = [f"{direction}_retrieval_recall@{k}" for k in (1, 5, 10) for direction in ("image", "text")]


@pytest.fixture(scope="module")
def evalset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    classnames = ["circle", "square", "star", "heart", "moon", "tree"]
    EvalSet(root=root, name="tiny-shapes", images=[f"images/{i}.png" for i in range(8)],
            captions=[[f"picture {i} variant {j}" for j in range(1 + i % 5)] for i in range(8)],
            labels=[i % 6 for i in range(8)], classnames=classnames,
            templates=["a drawing of a {}.", "a {}."]).save()
    return root


@pytest.fixture(scope="module")
def result_files(evalset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    common = ["--model", "clipdro-tiny-vit", "--data", str(evalset_dir), "--device", "cpu",
              "--batch-size", "3"]
    assert main(["eval", "retrieval", *common, "--output", str(out / "retrieval.json")]) == 0
    assert main(["eval", "zeroshot", *common, "--output", str(out / "zeroshot.json")]) == 0
    return out / "retrieval.json", out / "zeroshot.json"


def test_retrieval_result_file(result_files, evalset_dir):
    record = json.loads(result_files[0].read_text())
    assert record["task"] == "retrieval"
    assert record["model"] == "clipdro-tiny-vit" and record["pretrained"] is None
    assert record["dataset"] == "tiny-shapes"
    assert record["data"] == str(evalset_dir.resolve())
    assert (record["num_images"], record["num_texts"]) == (8, sum(1 + i % 5 for i in range(8)))
    assert list(record["metrics"]) == RETRIEVAL_KEYS
    assert all(0.0 <= value <= 1.0 for value in record["metrics"].values())
    assert record["metrics"]["image_retrieval_recall@10"] == 1.0  # K >= the 8 images
    assert set(record["timings"]) == {"embedding_s", "search_s"}
    assert set(record["versions"]) == {"clipdro", "torch", "open_clip", "faiss"}
    assert record["device"] == "cpu" and record["faiss_gpus"] == 0
    assert record["retrieval_backend"] == "faiss-cpu"  # what searched: faiss-cpu is this machine's build
    assert record["precision"] == "fp32"  # --precision auto: exact on the CPU


def test_retrieval_result_file_has_per_query_ranks_that_give_its_metrics(result_files, evalset_dir):
    record = json.loads(result_files[0].read_text())
    per_query = record["per_query"]
    assert list(per_query) == ["format", "query_sha256", "rank_cap", "image_retrieval_rank", "text_retrieval_rank"]
    assert per_query["format"] == "clipdro-per-query/1" and per_query["rank_cap"] == 10
    texts, text_to_image = EvalSet.load(evalset_dir).flat_captions()
    assert per_query["query_sha256"] == query_sha256([f"images/{i}.png" for i in range(8)], texts=texts,
                                                     text_to_image=text_to_image)
    assert len(per_query["image_retrieval_rank"]) == record["num_texts"]  # one per caption
    assert len(per_query["text_retrieval_rank"]) == record["num_images"]  # one per image
    for direction in ("image", "text"):
        ranks = per_query[f"{direction}_retrieval_rank"]
        assert all(isinstance(rank, int) and 0 <= rank <= 10 for rank in ranks)
        for k in (1, 5, 10):
            assert record["metrics"][f"{direction}_retrieval_recall@{k}"] == float(np.mean(np.array(ranks) < k))
    # Compact: every list of numbers on one line.
    text = result_files[0].read_text()
    assert '  "recall_k": [1,5,10],\n' in text
    assert '"image_retrieval_rank": [' + ",".join(map(str, per_query["image_retrieval_rank"])) + "]" in text


def test_exact_ranks_record_the_brute_force_backend(evalset_dir, tmp_path):
    output = tmp_path / "exact.json"
    assert main(["eval", "retrieval", "--model", "clipdro-tiny-vit", "--data", str(evalset_dir), "--device", "cpu",
                 "--exact-ranks", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["retrieval_backend"] == "brute force (exact ranks)"


def test_without_faiss_only_the_faiss_search_stops(evalset_dir, tmp_path, monkeypatch, capsys):
    import sys

    from clipdro.eval import faiss_backend

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    monkeypatch.setattr(faiss_backend, "installed_faiss_distributions", lambda: [])
    from clipdro.eval import cli as eval_cli

    common = ["--model", "clipdro-tiny-vit", "--data", str(evalset_dir), "--device", "cpu"]
    real_load_model = eval_cli.load_model
    loaded = []
    monkeypatch.setattr(eval_cli, "load_model", lambda args: loaded.append(args) or real_load_model(args))
    assert main(["eval", "retrieval", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'clipdro[cpu]' (or 'clipdro[gpu]' on a CUDA machine)" in err[0]
    assert loaded == []  # refused before the model load and the embedding pass, not after them
    for task, extra in (("retrieval", ["--exact-ranks"]), ("zeroshot", [])):
        output = tmp_path / f"{task}.json"
        assert main(["eval", task, *common, *extra, "--output", str(output)]) == 0
        record = json.loads(output.read_text())
        assert record["versions"]["faiss"] is None and record["faiss_gpus"] is None


def test_zeroshot_result_file(result_files):
    record = json.loads(result_files[1].read_text())
    assert (record["task"], record["classnames"], record["templates"]) == ("zeroshot", "evalset", "evalset")
    assert list(record["metrics"]) == ["acc1", "acc5", "mean_per_class_recall"]
    assert all(0.0 <= value <= 1.0 for value in record["metrics"].values())
    assert set(record["timings"]) == {"classifier_s", "embedding_s", "search_s"}
    assert "retrieval_backend" not in record
    per_query = record["per_query"]
    assert per_query["label"] == [i % 6 for i in range(8)] and per_query["rank_cap"] is None
    assert per_query["query_sha256"] == query_sha256([f"images/{i}.png" for i in range(8)], labels=per_query["label"])
    ranks = np.array(per_query["true_class_rank"])
    assert ranks.min() >= 0 and ranks.max() < 6
    assert record["metrics"]["acc1"] == float(np.mean(ranks == 0))
    assert record["metrics"]["acc5"] == float(np.mean(ranks < 5))
    labels = np.array(per_query["label"])
    recalls = [np.mean(ranks[labels == label] == 0) for label in range(6)]  # every class occurs
    assert record["metrics"]["mean_per_class_recall"] == pytest.approx(np.mean(recalls), abs=1e-15)


def test_summarize_markdown_and_csv(result_files, tmp_path, capsys):
    assert main(["eval", "summarize", *map(str, result_files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| " + " | ".join(["task", "dataset", "model", "pretrained", *RETRIEVAL_KEYS,
                                          "acc1", "acc5", "mean_per_class_recall"]) + " |"
    assert lines[2].startswith("| retrieval | tiny-shapes | clipdro-tiny-vit |  | ")
    assert lines[3].startswith("| zeroshot | tiny-shapes | clipdro-tiny-vit |  |" + "  |" * 6)
    assert len(lines) == 4

    table = tmp_path / "table.csv"
    argv = ["eval", "summarize", *map(str, result_files), "--format", "csv", "--output", str(table)]
    assert main(argv) == 0
    rows = table.read_text().splitlines()
    assert rows[0].startswith("task,dataset,model,pretrained,image_retrieval_recall@1,")
    retrieval = json.loads(result_files[0].read_text())["metrics"]
    assert rows[1].split(",")[4] == str(retrieval["image_retrieval_recall@1"])  # full precision


@pytest.mark.parametrize("argv, message", [
    (["retrieval", "--model", "clipdro-tiny-vit", "--data", "/nowhere"], "no evaluation set"),
    (["zeroshot", "--model", "clipdro-tiny-vit", "--data", "/nowhere"], "no such data path"),
    (["retrieval", "--model", "no-such-model", "--data", "{data}"], "unknown model"),
    (["retrieval", "--model", "clipdro-tiny-vit", "--pretrained", "laion2b", "--data", "{data}"],
     "neither a file nor a tag"),
    (["zeroshot", "--model", "clipdro-tiny-vit", "--data", "{data}", "--classnames", "/nowhere.txt"],
     "no such file"),
    (["summarize", "/nowhere.json"], "no such result file"),
    (["compare", "/nowhere.json", "/nowhere2.json"], "no such result file: /nowhere.json"),
    (["compare", "/nowhere.json"], "in pairs (A B [A2 B2 ...]), got 1: /nowhere.json has no partner"),
    (["compare", "{data}/eval.json", "{data}/eval.json"], "eval.json is not a clipdro eval result"),
    (["retrieval", "--data", "{data}"], "--model"),
    (["retrieval", "--model", "clipdro-tiny-vit", "--data", "{data}", "--device", "gpu0"], "device 'gpu0'"),
    (["retrieval", "--model", "clipdro-tiny-vit", "--data", "{data}", "--precision", "fp8"], "--precision"),
])
def test_bad_input_exits_2_with_one_line(argv, message, evalset_dir, capsys):
    argv = [arg.replace("{data}", str(evalset_dir)) for arg in argv]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("clipdro eval: error: ")



def write_set_with_a_truncated_jpeg(root):
    """The 8-image set of this module, image 5 a JPEG cut to half its bytes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    names = [f"images/{i}.png" for i in range(8)]
    names[5] = "images/5.jpg"
    for name in names:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name)
    data = (root / names[5]).read_bytes()
    (root / names[5]).write_bytes(data[: len(data) // 2])
    EvalSet(root=root, name="cut", images=names, captions=[[f"picture {i}"] for i in range(8)],
            labels=[i % 2 for i in range(8)], classnames=["a", "b"]).save()
    return root


@pytest.mark.parametrize("task, workers", [("retrieval", "0"), ("retrieval", "2"), ("zeroshot", "2")])
def test_a_truncated_image_is_named_in_one_line(task, workers, tmp_path, capsys):
    data = write_set_with_a_truncated_jpeg(tmp_path / "set")
    argv = ["eval", task, "--model", "clipdro-tiny-vit", "--data", str(data), "--device", "cpu",
            "--batch-size", "3", "--workers", workers]
    if task == "zeroshot":
        argv += ["--templates", "simple"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clipdro eval: error: 1 unreadable image in evaluation set 'cut'")
    assert "images/5.jpg (" in err


def _imagefolder_tree(root, folders):
    rng = np.random.default_rng(1)
    for folder in folders:
        (root / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / folder / "0.png")
    return root


@pytest.mark.parametrize("folders, labels, num_classes", [
    (("0", "1", "10", "100", "2"), [0, 1, 10, 100, 2], 1000),  # ImageNetV2: label = the folder's number
    (("n01443537", "n01440764", "n04592741"), [0, 1, 2], 3),  # a wnid subset (ImageNet-R / -A style)
])
def test_zeroshot_imagenet_classnames_record_the_classes_scored(tmp_path, folders, labels, num_classes):
    data = _imagefolder_tree(tmp_path / "tree", folders)
    (tmp_path / "one.txt").write_text("a photo of a {}.\n")
    output = tmp_path / "result.json"
    assert main(["eval", "zeroshot", "--model", "clipdro-tiny-vit", "--data", str(data), "--device", "cpu",
                 "--classnames", "imagenet", "--templates", str(tmp_path / "one.txt"), "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["num_classes"] == num_classes and len(record["classes"]) == num_classes
    assert record["per_query"]["label"] == labels
    wnids = ["n01440764", "n01443537", "n04592741"]  # ImageNet labels 0, 1, 908
    for image_label, folder in zip(labels, sorted(folders), strict=True):  # images are listed in sorted-folder order
        scored = record["classes"][image_label]
        assert scored["folder"] == folder
        imagenet_label = int(folder) if folder.isdigit() else [0, 1, 908][wnids.index(folder)]
        assert scored["name"] == open_clip.IMAGENET_CLASSNAMES[imagenet_label]


def test_zeroshot_imagenet_classnames_refuse_an_unknown_folder(tmp_path, capsys):
    data = _imagefolder_tree(tmp_path / "tree", ("n01440764", "kittens"))
    assert main(["eval", "zeroshot", "--model", "clipdro-tiny-vit", "--data", str(data), "--device", "cpu",
                 "--classnames", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "folder 'kittens' of 'tree' is neither an ImageNet-1k wnid" in err
