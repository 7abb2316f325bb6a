"""Zero-shot metrics by hand, class-name / template sources, and a run with a model whose
features are known in advance (colour images, colour-word prompts)."""

import math

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError
from clipdro.eval.results import query_sha256
from clipdro.eval.tasks import evaluate_zeroshot
from clipdro.eval.zeroshot import (
    build_classifier,
    default_template_source,
    imagenet_classes,
    imagenet_wnids,
    load_labelled_set,
    metrics_from_ranks,
    resolve_classes,
    resolve_classnames,
    resolve_templates,
    zeroshot_metrics,
    zeroshot_ranks,
)


def test_metrics_by_hand():
    scores = torch.tensor([
        [0.9, 0.1, 0.2, 0.3, 0.4],  # label 0: true class highest         -> top-1 hit
        [0.5, 0.6, 0.7, 0.1, 0.2],  # label 0: two classes higher          -> top-5 hit only
        [0.1, 0.8, 0.3, 0.2, 0.0],  # label 1: top-1 hit
        [0.9, 0.8, 0.1, 0.7, 0.6],  # label 2: last of 5                   -> top-5 hit only
        [0.2, 0.9, 0.1, 0.1, 0.1],  # label 1: top-1 hit
    ])
    metrics = zeroshot_metrics(scores, [0, 0, 1, 2, 1])
    assert list(metrics) == ["acc1", "acc5", "mean_per_class_recall"]
    assert metrics["acc1"] == pytest.approx(3 / 5)
    assert metrics["acc5"] == 1.0
    # per-class top-1 recall over the classes present: class 0 1/2, class 1 2/2, class 2 0/1
    assert metrics["mean_per_class_recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    ranks = zeroshot_ranks(scores, [0, 0, 1, 2, 1])  # 0-based rank of the true class
    assert ranks.tolist() == [0, 2, 0, 4, 0] and ranks.dtype == np.int64
    assert metrics_from_ranks(ranks, [0, 0, 1, 2, 1], num_classes=5) == metrics


def test_acc5_is_nan_below_five_classes_and_ties_are_pessimistic():
    metrics = zeroshot_metrics(torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.3]]), [0, 1])
    assert math.isnan(metrics["acc5"])
    assert metrics["acc1"] == 0.5  # the tie on the first row counts as a miss
    assert zeroshot_ranks(torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.3]]), [0, 1]).tolist() == [1, 0]
    assert metrics["mean_per_class_recall"] == 0.5


def test_nan_scores_rank_last():
    nan = float("nan")
    scores = torch.tensor([[nan, nan, nan], [nan, 0.2, 0.1], [0.3, nan, 0.1]])
    assert zeroshot_ranks(scores, [0, 1, 1]).tolist() == [2, 0, 2]


def test_classname_and_template_sources(tmp_path):
    evalset = EvalSet(root=tmp_path, name="s", images=["a.png"], labels=[1], classnames=["cat", "dog"],
                      templates=["a {}."])
    assert resolve_classnames("evalset", evalset) == ["cat", "dog"]
    names = tmp_path / "names.txt"
    names.write_text("tabby\n\n  puppy \n")
    assert resolve_classnames(str(names), evalset) == ["tabby", "puppy"]
    names.write_text("only one\n")
    with pytest.raises(UsageError, match="label 1 has no class name"):
        resolve_classnames(str(names), evalset)

    assert len(resolve_templates("openai", evalset)) == 80
    assert len(resolve_templates("simple", evalset)) == 7
    assert resolve_templates("evalset", evalset) == ["a {}."]
    assert default_template_source(evalset) == "evalset"
    evalset.templates = None
    assert default_template_source(evalset) == "openai"
    with pytest.raises(UsageError, match="no templates"):
        resolve_templates("evalset", evalset)
    bad = tmp_path / "templates.txt"
    bad.write_text("a photo of {}.\nno placeholder\n")
    with pytest.raises(UsageError, match="placeholder"):
        resolve_templates(str(bad), evalset)
    with pytest.raises(UsageError, match="no such file"):
        resolve_templates(str(tmp_path / "missing.txt"), evalset)


def test_imagefolder_tree_is_read_as_a_labelled_set(tmp_path):
    for classname, count in (("zebra", 2), ("ant", 1)):
        (tmp_path / classname / "sub").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / classname / "sub" / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    evalset = load_labelled_set(tmp_path)
    assert evalset.classnames == ["ant", "zebra"]
    assert evalset.images == ["ant/sub/0.png", "zebra/sub/0.png", "zebra/sub/1.png"]
    assert evalset.labels == [0, 1, 1]
    with pytest.raises(UsageError, match="no such data path"):
        load_labelled_set(tmp_path / "missing")


COLOURS = ("red", "green", "blue")


class ColourModel(torch.nn.Module):
    """Image feature = mean RGB; text feature = one-hot of the colour word in the prompt."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)  # a parameter, so train/eval modes exist

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = tokens.float()
        return torch.nn.functional.normalize(features, dim=-1) if normalize else features


def colour_tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[float(colour in text) for colour in COLOURS] for text in texts])


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def test_classifier_columns_and_zeroshot_run_with_known_features(tmp_path):
    model = ColourModel()
    classifier = build_classifier(model, colour_tokenizer, list(COLOURS), ["a {} thing.", "{}!"],
                                  classes_per_batch=2)
    assert torch.allclose(classifier, torch.eye(3))

    pixels = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    # The last image is red but labelled green: acc1 = 3/4; recall red 1/1, green 1/2, blue 1/1.
    shown = ["red", "green", "blue", "red"]
    labels = [0, 1, 2, 1]
    for i, colour in enumerate(shown):
        Image.new("RGB", (8, 8), pixels[colour]).save(tmp_path / f"{i}.png")
    evalset = EvalSet(root=tmp_path, name="colours", images=[f"{i}.png" for i in range(4)], labels=labels,
                      classnames=list(COLOURS))
    model.train()
    result = evaluate_zeroshot(model, to_tensor, colour_tokenizer, evalset, list(COLOURS), ["a {} thing."],
                               batch_size=3)
    assert model.training  # evaluation restores the caller's mode
    assert result.metrics["acc1"] == 0.75
    assert math.isnan(result.metrics["acc5"])
    assert result.metrics["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert set(result.timings) == {"classifier_s", "embedding_s", "search_s"}
    assert result.sizes == {"num_images": 4, "num_classes": 3}
    # The red image labelled green: green ties blue at 0 behind red -> rank 2 (pessimistic).
    assert result.per_query == {"format": "clipdro-per-query/1",
                                "query_sha256": query_sha256(evalset.images, labels=labels),
                                "rank_cap": None, "label": labels, "true_class_rank": [0, 0, 0, 2]}


def _imagefolder(root, classes=("n02", "n01", "n03")):
    for classname in classes:
        (root / classname).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / classname / "0.png")
    return load_labelled_set(root)


def test_tab_classname_file_maps_folders_whatever_the_line_order(tmp_path):
    evalset = _imagefolder(tmp_path / "val")  # classes in sorted folder order: n01, n02, n03
    names = tmp_path / "names.tsv"
    names.write_text("n03\tgoldfish\nn01\ttench, Tinca tinca\n\n n02 \t great white shark \n")
    assert resolve_classnames(str(names), evalset) == ["tench, Tinca tinca", "great white shark", "goldfish"]


@pytest.mark.parametrize("content, message", [
    ("n01\ttench\nn02\tshark\n", r"names\.tsv: 1 class folder\(s\) of 'val' missing from the file \(n03\)"),
    ("n01\ttench\nn02\tshark\nn03\tfish\nn09\tcat\n", r"1 folder\(s\) in the file unknown to 'val' \(n09\)"),
    ("n01\ttench\nn01\tagain\n", r"names\.tsv:2: folder 'n01' is listed twice"),
    ("n01\t\nn02\tshark\nn03\tfish\n", r"names\.tsv:1: empty folder or class name"),
])
def test_tab_classname_file_refuses_missing_and_unknown_folders(tmp_path, content, message):
    evalset = _imagefolder(tmp_path / "val")
    names = tmp_path / "names.tsv"
    names.write_text(content)
    with pytest.raises(UsageError, match=message):
        resolve_classnames(str(names), evalset)


@pytest.mark.parametrize("content, line", [
    ("tench\nn02\tshark\ngoldfish\n", 2),   # some lines tabbed, some not
    ("n01\ttench\tfish\nn02\tshark\nn03\tgold\n", 1),  # two TABs on a line
])
def test_mixed_classname_files_are_refused_with_the_line(tmp_path, content, line):
    evalset = _imagefolder(tmp_path / "val")
    names = tmp_path / "names.txt"
    names.write_text(content)
    with pytest.raises(UsageError, match=rf"names\.txt:{line}: .*TAB"):
        resolve_classnames(str(names), evalset)


def test_tab_classname_file_on_an_eval_json_set_uses_the_image_folders(tmp_path):
    # convert-imagefolder writes absolute image paths .../<synset>/x.JPEG and readable class names.
    images = [str(tmp_path / "val" / folder / "0.JPEG") for folder in ("n01", "n02")]
    evalset = EvalSet(root=tmp_path / "set", name="imagenet-val", images=images, labels=[0, 1],
                      classnames=["tench", "goldfish"])
    names = tmp_path / "names.tsv"
    names.write_text("n02\tgold fish\nn01\tthe tench\n")
    assert resolve_classnames(str(names), evalset) == ["the tench", "gold fish"]
    # A set whose classes share one image folder has no folder per class to match.
    shared = EvalSet(root=tmp_path, name="flat", images=["images/0.png", "images/1.png"], labels=[0, 1],
                     classnames=["a", "b"])
    with pytest.raises(UsageError, match="share an image folder"):
        resolve_classnames(str(names), shared)


def test_imagenet_wnids_are_open_clips_label_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids[:2] == ["n01440764", "n01443537"] and wnids == sorted(wnids)
    assert len(open_clip.IMAGENET_CLASSNAMES) == 1000 and open_clip.IMAGENET_CLASSNAMES[0] == "tench"


def test_imagenet_v2_numeric_folders_are_labelled_by_their_number(tmp_path):
    # Sorted as strings these are 0, 1, 10, 100, 2, 999: the old positional mapping named folder 10 "goldfish".
    evalset = _imagefolder(tmp_path / "v2", classes=("0", "1", "10", "100", "2", "999"))
    classes = imagenet_classes(evalset)
    assert [evalset.classnames[label] for label in evalset.labels] == ["0", "1", "10", "100", "2", "999"]
    assert classes.labels == [0, 1, 10, 100, 2, 999]  # label = the number, 1,000-way
    assert classes.names == list(open_clip.IMAGENET_CLASSNAMES)
    assert classes.folders == [str(label) for label in range(1000)]
    relabelled = classes.apply(evalset)
    assert [relabelled.classnames[label] for label in relabelled.labels][2] == open_clip.IMAGENET_CLASSNAMES[10]
    assert relabelled.images == evalset.images and evalset.labels == [0, 1, 2, 3, 4, 5]  # the input is untouched


def test_imagenet_r_style_wnid_subset_is_scored_over_exactly_its_classes(tmp_path):
    wnids = imagenet_wnids()
    subset = (wnids[980], wnids[1], wnids[407], wnids[2])  # like ImageNet-R / -A: 200 of the 1,000
    evalset = _imagefolder(tmp_path / "r", classes=subset)
    classes = resolve_classes("imagenet", evalset)
    assert classes.folders == [wnids[1], wnids[2], wnids[407], wnids[980]]  # ImageNet label order
    assert classes.names == [open_clip.IMAGENET_CLASSNAMES[i] for i in (1, 2, 407, 980)]
    assert classes.record()[2] == {"folder": wnids[407], "name": open_clip.IMAGENET_CLASSNAMES[407]}
    relabelled = classes.apply(evalset)
    for image, label in zip(relabelled.images, relabelled.labels, strict=True):  # every image: its folder's name
        assert relabelled.classnames[label] == open_clip.IMAGENET_CLASSNAMES[wnids.index(image.split("/")[0])]


@pytest.mark.parametrize("classes, named", [
    (("n01440764", "n99999999"), "folder 'n99999999' of 'val' is neither an ImageNet-1k wnid"),
    (("n01440764", "cats"), "folder 'cats' of 'val' is neither"),
    (("0", "1", "1000"), "folder '1000' of 'val' is not an ImageNetV2 class number"),
    (("0", "007"), "folder '007' of 'val' is not an ImageNetV2 class number"),
    (("0", "n01440764"), "folder 'n01440764' of 'val' is not an ImageNetV2 class number"),
])
def test_imagenet_classnames_refuse_a_folder_that_is_neither(tmp_path, classes, named):
    evalset = _imagefolder(tmp_path / "val", classes=classes)
    with pytest.raises(UsageError, match=named):
        resolve_classes("imagenet", evalset)


def test_evalset_and_file_classes_keep_the_labels_and_record_the_folders(tmp_path):
    evalset = _imagefolder(tmp_path / "val")
    classes = resolve_classes("evalset", evalset)
    assert classes.labels == evalset.labels and classes.names == ["n01", "n02", "n03"]
    assert classes.record()[0] == {"folder": "n01", "name": "n01"}
    flat = EvalSet(root=tmp_path, name="flat", images=["images/0.png", "images/1.png"], labels=[0, 1],
                   classnames=["a", "b"])
    assert resolve_classes("evalset", flat).record() == [{"folder": None, "name": "a"}, {"folder": None, "name": "b"}]
