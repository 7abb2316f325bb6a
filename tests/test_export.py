"""`clipdro export`: open_clip rebuilds the trained model from the exported file, and the TempNets reload."""

import textwrap

import open_clip
import pytest
import torch

from clipdro.cli import main
from clipdro.eval.embed import embed_images, embed_texts
from clipdro.export import open_clip_model_ref
from clipdro.trained_run import load_trained_run
from tests.evalset_factory import write_tiny_evalset

CAPTIONS = ["red cat", "a blue boat under the moon", "tree"]


def test_exported_model_gives_the_trained_embeddings_and_taus(tempnet_run, tmp_path, capsys):
    weights, tempnets = tmp_path / "model.pt", tmp_path / "tempnets.pt"
    argv = ["export", str(tempnet_run.run_dir), "--output", str(weights), "--tempnets", str(tempnets)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "(step 6, loss tempnet)" in printed
    # The printed loading lines are the documented way in: run them as they are.
    namespace: dict = {}
    exec(textwrap.dedent(printed.split("load with:\n", 1)[1]), namespace)

    run = load_trained_run(tempnet_run.run_dir)
    images = [path for path in sorted((write_tiny_evalset(tmp_path / "set").root / "images").iterdir())]
    exported_model, preprocess = namespace["model"], namespace["preprocess"]
    assert isinstance(exported_model, open_clip.CLIP)
    expected_images = embed_images(run.model.clip, run.eval_transform, images)
    exported_images = embed_images(exported_model, preprocess, images)
    expected_texts = embed_texts(run.model.clip, run.tokenizer, CAPTIONS)
    exported_texts = embed_texts(exported_model, namespace["tokenizer"], CAPTIONS)
    torch.testing.assert_close(exported_images, expected_images, atol=1e-6, rtol=0)
    torch.testing.assert_close(exported_texts, expected_texts, atol=1e-6, rtol=0)

    with torch.no_grad():
        for side, features in (("image", expected_images), ("text", expected_texts)):
            trained = getattr(run.model, f"{side}_tempnet")
            reloaded = namespace[f"{side}_tempnet"]
            assert not reloaded.training
            torch.testing.assert_close(reloaded(features), trained(features), atol=0, rtol=0)


def test_weights_file_loads_weights_only_and_has_no_clipdro_keys(tempnet_run, tmp_path):
    weights = tmp_path / "model.pt"
    assert main(["export", str(tempnet_run.run_dir), "--output", str(weights)]) == 0
    state = torch.load(weights, weights_only=True)
    assert "logit_scale" in state and not any(key.startswith(("clip.", "image_tempnet.")) for key in state)


def test_tempnets_of_a_run_without_them_exit_2(isogclr_run, tmp_path, capsys):
    argv = ["export", str(isogclr_run.run_dir), "--output", str(tmp_path / "m.pt"),
            "--tempnets", str(tmp_path / "t.pt")]
    assert main(argv) == 2
    assert "has no TempNets" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "t.pt").exists()


@pytest.mark.parametrize("name, expected", [
    ("ViT-B-32", ("ViT-B-32", [])),
    ("clipdro-tiny-vit", ("clipdro-tiny-vit", ["from clipdro.model_configs import register_model_configs",
                                               "register_model_configs()"])),
])
def test_open_clip_model_ref(name, expected):
    ref = open_clip_model_ref(name)
    assert (ref.name, ref.setup) == expected


def test_open_clip_model_ref_of_a_json_config(tmp_path):
    ref = open_clip_model_ref(str(tmp_path / "my-arch.json"))
    assert ref.name == "my-arch" and ref.setup == [f"open_clip.add_model_config({str(tmp_path / 'my-arch.json')!r})"]
