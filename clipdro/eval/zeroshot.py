"""Zero-shot classification: class prompts -> text classifier, and CLIP_benchmark's metrics.

Classifier: for each class, every template is filled with the class name, the prompts are
embedded and L2-normalised, averaged, and the mean is normalised again (open_clip's
``build_zero_shot_classifier``, run in batches of classes).  Metrics, named as in
CLIP_benchmark: ``acc1``, ``acc5`` (NaN with fewer than 5 classes) and
``mean_per_class_recall`` (balanced accuracy: top-1 recall averaged over the classes that
occur in the labels).  Ties use the retrieval harness's pessimistic rule: a wrong class
scoring exactly as high as the true class counts ahead of it.  :func:`zeroshot_ranks` gives the
per-image rank of the true class that all three metrics are computed from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import open_clip
import torch

from clipdro.data.eval_converters import is_clip_benchmark_set, read_clip_benchmark_set
from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError
from clipdro.eval.embed import inference_mode
from clipdro.runtime import autocast_context

Template = str | Callable[[str], str]

# Named template sets shipped inside open_clip ("openai": the 80 CLIP paper prompts, callables).
TEMPLATE_SETS: dict[str, Sequence[Template]] = {
    "openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
    "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES,
}
# Same extensions as torchvision's ImageFolder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def load_labelled_set(path: str | Path, split: str = "test") -> EvalSet:
    """An EvalSet with labels: a clipdro eval.json folder, a set in CLIP_benchmark's webdataset layout
    (folder or URL; its ``split``), or an ImageFolder tree (one subfolder per class, classes = sorted
    subfolder names, like torchvision)."""
    if is_clip_benchmark_set(path, split):
        evalset = read_clip_benchmark_set(path, split)
    elif not Path(path).exists():
        raise UsageError(f"no such data path: {path}")
    else:
        path = Path(path)
        evalset = EvalSet.load(path) if not path.is_dir() or (path / "eval.json").is_file() \
            else _evalset_from_imagefolder(path)
    if not evalset.has_labels:
        raise UsageError(f"evaluation set {evalset.name!r} has no labels for zero-shot classification")
    return evalset


@dataclass
class ScoredClasses:
    """The classes a zero-shot run scores, in label order, and every image's label among them."""

    names: list[str]  # the readable name each class's prompts are built from
    folders: list[str | None]  # the folder each class's images sit in (None: the set has none per class)
    labels: list[int]  # per image, in the set's image order

    def record(self) -> list[dict]:
        """What a results file records: ``[{"folder": ..., "name": ...}, ...]`` in label order."""
        return [{"folder": folder, "name": name} for folder, name in zip(self.folders, self.names, strict=True)]

    def apply(self, evalset: EvalSet) -> EvalSet:
        """``evalset`` with these labels and class names (a copy; the images are shared)."""
        return replace(evalset, labels=list(self.labels), classnames=list(self.names))


def resolve_classes(source: str, evalset: EvalSet) -> ScoredClasses:
    """The classes ``--classnames SOURCE`` scores on ``evalset``: ``imagenet`` maps class folders to
    ImageNet names (:func:`imagenet_classes`); ``evalset`` and files keep the set's labels."""
    if source == "imagenet":
        return imagenet_classes(evalset)
    names = resolve_classnames(source, evalset)
    folders = _known_class_folders(evalset)
    folders += [None] * (len(names) - len(folders))  # a name file may name classes no image has
    return ScoredClasses(names=names, folders=folders, labels=list(evalset.labels or []))


def resolve_classnames(source: str, evalset: EvalSet) -> list[str]:
    """``evalset`` (the set's own names) or a text file, in the set's label order.

    The file is either one name per line, in label order, or ``folder<TAB>name`` on every line,
    matched to the set's class folders (:func:`class_folders`) whatever the line order."""
    if source == "imagenet":
        raise UsageError("--classnames imagenet maps class folders to labels: use resolve_classes")
    classnames = list(evalset.classnames) if source == "evalset" else read_classnames(source, evalset)
    largest_label = max(evalset.labels)
    if largest_label >= len(classnames):
        raise UsageError(f"label {largest_label} has no class name ({len(classnames)} names from {source})")
    return classnames


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k wnids in label order (timm's ``imagenet_synsets.txt``); open_clip's
    ``IMAGENET_CLASSNAMES`` are in the same order."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def imagenet_classes(evalset: EvalSet) -> ScoredClasses:
    """ImageNet names for ``evalset``'s class folders, by folder name, never by sorted position.

    - numeric folders ``0 ... 999`` (ImageNetV2): label = the number, scored 1,000-way;
    - wnid folders (``n01440764``, ...), all 1,000 or any subset (ImageNet-R, -A): scored over
      exactly those classes, in ImageNet label order, each with its ImageNet name.
    Any other folder is refused, named."""
    folders = class_folders(evalset)
    labels = evalset.labels or []
    if any(folder.isdigit() for folder in folders):
        odd = next((folder for folder in folders if not (folder.isdigit() and str(int(folder)) == folder
                                                          and int(folder) < len(open_clip.IMAGENET_CLASSNAMES))),
                   None)
        if odd is not None:
            raise UsageError(f"--classnames imagenet: folder {odd!r} of {evalset.name!r} is not an ImageNetV2 class "
                             f"number (0 ... 999, written without leading zeros)")
        return ScoredClasses(names=list(open_clip.IMAGENET_CLASSNAMES),
                             folders=[str(label) for label in range(len(open_clip.IMAGENET_CLASSNAMES))],
                             labels=[int(folders[label]) for label in labels])
    index = {wnid: label for label, wnid in enumerate(imagenet_wnids())}
    odd = next((folder for folder in folders if folder not in index), None)
    if odd is not None:
        raise UsageError(f"--classnames imagenet: folder {odd!r} of {evalset.name!r} is neither an ImageNet-1k wnid "
                         "(n01440764, ...) nor an ImageNetV2 class number (0 ... 999)")
    order = sorted(range(len(folders)), key=lambda label: index[folders[label]])
    new_label = {old: new for new, old in enumerate(order)}
    return ScoredClasses(names=[open_clip.IMAGENET_CLASSNAMES[index[folders[old]]] for old in order],
                         folders=[folders[old] for old in order], labels=[new_label[label] for label in labels])


def read_classnames(path: str | Path, evalset: EvalSet) -> list[str]:
    """The class names a ``--classnames FILE`` gives ``evalset``'s classes, in label order.

    A file whose every non-empty line holds exactly one TAB is ``folder<TAB>readable name``: each
    of the set's class folders must appear once, and no other folder may. Otherwise the file is
    one name per line in label order, and a TAB inside a name (a half-converted file) is refused."""
    path = Path(path)
    numbered = _numbered_lines(path)
    if all(text.count("\t") == 1 for _, text in numbered):
        return _names_by_folder(path, numbered, evalset)
    tabbed = next(((number, text) for number, text in numbered if "\t" in text), None)
    if tabbed is not None:
        number, text = tabbed
        raise UsageError(f"{path}:{number}: {text.count(chr(9))} TAB(s) in a class name; use one name per line, "
                         "or 'folder<TAB>name' with exactly one TAB on every line")
    return [text for _, text in numbered]


def class_folders(evalset: EvalSet) -> list[str]:
    """The folder name of each class of ``evalset``, in label order.

    An ImageFolder tree (and any set whose image paths start with their class name) has the
    class names as folders; otherwise each class's images must share one parent folder
    (``convert-imagefolder`` sets: ``.../n01440764/x.JPEG``), distinct between classes."""
    classnames = list(evalset.classnames or [])
    labels = evalset.labels or []
    if all(not Path(image).is_absolute() and Path(image).parts[0] == classnames[label]
           for image, label in zip(evalset.images, labels, strict=True)):
        return classnames
    parents: list[set[str]] = [set() for _ in classnames]
    for image, label in zip(evalset.images, labels, strict=True):
        parents[label].add(Path(image).parent.name)
    folders = []
    for label, found in enumerate(parents):
        if len(found) != 1:
            why = "no images" if not found else f"images in {len(found)} folders"
            raise UsageError(f"evaluation set {evalset.name!r}: class {classnames[label]!r} has {why}, so a "
                             "'folder<TAB>name' class-name file cannot be matched to it")
        folders.append(found.pop())
    if len(set(folders)) != len(folders):
        raise UsageError(f"evaluation set {evalset.name!r}: several classes share an image folder, so a "
                         "'folder<TAB>name' class-name file cannot be matched to it")
    return folders


def _known_class_folders(evalset: EvalSet) -> list[str | None]:
    """:func:`class_folders`, or one None per class for a set without a folder per class."""
    try:
        return list(class_folders(evalset))
    except UsageError:
        return [None] * len(evalset.classnames or [])


def _names_by_folder(path: Path, numbered: list[tuple[int, str]], evalset: EvalSet) -> list[str]:
    by_folder: dict[str, str] = {}
    for number, text in numbered:
        folder, name = (part.strip() for part in text.split("\t"))
        if not folder or not name:
            raise UsageError(f"{path}:{number}: empty folder or class name around the TAB")
        if folder in by_folder:
            raise UsageError(f"{path}:{number}: folder {folder!r} is listed twice")
        by_folder[folder] = name
    folders = class_folders(evalset)
    missing = [folder for folder in folders if folder not in by_folder]
    unknown = [folder for folder in by_folder if folder not in set(folders)]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"{len(missing)} class folder(s) of {evalset.name!r} missing from the file "
                            f"({_some(missing)})")
        if unknown:
            problems.append(f"{len(unknown)} folder(s) in the file unknown to {evalset.name!r} ({_some(unknown)})")
        raise UsageError(f"{path}: {'; '.join(problems)}")
    return [by_folder[folder] for folder in folders]


def _some(items: list[str], count: int = 3) -> str:
    shown = ", ".join(items[:count])
    return shown + (", ..." if len(items) > count else "")


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-empty lines; only spaces and line ends are stripped
    (a TAB is a field separator and must survive)."""
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    numbered = [(number, line.strip(" \r\n\f\v")) for number, line in enumerate(text.splitlines(), start=1)]
    numbered = [(number, line) for number, line in numbered if line.strip()]
    if not numbered:
        raise UsageError(f"{path} is empty")
    return numbered


def default_template_source(evalset: EvalSet) -> str:
    """The set's own templates when it has some, else OpenAI's 80 ImageNet prompts."""
    return "evalset" if evalset.templates else "openai"


def resolve_templates(source: str, evalset: EvalSet) -> list[Template]:
    """``openai`` (80), ``simple`` (7), ``evalset`` or a text file with one ``{}`` template per line."""
    if source in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[source])
    if source == "evalset":
        if not evalset.templates:
            raise UsageError(f"evaluation set {evalset.name!r} has no templates")
        return list(evalset.templates)
    templates = read_lines(source)
    if any("{}" not in template for template in templates):
        raise UsageError(f"{source}: every template needs a '{{}}' placeholder for the class name")
    return templates


def read_lines(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise UsageError(f"{path} is empty")
    return lines


def build_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device = "cpu",
    classes_per_batch: int = 10,
    precision: str = "auto",
) -> torch.Tensor:
    """[D, C] float32 classifier (one normalised column per class), built in batches of classes."""
    device = torch.device(device)
    with inference_mode(model), autocast_context(precision, device):
        weights = open_clip.build_zero_shot_classifier(model, tokenizer, classnames, templates,
                                                       num_classes_per_batch=classes_per_batch, device=device)
    return weights.float()


def zeroshot_metrics(scores: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> dict[str, float]:
    """``acc1``, ``acc5``, ``mean_per_class_recall`` from [N, C] image-class scores."""
    return metrics_from_ranks(zeroshot_ranks(scores, labels), labels, scores.shape[1])


def zeroshot_ranks(scores: torch.Tensor, labels: torch.Tensor | Sequence[int]) -> np.ndarray:
    """Per image, the 0-based pessimistic rank of its true class: the number of other classes
    scoring >= it (int64 [N]; top-k hit when rank < k)."""
    # A NaN score (a diverged linear-probe head) ranks last: as -inf it ties with, and so counts behind,
    # every other class (NaN >= x would be False and give rank -1).
    scores = torch.nan_to_num(scores.float().cpu(), nan=-math.inf)
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    true_scores = scores.gather(1, labels[:, None])
    return ((scores >= true_scores).sum(dim=1) - 1).numpy().astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, labels: Sequence[int] | np.ndarray | torch.Tensor,
                       num_classes: int) -> dict[str, float]:
    """:func:`zeroshot_metrics`'s dict from the true-class ranks (:func:`zeroshot_ranks`) and labels."""
    ranks = np.asarray(ranks)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    correct = (ranks == 0).astype(np.float64)
    images_per_class = np.bincount(labels, minlength=num_classes)
    hits_per_class = np.bincount(labels, weights=correct, minlength=num_classes)
    present = images_per_class > 0
    return {
        "acc1": float(np.mean(correct)),
        "acc5": float(np.mean(ranks < 5)) if num_classes >= 5 else float("nan"),
        "mean_per_class_recall": float(np.mean(hits_per_class[present] / images_per_class[present])),
    }


def _evalset_from_imagefolder(root: Path) -> EvalSet:
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise UsageError(f"{root}: neither an evaluation set (eval.json) nor an ImageFolder tree")
    images, labels = [], []
    for label, classname in enumerate(classes):
        files = sorted(path for path in (root / classname).rglob("*")
                       if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UsageError(f"{root}: class folder {classname!r} has no images")
        images += [str(path.relative_to(root)) for path in files]
        labels += [label] * len(files)
    evalset = EvalSet(root=root, name=root.name, images=images, labels=labels, classnames=classes)
    evalset.validate()
    return evalset
