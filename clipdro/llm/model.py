"""Causal LMs from transformers, the TempNet beside them, and the checkpoint that ties them together.

The LM comes from ``AutoModelForCausalLM``: pretrained weights (a local folder, or a hub name
when the network is there) or a transformers config for random initialisation. The TempNet is
a :class:`clipdro.tempnet.LMTempNet` over the LM's vocabulary; it only ever sees detached logits.

The vocabulary size V that matters (TempNet input width, rho < log V) is the LM's output width,
which may exceed the tokenizer's (GPT-2 pads 50,257 to 50,304): :func:`resolve_lm_config` reads
it from the config alone, so a bad rho is refused before a 7B model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from clipdro.checkpoint import load_checkpoint, resolve_checkpoint
from clipdro.config import from_dict
from clipdro.errors import UsageError
from clipdro.llm.config import LLMTrainConfig, LMModelConfig
from clipdro.llm.tokenizer import TextTokenizer, load_tokenizer
from clipdro.tempnet import LMTempNet

CHECKPOINT_FORMAT = "clipdro-llm-checkpoint/1"
EXPORTED_MODEL_DIR = "model"  # run folder / model: the trained LM and its tokenizer (joint mode)


def load_model_tokenizer(config: LMModelConfig) -> TextTokenizer:
    return load_tokenizer(config.tokenizer or config.name_or_path)


def resolve_lm_config(config: LMModelConfig, tokenizer: TextTokenizer) -> PretrainedConfig:
    """The transformers config of the LM (no weights loaded); a random-init config without a
    vocab_size gets the tokenizer's."""
    if config.architecture is not None:
        options = dict(config.architecture)
        model_type = options.pop("model_type")
        options.setdefault("vocab_size", tokenizer.vocab_size)
        # GPT-2's config defaults point at id 50256; use the tokenizer's end-of-text instead.
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            options.setdefault(key, tokenizer.eos_token_id)
        try:
            lm_config = AutoConfig.for_model(model_type, **options)
        except ValueError as error:
            raise UsageError(f"model.architecture: {error}") from None
    else:
        try:
            lm_config = AutoConfig.from_pretrained(config.name_or_path)
        except OSError as error:
            raise UsageError(f"cannot load model {config.name_or_path!r}: {str(error).splitlines()[0]}") from None
    if lm_config.vocab_size < tokenizer.vocab_size:
        raise UsageError(f"the LM's vocabulary ({lm_config.vocab_size}) is smaller than the tokenizer's "
                         f"({tokenizer.vocab_size})")
    return lm_config


def build_causal_lm(config: LMModelConfig, lm_config: PretrainedConfig) -> PreTrainedModel:
    """Random initialisation from ``lm_config`` (uses the current torch seed) or pretrained weights."""
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    if config.architecture is not None:
        return AutoModelForCausalLM.from_config(lm_config, dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(config.name_or_path, config=lm_config, dtype=dtype)


def max_positions(lm_config: PretrainedConfig) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(lm_config, key, None)
        if isinstance(value, int):
            return value
    return None


@dataclass(frozen=True)
class TempNetShape:
    """Everything needed to rebuild an :class:`LMTempNet` before loading its weights."""

    vocab_size: int
    hidden: int
    tau_min: float
    tau_max: float
    dropout: float

    def build(self) -> LMTempNet:
        return LMTempNet(self.vocab_size, self.hidden, self.tau_min, self.tau_max, self.dropout)


@dataclass
class LoadedLM:
    lm: PreTrainedModel
    tokenizer: TextTokenizer
    tempnet: LMTempNet | None  # None without a checkpoint, or for a plain run's
    config: dict[str, Any] | None  # the training config of the checkpoint, when one was given


def load_lm_with_tempnet(model: str | None = None, tempnet_checkpoint: str | Path | None = None,
                         device: str | torch.device = "cpu") -> LoadedLM:
    """An LM, its tokenizer and optionally a trained TempNet, in eval mode, for generation and evaluation.

    ``tempnet_checkpoint`` is a checkpoint (folder or file) or run folder of `clipdro llm train` (of a plain run:
    no TempNet). Without ``model`` the LM is the one that run used: its config's model section, with
    the trained LM weights from the checkpoint in joint and plain mode. ``model`` (a folder or hub
    name) overrides that LM.
    """
    if model is None and tempnet_checkpoint is None:
        raise UsageError("give --model, --tempnet or both")
    state = None
    if tempnet_checkpoint is not None:
        state = load_checkpoint(resolve_checkpoint(tempnet_checkpoint), map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UsageError(f"{tempnet_checkpoint}: not a clipdro llm checkpoint")
    if model is not None:
        model_config = LMModelConfig(name_or_path=model)
    else:
        model_config = from_dict(LLMTrainConfig, state["config"]).model
    tokenizer = load_model_tokenizer(model_config)
    lm_config = resolve_lm_config(model_config, tokenizer)
    lm = build_causal_lm(model_config, lm_config)
    if model is None and state["lm"] is not None:
        lm.load_state_dict(state["lm"])
    tempnet = None
    if state is not None and state["tempnet"] is not None:  # a plain run's checkpoint has no TempNet
        shape = TempNetShape(**state["tempnet_shape"])
        if shape.vocab_size != lm_config.vocab_size:
            raise UsageError(f"the TempNet was trained for a vocabulary of {shape.vocab_size}, the LM has "
                             f"{lm_config.vocab_size}")
        tempnet = shape.build()
        tempnet.load_state_dict(state["tempnet"])
        tempnet = tempnet.to(device).eval()
    return LoadedLM(lm.to(device).eval(), tokenizer, tempnet, state["config"] if state else None)



def predict_tau(tempnet: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Per-token tau from the LM's logits by an LMTempNet (or its DDP wrapper). The logits are
    detached (TempNet's gradient must not reach the LM) and float32 (the L2 normalisation over
    V entries; a bf16 LM meeting a float32 TempNet)."""
    return tempnet(logits.detach().float())


def lm_logits(lm: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, L, V] of packed sequences (an LM or its DDP wrapper). Every position is attended:
    documents are separated by end-of-text, a real token, and the only padding sits at the right
    end, which causal attention never shows to earlier positions. The explicit all-ones mask also
    tells transformers that the pad id inside the data is not padding."""
    return lm(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
