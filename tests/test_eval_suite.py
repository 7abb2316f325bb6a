"""`clipdro eval suite SUITE.yaml`: tasks of all three kinds on one model loaded once, one result file
per task, a summary table, failing tasks reported while the others run."""

import json

import pytest
import yaml
from evalset_factory import write_clip_benchmark_classification, write_imagefolder

from clipdro.cli import main
from clipdro.eval import suite as eval_suite

CLASSNAMES = ["red fox", "green frog", "blue whale", "yellow duck", "grey wolf"]
MODEL = ["--model", "clipdro-tiny-vit", "--seed", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite_data")
    train_labels = [label for label in range(5) for _ in range(4)]
    test_labels = [label for label in range(5) for _ in range(2)]
    write_clip_benchmark_classification(root / "wds", train_labels, CLASSNAMES, ["a {c}."], split="train")
    test = write_clip_benchmark_classification(root / "wds", test_labels, CLASSNAMES, ["a {c}."], first_index=100)
    write_imagefolder(root / "tree", test, test_labels, [name.replace(" ", "_") for name in CLASSNAMES])
    return root


def test_suite_runs_every_task_on_one_model_and_reports_the_failures(data, tmp_path, monkeypatch, capsys):
    suite = {"tasks": [
        {"name": "zs-wds", "task": "zeroshot", "data": str(data / "wds")},
        {"name": "zs-tree", "task": "zeroshot", "data": str(data / "tree"), "templates": "simple",
         "batch_size": 4},
        {"name": "missing", "task": "zeroshot", "data": str(data / "nowhere")},
        {"name": "bad-option", "task": "retrieval", "data": str(data / "wds"), "recall_k": "many"},
        {"name": "probe", "task": "linear-probe", "train": str(data / "wds"), "data": str(data / "wds"),
         "epochs": 2, "weight_decay": 0.001},
        {"task": "retrieval", "data": str(data / "wds")},  # a classification set: no captions, fails when run
    ]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    loads = []
    real_load_model = eval_suite.load_model
    monkeypatch.setattr(eval_suite, "load_model", lambda args: loads.append(args.model) or real_load_model(args))
    out = tmp_path / "out"
    assert main(["eval", "suite", str(tmp_path / "suite.yaml"), *MODEL, "--output-dir", str(out)]) == 1
    assert loads == ["clipdro-tiny-vit"]  # the model is loaded once
    assert sorted(path.name for path in out.glob("*.json")) == ["probe.json", "zs-tree.json", "zs-wds.json"]
    records = {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}
    assert records["zs-tree"]["templates"] == "simple" and records["zs-wds"]["templates"] == "evalset"
    assert records["probe"]["task"] == "linear-probe" and records["probe"]["weight_decay"] == 0.001
    assert all(record["name"] == name for name, record in records.items())

    summary = (out / "summary.md").read_text()
    lines = summary.splitlines()
    assert lines[0].startswith("| name | task | dataset | model | pretrained | acc1 | acc5 |")
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| zs-wds", "| zs-tree", "| probe"]
    assert "- missing: no such data path" in summary
    assert "- bad-option: argument --recall-k: invalid int value: 'many'" in summary
    assert "- retrieval-6: evaluation set 'wds' has no captions" in summary
    csv_rows = (out / "summary.csv").read_text().splitlines()
    assert csv_rows[0].startswith("name,task,dataset") and len(csv_rows) == 4
    assert "3 task(s) failed" in capsys.readouterr().out

    # The suite's numbers are the single command's.
    single = tmp_path / "single.json"
    assert main(["eval", "zeroshot", *MODEL, "--data", str(data / "tree"), "--templates", "simple",
                 "--output", str(single)]) == 0
    assert json.loads(single.read_text())["metrics"] == records["zs-tree"]["metrics"]


@pytest.mark.parametrize("content, message", [
    ("tasks: []\n", "expected a mapping with a non-empty 'tasks' list"),
    ("tasks:\n  - task: captioning\n    data: x\n", "task 1 needs 'task: retrieval | zeroshot | linear-probe'"),
    ("tasks:\n  - {task: zeroshot, data: x, name: a}\n  - {task: zeroshot, data: y, name: a}\n", "used twice"),
    ("tasks:\n  - {task: zeroshot, data: x}\nmodels: [a]\n", "unknown key(s) models"),
    ("tasks: [\n", "is not YAML"),
])
def test_a_bad_suite_file_exits_2_with_one_line(tmp_path, capsys, content, message):
    (tmp_path / "suite.yaml").write_text(content)
    assert main(["eval", "suite", str(tmp_path / "suite.yaml"), *MODEL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_task_may_not_set_the_suites_model(tmp_path, data, capsys):
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"tasks": [
        {"task": "zeroshot", "data": str(data / "tree"), "model": "ViT-B-32"}]}))
    assert main(["eval", "suite", str(tmp_path / "suite.yaml"), *MODEL, "--output-dir", str(tmp_path / "o")]) == 1
    assert "- zeroshot-1: model belong to the suite command, not to a task" in (tmp_path / "o/summary.md").read_text()
