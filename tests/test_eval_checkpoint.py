"""`clipdro eval retrieval|zeroshot --checkpoint RUN`: a tiny trained run evaluated end to end."""

import json
import logging

import open_clip
import pytest
import torch

from clipdro.cli import main
from clipdro.eval.embed import embed_texts
from clipdro.trained_run import load_trained_run
from tests.evalset_factory import write_tiny_evalset


@pytest.fixture(scope="module")
def evalset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    write_tiny_evalset(root)
    return root


def test_load_trained_run_identifies_the_checkpoint(tempnet_run):
    run = load_trained_run(tempnet_run.run_dir)
    assert run.checkpoint.name == "step_000000006" and run.step == 6 and run.loss_name == "tempnet"
    assert not run.model.training and run.model.has_tempnets
    assert set(run.loss_state) >= {"image_table.s", "text_table.seen"}
    features = embed_texts(run.model.clip, run.tokenizer, ["a red cat"])
    assert features.shape == (1, 64)


@pytest.mark.parametrize("task", ["retrieval", "zeroshot"])
def test_checkpoint_results_record_the_run(task, tempnet_run, evalset_dir, tmp_path, capsys):
    output = tmp_path / f"{task}.json"
    argv = ["eval", task, "--checkpoint", str(tempnet_run.run_dir), "--data", str(evalset_dir),
            "--device", "cpu", "--output", str(output)]
    assert main(argv) == 0
    record = json.loads(output.read_text())
    checkpoint = tempnet_run.run_dir / "checkpoints" / "step_000000006"
    assert (record["checkpoint"], record["step"], record["loss"]) == (str(checkpoint.resolve()), 6, "tempnet")
    assert (record["model"], record["pretrained"]) == ("clipdro-tiny-vit", None)
    assert all(0.0 <= value <= 1.0 for value in record["metrics"].values() if value is not None)

    assert main(["eval", "summarize", str(output)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith("| task | dataset | model | pretrained | checkpoint | step | loss |")
    assert f"| {checkpoint.resolve()} | 6 | tempnet |" in lines[-1]


@pytest.mark.parametrize("argv, message", [
    (["--model", "clipdro-tiny-vit", "--checkpoint", "{run}"], "not allowed with argument"),
    (["--checkpoint", "{run}", "--pretrained", "x.pt"], "--pretrained applies to --model"),
    (["--checkpoint", "/nowhere/run"], "checkpoint not found"),
])
def test_bad_checkpoint_arguments_exit_2(argv, message, tempnet_run, evalset_dir, capsys):
    argv = [arg.replace("{run}", str(tempnet_run.run_dir)) for arg in argv]
    assert main(["eval", "retrieval", "--data", str(evalset_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["text", "truncated", "weights"])
def test_a_file_that_is_not_a_checkpoint_exits_2_naming_it(kind, tempnet_run, evalset_dir, tmp_path, capsys):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("model: clipdro-tiny-vit\n")
    elif kind == "truncated":
        torch.save({"format": "clipdro-train/1", "weights": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # a dict with a format but not a training run (e.g. `clipdro export --tempnets`)
        torch.save({"format": "clipdro-tempnets/1", "image_tempnet": {}}, path)
    assert main(["eval", "retrieval", "--checkpoint", str(path), "--data", str(evalset_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"clipdro eval: error: {path}: not a clipdro")


def _random_init_warnings(records):
    return [r for r in records if "No pretrained weights loaded" in r.getMessage()]


def test_loading_a_run_does_not_claim_random_weights(tempnet_run, caplog):
    with caplog.at_level(logging.WARNING):
        load_trained_run(tempnet_run.run_dir)
    assert _random_init_warnings(caplog.records) == []
    # The filter is gone afterwards: a genuinely random model still says so.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        open_clip.create_model_and_transforms("clipdro-tiny-vit")
    assert len(_random_init_warnings(caplog.records)) == 1
    assert logging.getLogger().filters == []
