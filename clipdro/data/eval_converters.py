"""Evaluation sets (:mod:`clipdro.data.evalset`) from the common public layouts.

- COCO / Flickr30k Karpathy splits: the original ``dataset_coco.json`` /
  ``dataset_flickr30k.json`` (``{"images": [{"filepath", "filename", "split",
  "sentences": [{"raw"}]}]}``) or ALBEF's per-split files (``[{"image": path,
  "caption": [..] or ".."}]``). Images are referenced by absolute path, not copied.
- CLIP_benchmark WebDataset retrieval sets: ``KEY.webp|png|jpg|jpeg`` with ``KEY.txt``
  holding the captions one per line. The images live inside the tars, so they are
  copied to ``images/`` in the evaluation-set folder.
- CLIP_benchmark's whole webdataset layout (classification and retrieval), read directly into
  memory without converting: :func:`read_clip_benchmark_set` / :func:`load_evalset`.
- ImageFolder trees (ImageNet val): one folder per class, sorted, images referenced by
  absolute path; class names from open_clip when the folders are the 1000 ImageNet
  synsets, else from the folder names or a file; prompt templates rendered to ``{}``.

An evaluation set must be complete, so unlike the training converters these raise
:class:`UsageError` on a missing image or caption instead of skipping it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import webdataset as wds

from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
_WNID = re.compile(r"n\d{8}")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise UsageError(f"no {what} at {path}")
    return path


def _karpathy_entries(payload: object, split: str) -> list[tuple[str, list[str]]]:
    """(image path, captions) per image, in file order, from either Karpathy JSON flavour."""
    if isinstance(payload, dict) and "images" in payload:
        return [(str(Path(item.get("filepath", "")) / item["filename"]),
                 [sentence["raw"] for sentence in item["sentences"]])
                for item in payload["images"] if item["split"] == split]
    if isinstance(payload, list):
        # ALBEF files are already one split; train files repeat an image once per caption.
        grouped: dict[str, list[str]] = {}
        for item in payload:
            captions = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
            grouped.setdefault(item["image"], []).extend(captions)
        return list(grouped.items())
    raise UsageError("not a Karpathy JSON: expected {'images': [...]} or a list of {'image', 'caption'}")


def karpathy_to_evalset(json_path: str | Path, image_root: str | Path, out_dir: str | Path,
                        split: str = "test", name: str | None = None) -> EvalSet:
    json_path, image_root, out_dir = Path(json_path), Path(image_root), Path(out_dir)
    _require(json_path, "Karpathy JSON file")
    _require(image_root, "image folder")
    try:
        entries = _karpathy_entries(json.loads(json_path.read_text(encoding="utf-8")), split)
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise UsageError(f"{json_path}: unexpected Karpathy JSON ({type(error).__name__}: {error})") from None
    if not entries:
        raise UsageError(f"{json_path}: no images in split {split!r}")
    images = [(image_root / path).resolve() for path, _ in entries]
    missing = [path for path in images if not path.is_file()]
    if missing:
        raise UsageError(f"image {missing[0]} does not exist ({len(missing)} of {len(images)} missing)")
    evalset = EvalSet(root=out_dir, name=name or f"{json_path.stem}-{split}", images=[str(p) for p in images],
                      captions=[[c.strip() for c in captions] for _, captions in entries])
    evalset.save()
    return evalset


def _unreadable_shard(error: Exception) -> bool:
    raise UsageError(f"cannot read CLIP_benchmark shard: {error}")


def _clip_benchmark_images(urls: list[str]):
    """(shard url, key, image extension, image bytes, sample) of every sample of CLIP_benchmark shards,
    in shard order; a sample without an image is refused, named."""
    for url in urls:
        if "://" not in url and not url.startswith("pipe:"):
            _require(Path(url), "shard")
    for sample in wds.tarfile_samples([{"url": url} for url in urls], handler=_unreadable_shard):
        ext = next((ext for ext in ("webp", "png", "jpg", "jpeg") if ext in sample), None)
        if ext is None:
            raise UsageError(f"{sample['__url__']}: sample {sample['__key__']} has no image (webp, png, jpg, jpeg)")
        yield sample["__url__"], sample["__key__"], ext, sample[ext], sample


def _caption_lines(sample: dict, where: str) -> list[str]:
    """A retrieval sample's captions: the non-empty lines of its ``.txt``."""
    if "txt" not in sample:
        raise UsageError(f"{where} lacks its .txt captions")
    texts = [line.strip() for line in sample["txt"].decode("utf-8").splitlines() if line.strip()]
    if not texts:
        raise UsageError(f"{where} has no caption")
    return texts


def clip_benchmark_to_evalset(shards: str, out_dir: str | Path, name: str | None = None) -> EvalSet:
    """``shards``: a brace pattern or ``::`` list of tar paths or URLs, e.g. ``test/{0..4}.tar``."""
    out_dir = Path(out_dir)
    images: list[str] = []
    captions: list[list[str]] = []
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for url, key, ext, data, sample in _clip_benchmark_images(wds.shardlists.expand_urls(shards)):
        captions.append(_caption_lines(sample, f"{url}: sample {key}"))
        relative = f"images/{len(images):06d}.{ext}"
        (out_dir / relative).write_bytes(data)
        images.append(relative)
    evalset = EvalSet(root=out_dir, name=name or out_dir.name, images=images, captions=captions)
    evalset.save()
    return evalset


def is_clip_benchmark_set(location: str | Path, split: str = "test") -> bool:
    """True for CLIP_benchmark's webdataset layout: a URL, or a folder with ``SPLIT/nshards.txt``."""
    return "://" in str(location) or (Path(location) / split / "nshards.txt").is_file()


def read_clip_benchmark_set(location: str | Path, split: str = "test") -> EvalSet:
    """One split of a set in CLIP_benchmark's webdataset layout, read directly (images kept as bytes).

    ``location`` is a folder or URL holding ``SPLIT/nshards.txt``, ``SPLIT/{0..n-1}.tar``, optional
    ``dataset_type.txt`` (``retrieval``, else classification), and for classification
    ``classnames.txt`` and optional ``zeroshot_classification_templates.txt`` (``{c}`` templates,
    rendered to ``{}``). Images are named ``SPLIT/SHARD.tar/KEY.EXT``."""
    location = str(location).rstrip("/")
    metadata, tars = _clip_benchmark_bases(location)
    nshards_text = _read_text(f"{metadata}/{split}/nshards.txt")
    if nshards_text is None or not nshards_text.strip().isdigit():
        raise UsageError(f"{location}: no CLIP_benchmark split {split!r} ({split}/nshards.txt missing or not a number)")
    urls = [f"{tars}/{split}/{shard}.tar" for shard in range(int(nshards_text))]
    retrieval = (_read_text(f"{metadata}/dataset_type.txt") or "").strip().lower() == "retrieval"
    names, data, captions, labels = [], [], [], []
    for url, key, ext, image, sample in _clip_benchmark_images(urls):
        where = f"{url}: sample {key}"
        names.append(f"{split}/{url.rsplit('/', 1)[-1]}/{key}.{ext}")
        data.append(image)
        if retrieval:
            captions.append(_caption_lines(sample, where))
        elif "cls" not in sample or not sample["cls"].strip().isdigit():
            raise UsageError(f"{where} lacks its .cls label (an integer)")
        else:
            labels.append(int(sample["cls"]))
    evalset = EvalSet(root=Path(location), name=location.rsplit("/", 1)[-1], images=names, image_data=data,
                      captions=captions if retrieval else None, labels=None if retrieval else labels)
    if not retrieval:
        classnames = _read_text(f"{metadata}/classnames.txt")
        if classnames is None:
            raise UsageError(f"{location}: no classnames.txt for a classification set")
        evalset.classnames = [line.strip() for line in classnames.splitlines() if line.strip()]
        templates = _read_text(f"{metadata}/zeroshot_classification_templates.txt")
        if templates is not None:  # CLIP_benchmark fills them with str.format(c=name): same escapes as "{}"
            evalset.templates = [line.strip().replace("{c}", "{}") for line in templates.splitlines() if line.strip()]
    evalset.validate()
    return evalset


def _clip_benchmark_bases(location: str) -> tuple[str, str]:
    """(where the text files are, where the tars are): the same, except for a Hugging Face dataset
    page ``https://huggingface.co/datasets/USER/REPO/tree/BRANCH``, whose text files are under
    ``raw/`` and tars (Git LFS) under ``resolve/`` (as CLIP_benchmark reads them)."""
    if location.startswith("https://huggingface.co/datasets/") and "/tree/" in location:
        return location.replace("/tree/", "/raw/", 1), location.replace("/tree/", "/resolve/", 1)
    return location, location


def _read_text(location: str) -> str | None:
    """The UTF-8 text of a local file or URL; None when it does not exist."""
    if "://" not in location:
        path = Path(location)
        return path.read_text(encoding="utf-8") if path.is_file() else None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(location, timeout=60) as response:
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise UsageError(f"cannot read {location}: HTTP {error.code}") from None
    except urllib.error.URLError as error:
        raise UsageError(f"cannot read {location}: {error.reason}") from None


def load_evalset(location: str | Path, split: str = "test") -> EvalSet:
    """An evaluation set: CLIP_benchmark's webdataset layout (:func:`read_clip_benchmark_set`) or a
    clipdro ``eval.json`` folder."""
    if is_clip_benchmark_set(location, split):
        return read_clip_benchmark_set(location, split)
    return EvalSet.load(location)


def _read_lines(path: Path, what: str) -> list[str]:
    lines = [line.strip() for line in _require(path, what).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def _classnames(option: str, folders: list[str]) -> list[str]:
    from open_clip import IMAGENET_CLASSNAMES

    is_imagenet = len(folders) == len(IMAGENET_CLASSNAMES) and all(_WNID.fullmatch(f) for f in folders)
    if option == "imagenet":
        if not is_imagenet:
            raise UsageError(f"--classnames imagenet needs the 1000 synset folders (n01440764, ...); "
                             f"found {len(folders)} folders")
        return list(IMAGENET_CLASSNAMES)
    if option == "auto":
        # Sorted synset ids are the class order open_clip's names follow.
        return list(IMAGENET_CLASSNAMES) if is_imagenet else [f.replace("_", " ") for f in folders]
    names = _read_lines(Path(option), "class-name file")
    if len(names) != len(folders):
        raise UsageError(f"{option}: {len(names)} class names for {len(folders)} class folders")
    return names


def _templates(option: str) -> list[str]:
    from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    # open_clip's templates are callables (classname -> prompt); calling them with "{}"
    # renders the format strings the evaluation-set format stores.
    if option == "openai":
        return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    if option == "simple":
        return [template("{}") for template in SIMPLE_IMAGENET_TEMPLATES]
    return _read_lines(Path(option), "template file")


def imagefolder_to_evalset(root: str | Path, out_dir: str | Path, classnames: str = "auto",
                           templates: str = "openai", name: str | None = None) -> EvalSet:
    """``classnames``: auto | imagenet | FILE (one per line); ``templates``: openai | simple | FILE."""
    root = _require(Path(root), "image folder").resolve()
    folders = sorted(path.name for path in root.iterdir() if path.is_dir())
    if not folders:
        raise UsageError(f"{root} has no class folders")
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = sorted(p for p in (root / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        images += [str(path) for path in files]
        labels += [label] * len(files)
    evalset = EvalSet(root=Path(out_dir), name=name or root.name, images=images, labels=labels,
                      classnames=_classnames(classnames, folders), templates=_templates(templates))
    evalset.save()
    return evalset
