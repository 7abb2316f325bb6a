"""Linear probe: the head's training, CLIP_benchmark's weight-decay search, and `clipdro eval linear-probe`
end to end (ImageFolder trees and CLIP_benchmark's webdataset layout), its results usable by `eval compare`."""

import json

import numpy as np
import pytest
import torch
from evalset_factory import write_clip_benchmark_classification, write_imagefolder

from clipdro.cli import main
from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError
from clipdro.eval.linear_probe import (
    COARSE_STEP,
    WEIGHT_DECAYS,
    ProbeOptions,
    fit_probe,
    labels_in_training_classes,
    train_head,
)

CLASSNAMES = ["red fox", "green frog", "blue whale", "yellow duck", "grey wolf", "pink pig"]


def blobs(count: int, num_classes: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm features around one random direction per class."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, 16, generator=torch.Generator().manual_seed(99)),
                                            dim=1)
    labels = torch.arange(count) % num_classes
    features = centres[labels] + noise * torch.randn(count, 16, generator=generator)
    return torch.nn.functional.normalize(features, dim=1), labels


def test_head_learns_separable_classes_and_is_reproducible():
    features, labels = blobs(120, 4, noise=0.05, seed=0)
    options = ProbeOptions(epochs=10, batch_size=16, seed=3)
    head = train_head(features, labels, 4, 1e-4, options)
    assert (head(features).argmax(1) == labels).all()
    again = train_head(features, labels, 4, 1e-4, options)
    assert torch.equal(head.weight, again.weight) and torch.equal(head.bias, again.bias)
    other = train_head(features, labels, 4, 1e-4, ProbeOptions(epochs=10, batch_size=16, seed=4))
    assert not torch.equal(head.weight, other.weight)


def test_weight_decay_search_follows_clip_benchmark_and_avoids_a_crushing_decay():
    assert len(WEIGHT_DECAYS) == 97
    assert WEIGHT_DECAYS[0] == pytest.approx(1e-6) and WEIGHT_DECAYS[-1] == pytest.approx(1e2)
    coarse = WEIGHT_DECAYS[::COARSE_STEP]
    assert len(coarse) == 7 and coarse[3] == pytest.approx(1e-2)
    features, labels = blobs(200, 5, noise=0.35, seed=1)
    fit = fit_probe(features, labels, 5, ProbeOptions(epochs=5, batch_size=32))
    assert all(any(decay == pytest.approx(value) for decay in fit.validation_acc1) for value in coarse)
    assert 7 < len(fit.validation_acc1) <= 7 + 4 * 2  # each refinement adds at most its two new neighbours
    best = fit.validation_acc1[fit.weight_decay]
    assert best == max(fit.validation_acc1.values())
    assert fit.validation_acc1[WEIGHT_DECAYS[-1]] < best  # weight decay 100 flattens the head
    fixed = fit_probe(features, labels, 5, ProbeOptions(weight_decay=0.01))
    assert fixed.weight_decay == 0.01 and fixed.validation_acc1 == {}
    with pytest.raises(UsageError, match="val-proportion"):
        fit_probe(features[:3], labels[:3], 5, ProbeOptions(val_proportion=0.1))


def test_test_classes_are_matched_to_the_training_classes_by_name(tmp_path):
    train = EvalSet(root=tmp_path, name="train", images=["a", "b", "c"], labels=[0, 1, 2], classnames=["x", "y", "z"])
    test = EvalSet(root=tmp_path, name="test", images=["d", "e"], labels=[0, 1], classnames=["z", "x"])
    assert labels_in_training_classes(train, test) == [2, 0]
    test.classnames = ["z", "w"]
    with pytest.raises(UsageError, match=r"1 class\(es\) of test set 'test' are not in training set 'train': w"):
        labels_in_training_classes(train, test)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    train_labels = [label for label in range(6) for _ in range(6)]
    test_labels = [label for label in range(6) for _ in range(3)]
    folders = [name.replace(" ", "_") for name in CLASSNAMES]
    train = write_clip_benchmark_classification(root / "wds", train_labels, CLASSNAMES, ["{c}"], split="train")
    test = write_clip_benchmark_classification(root / "wds", test_labels, CLASSNAMES, ["{c}"], first_index=1000)
    write_imagefolder(root / "train", train, train_labels, folders)
    write_imagefolder(root / "test", test, test_labels, folders)
    return root


COMMON = ["--model", "clipdro-tiny-vit", "--seed", "0", "--device", "cpu", "--batch-size", "16", "--epochs", "15",
          "--probe-batch-size", "8"]


def _probe(root, output, *extra):
    assert main(["eval", "linear-probe", *COMMON, "--output", str(output), *extra]) == 0
    return json.loads(output.read_text())


@pytest.mark.slow  # two CLI runs with the weight-decay search (the next test runs the CLI too)
def test_linear_probe_cli_on_trees_and_on_the_wds_layout(splits, tmp_path):
    tree = _probe(splits, tmp_path / "tree.json", "--train", str(splits / "train"), "--data", str(splits / "test"))
    assert tree["task"] == "linear-probe" and tree["dataset"] == "test" and tree["train_dataset"] == "train"
    assert (tree["num_images"], tree["num_train_images"], tree["num_classes"]) == (18, 36, 6)
    assert list(tree["metrics"]) == ["acc1", "acc5", "mean_per_class_recall"]
    assert tree["weight_decay"] in [float(decay) for decay in tree["validation_acc1"]]
    assert tree["val_proportion"] == 0.2 and tree["lr"] == 0.1 and tree["epochs"] == 15
    ranks, labels = np.array(tree["per_query"]["true_class_rank"]), np.array(tree["per_query"]["label"])
    assert tree["metrics"]["acc1"] == float(np.mean(ranks == 0))
    assert tree["metrics"]["acc5"] == float(np.mean(ranks < 5))
    assert tree["metrics"]["acc1"] > 0.5  # class colours separate even with random-init features (chance: 1/6)
    wds = _probe(splits, tmp_path / "wds.json", "--train", str(splits / "wds"), "--data", str(splits / "wds"))
    assert wds["metrics"] == tree["metrics"]  # the same images, bytes read from the train/ and test/ shards
    assert wds["per_query"]["true_class_rank"] == tree["per_query"]["true_class_rank"]
    assert labels.tolist() == wds["per_query"]["label"]


def test_linear_probe_results_can_be_compared(splits, tmp_path, capsys):
    paths = {"train": str(splits / "train"), "data": str(splits / "test")}
    results = []
    for decay in ("0.0001", "100"):
        output = tmp_path / f"wd{decay}.json"
        record = _probe(splits, output, "--train", paths["train"], "--data", paths["data"], "--weight-decay", decay)
        assert record["weight_decay"] == float(decay) and record["validation_acc1"] == {}
        assert record["val_proportion"] is None
        results.append(str(output))
    capsys.readouterr()
    assert main(["eval", "compare", *results, "--bootstrap", "200"]) == 0
    table = capsys.readouterr().out
    assert "| acc1 | 18 images |" in table and "| mean_per_class_recall | 18 images |" in table
