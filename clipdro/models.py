"""An open_clip model and the two TempNets as one module, so DDP sees one forward.

The TempNets read the *detached* normalised embeddings (method.md §2): their gradient
comes only from the loss's tau term, never through the encoders.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from clipdro.config import ModelConfig, TemperatureConfig, TempNetConfig, from_dict
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

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> ModelOutput:
        output = self.clip(images, tokens)
        image_features, text_features = output["image_features"], output["text_features"]
        image_tau = text_tau = None
        if self.has_tempnets:
            # TempNets run in float32 outside autocast: tau feeds exp(h / tau).
            with torch.autocast(device_type=image_features.device.type, enabled=False):
                image_tau = self.image_tempnet(image_features.detach().float())
                text_tau = self.text_tempnet(text_features.detach().float())
        return ModelOutput(image_features, text_features, output["logit_scale"], image_tau, text_tau)


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


def tower_weights(model_config: ModelConfig | dict) -> TowerWeights:
    """The tower-weight overrides of a run's ``model`` section (a ModelConfig or its dict; keys
    absent from older checkpoints' configs mean none)."""
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


def build_tempnets(model_name: str, tempnet: TempNetConfig,
                   temperature: TemperatureConfig) -> tuple[CLIPTempNet, CLIPTempNet]:
    """The image and text TempNets of a run (in that order: their random init uses the torch seed)."""
    dim = embedding_dim(model_name)
    return tuple(CLIPTempNet(dim, tempnet.num_prototypes, temperature.min, temperature.max, tempnet.dropout)
                 for _ in range(2))


@dataclass
class TrainedRun:
    """A clipdro training checkpoint loaded for use: the model plus what identifies it.

    The optimizer states are not kept (they are the bulk of a checkpoint and no consumer needs them).
    """

    checkpoint: Path  # the resolved checkpoint file
    step: int
    config: dict  # the run's resolved TrainConfig as a dict
    model: CLIPWithTempNets  # in eval mode
    eval_transform: Callable
    tokenizer: Callable
    loss_state: dict  # the loss's state_dict: per-sample tables (empty for the clip loss)

    @property
    def loss_name(self) -> str:
        return self.config["loss"]["name"]


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" (factory.py logs
    it with ``logging.warning``, i.e. on the root logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("No pretrained weights loaded for model")
                    and message.endswith("Model initialized randomly."))


def load_trained_run(checkpoint: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """A clipdro training checkpoint (file or run folder, newest) -> :class:`TrainedRun`.

    The open_clip model is rebuilt from the name in the checkpoint's config (without downloading
    pretrained weights: the checkpoint has them all), then the TempNets if the run had them.
    open_clip's "initialized randomly" warning is silenced for that build only: it is false here,
    the checkpoint's weights are loaded right after.
    """
    from clipdro.checkpoint import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    config, weights = state.get("config"), state.get("model")
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict) and "name" in config["model"]
            and isinstance(weights, dict) and any(key.startswith("clip.") for key in weights) and "step" in state):
        # e.g. an LLM run's checkpoint or an exported TempNets file
        raise UsageError(f"{path}: not a clipdro CLIP training checkpoint (format {state.get('format')!r})")
    model_config = config["model"]
    # Every weight comes from the checkpoint: no pretrained tag, no base tower weights to download.
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        clip, _, eval_transform, tokenizer = create_clip(model_config["name"], pretrained=None,
                                                         pretrained_image=False, pretrained_text=False,
                                                         device="cpu", towers=tower_weights(model_config),
                                                         load_tower_weights=False)
    finally:
        logging.getLogger().removeFilter(quiet)
    tempnets = (None, None)
    if any(key.startswith("image_tempnet.") for key in state["model"]):
        tempnets = build_tempnets(model_config["name"], from_dict(TempNetConfig, config["tempnet"]),
                                  from_dict(TemperatureConfig, config["temperature"]))
    model = CLIPWithTempNets(clip, *tempnets)
    model.load_state_dict(state["model"])
    return TrainedRun(checkpoint=path, step=int(state["step"]), config=config, model=model.to(device).eval(),
                      eval_transform=eval_transform, tokenizer=tokenizer, loss_state=state.get("loss") or {})


def load_trained_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """A clipdro training checkpoint (file or run folder) -> (model, eval transform, tokenizer, config dict)."""
    run = load_trained_run(checkpoint, device)
    return run.model, run.eval_transform, run.tokenizer, run.config
