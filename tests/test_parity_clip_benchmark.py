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


@pytest.mark.slow  # two linear probes with their learning-rate searches: ~18 s
def test_linear_probe_agrees_with_clip_benchmark_within_a_point(exported, tmp_path, monkeypatch):
    """Same frozen features and hyperparameters (lr, epochs, batch, 20 % held out for the weight-decay
    search); the optimisers differ in their random streams (CLIP_benchmark: global RNG, its own
    random_split; clipdro: a seeded generator), so agreement is within 1 point, not exact.

    CLIP_benchmark's linear probe runs only on CUDA: its features are computed here on the CPU with its
    own ``Featurizer`` and put in its feature cache, and ``.cuda()`` is made a no-op, so that its
    ``evaluate`` trains and scores on the CPU."""
    train_labels = [label for label in range(7) for _ in range(10)]
    images = write_clip_benchmark_classification(tmp_path / "lp", train_labels, CLASSNAMES, TEMPLATES,
                                                 split="train", first_index=500)
    write_imagefolder(tmp_path / "train", images, train_labels, [f"c{label}" for label in range(7)])
    hyper = {"lr": 0.1, "epochs": 10, "batch_size": 16}

    model, preprocess, _ = _reference_model(exported)
    featurizer = clip_benchmark_linear_probe.Featurizer(model, normalize=True)
    import torchvision

    def features_of(folder):
        dataset = torchvision.datasets.ImageFolder(str(folder), transform=preprocess)
        with torch.no_grad():
            batches = [(featurizer(x), y) for x, y in torch.utils.data.DataLoader(dataset, batch_size=32)]
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    train_x, train_y = features_of(tmp_path / "train")
    test_x, test_y = features_of(exported / "tree")
    held_out = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    val_index, fit_index = held_out[:len(train_x) // 5], held_out[len(train_x) // 5:]
    cache = tmp_path / "features" / "tiny"
    cache.mkdir(parents=True)
    splits = {"train": (train_x[fit_index], train_y[fit_index]), "val": (train_x[val_index], train_y[val_index]),
              "test": (test_x, test_y)}
    for split, (x, y) in splits.items():
        torch.save(x, cache / f"features_{split}.pt")
        torch.save(y, cache / f"targets_{split}.pt")
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *args, **kwargs: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    real_train, real_infer = clip_benchmark_linear_probe.train, clip_benchmark_linear_probe.infer
    monkeypatch.setattr(clip_benchmark_linear_probe, "train", lambda *args: real_train(*args[:7], "cpu", *args[8:]))
    monkeypatch.setattr(clip_benchmark_linear_probe, "infer", lambda *args: real_infer(*args[:3], "cpu"))
    torch.manual_seed(0)
    reference = clip_benchmark_linear_probe.evaluate(
        model, None, None, fewshot_k=-1, batch_size=hyper["batch_size"], num_workers=0, lr=hyper["lr"],
        epochs=hyper["epochs"], model_id="tiny", seed=0, feature_root=str(tmp_path / "features"), device="cuda",
        val_dataloader=[], normalize=True, amp=False)
    monkeypatch.undo()
    ours = _ours(exported, tmp_path, "linear-probe", "--train", str(tmp_path / "train"),
                 "--data", str(exported / "tree"), "--lr", str(hyper["lr"]), "--epochs", str(hyper["epochs"]),
                 "--probe-batch-size", str(hyper["batch_size"]))
    _assert_close(ours, {name: reference[f"lp_{name}"] for name in ("acc1", "acc5", "mean_per_class_recall")}, 0.01)
