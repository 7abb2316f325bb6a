"""An open_clip model and the two TempNets as one module, so DDP sees one forward.

The TempNets read the *detached* normalised embeddings (method.md §2): their gradient
comes only from the loss's tau term, never through the encoders.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from clipdro.errors import UsageError
from clipdro.model_configs import register_model_configs
from clipdro.tempnet import CLIPTempNet
from clipdro.towers import TowerWeights, load_image_tower, resolve_source

log = logging.getLogger(__name__)


@dataclass
class ModelOutput:
    image_features: torch.Tensor  # [n, d], L2-normalised
    text_features: torch.Tensor  # [n, d], L2-normalised
    logit_scale: torch.Tensor  # open_clip's exp(logit_scale) = 1 / tau, a scalar
    image_tau: torch.Tensor | None  # [n] from the image TempNet, None without TempNets
    text_tau: torch.Tensor | None


class CLIPWithTempNets(nn.Module):
    def __init__(self, clip: nn.Module, image_tempnet: CLIPTempNet | None = None,
                 text_tempnet: CLIPTempNet | None = None):
        super().__init__()
        self.clip = clip
        self.image_tempnet = image_tempnet
        self.text_tempnet = text_tempnet

    @property
    def has_tempnets(self) -> bool:
        return self.image_tempnet is not None

    def tempnet_parameters(self) -> list[nn.Parameter]:
        if not self.has_tempnets:
            return []
        return [*self.image_tempnet.parameters(), *self.text_tempnet.parameters()]

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, with_temperatures: bool = True) -> ModelOutput:
        """The towers' normalised features, and the TempNets' temperatures of them unless
        ``with_temperatures`` is False (the micro-batches of an accumulated step, whose temperatures come
        from :meth:`temperatures_of` on the whole batch). The flag goes through DDP's forward, so the
        micro-batches are embedded by the DDP-wrapped module itself."""
        output = self.clip(images, tokens)
        image_features, text_features = output["image_features"], output["text_features"]
        if not with_temperatures:
            return ModelOutput(image_features, text_features, output["logit_scale"], None, None)
        return self._with_temperatures(image_features, text_features, output["logit_scale"])

    def temperatures_of(self, image_features: torch.Tensor, text_features: torch.Tensor) -> ModelOutput:
        """The output :meth:`forward` would give for these (already computed) features: the TempNets'
        temperatures of them and open_clip's exp(logit_scale), both with autograd to their parameters."""
        return self._with_temperatures(image_features, text_features, self.clip.logit_scale.exp())

    def _with_temperatures(self, image_features: torch.Tensor, text_features: torch.Tensor,
                           logit_scale: torch.Tensor) -> ModelOutput:
        image_tau = text_tau = None
        if self.has_tempnets:
            # TempNets run in float32 outside autocast: tau feeds exp(h / tau).
            with torch.autocast(device_type=image_features.device.type, enabled=False):
                image_tau = self.image_tempnet(image_features.detach().float())
                text_tau = self.text_tempnet(text_features.detach().float())
        return ModelOutput(image_features, text_features, logit_scale, image_tau, text_tau)


def resolve_model_name(name: str) -> str:
    """An open_clip model name, or the stem of a JSON config file (registered on the fly)."""
    register_model_configs()
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise UsageError(f"model config file not found: {path}")
        open_clip.add_model_config(path)
        return path.stem
    if name not in open_clip.list_models():
        raise UsageError(f"open_clip does not know the model {name!r} (see open_clip.list_models(), "
                         f"or pass a JSON config file)")
    return name


def create_clip(name: str, pretrained: str | None = None, pretrained_image: bool = False,
                pretrained_text: bool = True, device: str | torch.device = "cpu",
                towers: TowerWeights | None = None, load_tower_weights: bool = True):
    """(model, train transform, eval transform, tokenizer) from open_clip, offline unless asked.

    ``pretrained_image`` / ``pretrained_text`` load a timm / Hugging Face tower's own base weights
    (open_clip 3.3 overrides the JSON config's ``timm_model_pretrained`` / ``hf_model_pretrained``
    with them); from a hub they need network. Local tower weights (clipdro.towers) come from the
    model config's ``clipdro_towers`` section, or ``towers`` where it sets a source; with
    ``load_tower_weights=False`` only their architecture and tokenizer are used (a checkpoint
    supplies the weights).
    """
    name = resolve_model_name(name)
    towers = prepare_towers(name, towers or TowerWeights())
    if towers.image is not None and load_tower_weights:
        resolve_source(towers.image)  # a missing file fails here, before any model is built
    load_text = pretrained_text and load_tower_weights if towers.text is not None else pretrained_text
    try:
        with quiet_transformers():
            model, train_transform, eval_transform = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, pretrained_image=pretrained_image, pretrained_text=load_text,
                image_mean=towers.image_mean, image_std=towers.image_std, device=device, output_dict=True)
    except RuntimeError as error:  # unknown pretrained tag, missing file
        raise UsageError(f"model {name} with pretrained={pretrained!r}: {error}") from None
    if towers.image is not None and load_tower_weights:
        trunk = getattr(model.visual, "trunk", None)
        if trunk is None:
            raise UsageError(f"model {name}: image tower weights ({towers.image}) need a timm image tower")
        count = load_image_tower(trunk, towers.image, towers.image_key_map)
        log.info("image tower: %d tensors from %s", count, towers.image)
    return model, train_transform, eval_transform, open_clip.get_tokenizer(name)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bar and load report while a text tower loads say nothing useful
    here (open_clip never uses BERT's pooler, which the report lists as unexpected): mute them."""
    try:
        import transformers
    except ImportError:
        yield
        return
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def tower_weights(model_config: Any) -> TowerWeights:
    """The tower-weight overrides of a run's ``model`` section (clipdro.train_config.ModelConfig or
    its dict; keys absent from older checkpoints' configs mean none)."""
    get = model_config.get if isinstance(model_config, dict) else lambda key: getattr(model_config, key)
    return TowerWeights(image=get("image_weights"), image_key_map=get("image_weights_key_map") or "names",
                        text=get("text_weights"))


def _floats(values: list | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(value) for value in values)


def prepare_towers(name: str, overrides: TowerWeights) -> TowerWeights:
    """The tower sources of model ``name`` (its config's ``clipdro_towers``, then ``overrides``);
    registers with open_clip a config without that section and with the text tower pointed at
    its local folder. Runs before every model creation (a later registration rescans the JSON)."""
    config = open_clip.get_model_config(name)  # a copy
    section = config.pop("clipdro_towers", {})
    towers = TowerWeights(image=overrides.image or section.get("image_weights"),
                          image_key_map=overrides.image_key_map if overrides.image else
                          section.get("image_key_map", "names"),
                          text=overrides.text or section.get("text_weights"),
                          image_mean=_floats(section.get("image_mean")), image_std=_floats(section.get("image_std")))
    if towers.text is not None:
        if "hf_model_name" not in config["text_cfg"]:
            raise UsageError(f"model {name}: text tower weights ({towers.text}) need a Hugging Face text tower "
                             f"(text_cfg.hf_model_name)")
        folder = str(resolve_source(towers.text))
        config["text_cfg"].update(hf_model_name=folder, hf_tokenizer_name=folder)
    if section or towers.text is not None:
        # open_clip creates models by registered name only; its registry is this module-level dict.
        open_clip.factory._MODEL_CONFIGS[name] = config
    return towers


def embedding_dim(name: str) -> int:
    """The joint embedding width of a (resolved) open_clip model name: the TempNets' input size."""
    return int(open_clip.get_model_config(resolve_model_name(name))["embed_dim"])


def build_tempnets(model_name: str, num_prototypes: int, tau_min: float, tau_max: float,
                   dropout: float) -> tuple[CLIPTempNet, CLIPTempNet]:
    """The image and text TempNets of model ``model_name`` (in that order: their random init uses the
    torch seed), each mapping an embedding to a temperature in [tau_min, tau_max]."""
    dim = embedding_dim(model_name)
    return tuple(CLIPTempNet(dim, num_prototypes, tau_min, tau_max, dropout) for _ in range(2))
