"""A finished (or checkpointed) CLIP training run loaded for use: evaluation, export, reports.

This reads what the CLIP trainer writes (its checkpoint payload and resolved config), so it lives
beside the trainer, not in the model library (:mod:`clipdro.models`), which knows no run or config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from clipdro.checkpoint import load_checkpoint, resolve_checkpoint
from clipdro.config import from_dict
from clipdro.errors import UsageError
from clipdro.losses.config import TemperatureConfig
from clipdro.models import CLIPWithTempNets, build_tempnets, create_clip, tower_weights
from clipdro.train_config import TempNetConfig


@dataclass
class TrainedRun:
    """A clipdro training checkpoint loaded for use: the model plus what identifies it.

    The optimizer states are not kept (they are the bulk of a checkpoint and no consumer needs them).
    """

    checkpoint: Path  # the resolved checkpoint (a step_N folder, or a single file of earlier releases)
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
        tempnet = from_dict(TempNetConfig, config["tempnet"])  # older configs: absent keys take defaults
        temperature = from_dict(TemperatureConfig, config["temperature"])
        tempnets = build_tempnets(model_config["name"], tempnet.num_prototypes, temperature.min, temperature.max,
                                  tempnet.dropout)
    model = CLIPWithTempNets(clip, *tempnets)
    model.load_state_dict(state["model"])
    return TrainedRun(checkpoint=path, step=int(state["step"]), config=config, model=model.to(device).eval(),
                      eval_transform=eval_transform, tokenizer=tokenizer, loss_state=state.get("loss") or {})


def load_trained_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """A clipdro training checkpoint (file or run folder) -> (model, eval transform, tokenizer, config dict)."""
    run = load_trained_run(checkpoint, device)
    return run.model, run.eval_transform, run.tokenizer, run.config
