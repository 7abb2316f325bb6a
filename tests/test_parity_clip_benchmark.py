"""Parity with CLIP_benchmark 1.6.2 itself (a dev dependency): its zero-shot ``evaluate`` and our CLI on
the same exported model and generated images, as an ImageFolder tree and in its webdataset layout;
its linear probe and ours on the same features.

CLIP_benchmark's ``accuracy()`` calls ``float()`` on a 1-element array, which numpy 2 refuses: the tests
replace it with the same computation using ``.item()`` (nothing of it is copied into clipdro)."""

import json

import pytest
import torch
from evalset_factory import write_clip_benchmark_classification, write_imagefolder

from clipdro.cli import main
from clipdro.model_configs import register_model_configs

zeroshot_classification = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
clip_benchmark_linear_probe = pytest.importorskip("clip_benchmark.metrics.linear_probe")
pytest.importorskip("requests")  # clip_benchmark.datasets.builder imports it
from clip_benchmark.datasets.builder import build_wds_dataset  # noqa: E402

open_clip = pytest.importorskip("open_clip")

CLASSNAMES = ["red fox", "green frog", "blue whale", "yellow duck", "grey wolf", "pink pig", "black cat"]
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}."]
TEST_LABELS = [label for label in range(7) for _ in range(4)]
TOLERANCE = 1e-4


def numpy2_accuracy(output, target, topk=(1,)):
    """CLIP_benchmark's accuracy() with ``.item()`` where it calls ``float()`` on a 1-element array."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


@pytest.fixture(autouse=True)
def patched_accuracy(monkeypatch):
    monkeypatch.setattr(zeroshot_classification, "accuracy", numpy2_accuracy)
    monkeypatch.setattr(clip_benchmark_linear_probe, "accuracy", numpy2_accuracy)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-init clipdro-tiny-vit saved as a plain state dict (what `clipdro export` writes), the
    same file for CLIP_benchmark (through open_clip) and for `clipdro eval --pretrained`."""
    root = tmp_path_factory.mktemp("parity")
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("clipdro-tiny-vit")
    torch.save(model.state_dict(), root / "model.pt")
    images = write_clip_benchmark_classification(root / "wds", TEST_LABELS, CLASSNAMES, TEMPLATES, num_shards=2)
    write_imagefolder(root / "tree", images, TEST_LABELS, [f"c{label}" for label in range(7)])
    (root / "names.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "templates.txt").write_text("\n".join(template.replace("{c}", "{}") for template in TEMPLATES) + "\n")
    return root


def _reference_model(exported):
    model, _, preprocess = open_clip.create_model_and_transforms("clipdro-tiny-vit",
                                                                 pretrained=str(exported / "model.pt"))
    return model.eval(), preprocess, open_clip.get_tokenizer("clipdro-tiny-vit")


def _ours(exported, tmp_path, *argv):
    output = tmp_path / "ours.json"
    assert main(["eval", *argv, "--model", "clipdro-tiny-vit", "--pretrained", str(exported / "model.pt"),
                 "--device", "cpu", "--output", str(output)]) == 0
    return json.loads(output.read_text())["metrics"]


def _assert_close(ours, reference, tolerance):
    for name in ("acc1", "acc5", "mean_per_class_recall"):
        assert abs(ours[name] - reference[name]) <= tolerance, (name, ours[name], reference[name])


def test_zeroshot_imagefolder_tree_matches_clip_benchmark(exported, tmp_path):
    import torchvision

    model, preprocess, tokenizer = _reference_model(exported)
    dataset = torchvision.datasets.ImageFolder(str(exported / "tree"), transform=preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    reference = zeroshot_classification.evaluate(model, loader, tokenizer, CLASSNAMES, TEMPLATES, "cpu", amp=False)
    ours = _ours(exported, tmp_path, "zeroshot", "--data", str(exported / "tree"),
                 "--classnames", str(exported / "names.txt"), "--templates", str(exported / "templates.txt"))
    _assert_close(ours, reference, TOLERANCE)


def test_zeroshot_wds_layout_matches_clip_benchmark(exported, tmp_path):
    model, preprocess, tokenizer = _reference_model(exported)
    dataset = build_wds_dataset("parity", preprocess, split="test", data_dir=str(exported / "wds"))
    assert dataset.classes == CLASSNAMES and dataset.templates == TEMPLATES
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    reference = zeroshot_classification.evaluate(model, loader, tokenizer, dataset.classes, dataset.templates,
                                                 "cpu", amp=False)
    ours = _ours(exported, tmp_path, "zeroshot", "--data", str(exported / "wds"))  # its classnames and templates
    _assert_close(ours, reference, TOLERANCE)
