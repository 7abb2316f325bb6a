"""Bad input files end to end: each command exits 2 with one line on stderr naming the file
(no traceback): a truncated image in an evaluation set, a truncated shard for `data index`
(indexed up to the damage instead), a file that is not a checkpoint, a class-name file whose
folders do not match the set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shard_factory import write_img2dataset

from clipdro.cli import main
from clipdro.data.evalset import EvalSet
from clipdro.data.manifest import Manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cut_set(tmp_path):
    """A 6-image labelled set with captions; images/4.jpg is a JPEG cut to half its bytes."""
    root = tmp_path / "cut-set"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"images/{i}.{'jpg' if i == 4 else 'png'}" for i in range(6)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name)
    data = (root / names[4]).read_bytes()
    (root / names[4]).write_bytes(data[: len(data) // 2])
    EvalSet(root=root, name="cut-set", images=names, captions=[[f"picture {i}"] for i in range(6)],
            labels=[i % 3 for i in range(6)], classnames=["a", "b", "c"], templates=["{}."]).save()
    return root


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clipdro {command}: error: "), err
    return err


@pytest.mark.parametrize("task", ["retrieval", "zeroshot"])
def test_truncated_evaluation_image(task, cut_set, capsys):
    argv = ["eval", task, "--model", "clipdro-tiny-vit", "--data", str(cut_set), "--device", "cpu",
            "--batch-size", "2", "--workers", "2"]
    assert main(argv) == 2
    err = _one_error_line(capsys, "eval")
    assert "1 unreadable image in evaluation set 'cut-set'" in err and "images/4.jpg (" in err


@pytest.mark.slow  # a launched process; the in-process path: tests/test_eval_cli.py
def test_truncated_evaluation_image_in_a_real_process(cut_set, tempnet_run):
    """The whole stderr of the process: the error line and nothing else (no traceback, no
    open_clip "initialized randomly" warning for a checkpoint's model)."""
    result = subprocess.run([sys.executable, "-m", "clipdro.cli", "eval", "retrieval", "--checkpoint",
                             str(tempnet_run.run_dir), "--data", str(cut_set), "--device", "cpu"],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "images/4.jpg (" in result.stderr, result.stderr


def test_truncated_shard_is_indexed_up_to_the_damage(tmp_path, capsys):
    write_img2dataset(tmp_path, [[0, 3, 7], [1, 2, 5]], rows_digits=1, stats=False)
    data = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[: len(data) // 3])
    assert main(["data", "index", str(tmp_path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 damaged shard(s)" in out and f"{tmp_path / '00001.tar'}: " in out
    manifest = Manifest.load(tmp_path)
    damaged = manifest.extra["damaged_shards"]
    assert [d["path"] for d in damaged] == ["00001.tar"]
    assert manifest.shards[1].num_samples == damaged[0]["num_samples"] < 3


@pytest.mark.parametrize("argv", [
    ["eval", "retrieval", "--checkpoint", "{file}", "--data", "{data}", "--device", "cpu"],
    ["eval", "zeroshot", "--checkpoint", "{file}", "--data", "{data}", "--device", "cpu"],
    ["export", "{file}", "--output", "{tmp}/model.pt"],
    ["report", "{file}", "--device", "cpu", "--output", "{tmp}/report"],
])
def test_a_file_that_is_not_a_checkpoint(argv, cut_set, tmp_path, capsys):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("these are my notes, not a checkpoint\n")
    argv = [a.format(file=bogus, data=cut_set, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = _one_error_line(capsys, argv[0])
    assert f"{bogus}: not a clipdro checkpoint (" in err
    assert not (tmp_path / "model.pt").exists()


def test_tab_classname_file_with_an_unknown_folder(tmp_path, capsys):
    for folder in ("n01", "n02"):
        (tmp_path / "val" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "val" / folder / "0.png")
    names = tmp_path / "names.tsv"
    names.write_text("n01\ttench\nn02\tgoldfish\nn99\tgreat white shark\n")
    assert main(["eval", "zeroshot", "--model", "clipdro-tiny-vit", "--data", str(tmp_path / "val"),
                 "--classnames", str(names), "--device", "cpu"]) == 2
    err = _one_error_line(capsys, "eval")
    assert f"{names}: 1 folder(s) in the file unknown to 'val' (n99)" in err
    names.write_text("n02\tgoldfish\nn01\ttench\n")
    output = tmp_path / "result.json"
    assert main(["eval", "zeroshot", "--model", "clipdro-tiny-vit", "--data", str(tmp_path / "val"),
                 "--classnames", str(names), "--templates", "simple", "--device", "cpu",
                 "--output", str(output)]) == 0
    assert json.loads(output.read_text())["num_classes"] == 2


def test_truncated_evaluation_image_stops_training_before_any_step(cut_set, tmp_path, capsys):
    from shard_factory import write_dense

    shards = tmp_path / "shards"
    write_dense(shards, count=16, per_shard=8, size=32)
    run_dir = tmp_path / "runs" / "run"
    argv = ["train", f"data.sources=[{{shards: {shards}}}]", "data.batch_size=8", "data.num_workers=0",
            "data.resampled=false", "loss.rho=1.0", f"eval.zeroshot=[{cut_set}]",
            f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}"]
    assert main(argv) == 2
    err = _one_error_line(capsys, "train")
    assert "1 unreadable image in evaluation set 'cut-set'" in err and "images/4.jpg (" in err
    assert not run_dir.exists()  # stopped at start-up: no step taken, no run folder
