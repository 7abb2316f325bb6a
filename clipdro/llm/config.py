"""Typed configuration of an LLM TempNet run (`clipdro llm train`), loaded like every clipdro config.

``load_config(LLMTrainConfig, "configs/llm_demo.yaml", ["loss.rho=3.5"])``: dataclass defaults
<- YAML <- dotted overrides (clipdro.config). The run section (folder, epochs, precision, seed,
logging, checkpoints) and the LM optimizer section are the CLIP trainer's own dataclasses.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from clipdro.config import OptimConfig, RunConfig
from clipdro.errors import UsageError


@dataclasses.dataclass
class LMModelConfig:
    # Exactly one of the two: pretrained weights (a local folder, or a hub name when the network
    # is there), or transformers config keys with a model_type for a randomly initialised model.
    name_or_path: str | None = None
    architecture: dict[str, Any] | None = None  # e.g. {model_type: gpt2, n_layer: 2, ...}; vocab_size defaults
    tokenizer: str | None = None  # "byte", a folder or hub name; default: name_or_path
    dtype: typing.Literal["float32", "bfloat16"] = "float32"  # weight dtype; bfloat16 halves a frozen 7B LM

    def validate(self) -> None:
        if (self.name_or_path is None) == (self.architecture is None):
            raise UsageError("model: set exactly one of model.name_or_path and model.architecture")
        if self.architecture is not None and "model_type" not in self.architecture:
            raise UsageError("model.architecture needs a model_type (for example gpt2 or llama)")
        if self.name_or_path is None and self.tokenizer is None:
            raise UsageError("model.tokenizer is required with model.architecture (e.g. byte)")


@dataclasses.dataclass
class LMDataConfig:
    # .txt files (one document each) or .jsonl files (one document per line, in text_field);
    # "builtin:pydoc_topics" is the English help text that ships with Python (offline demo).
    train: list[str] = dataclasses.field(default_factory=list)
    eval: list[str] = dataclasses.field(default_factory=list)  # held-out files; empty: see eval_fraction
    eval_fraction: float = 0.0  # without eval files: hold out this tail of the packed training stream
    # Held-out files for choosing constants without touching data.eval: `clipdro llm eval` picks the LM's
    # best constant tau here, then reports it on data.eval. Never trained on.
    validation: list[str] = dataclasses.field(default_factory=list)
    text_field: str = "text"
    seq_len: int = 512  # tokens per packed sequence
    batch_size: int = 8  # sequences per device; the global batch is batch_size * world size
    seed: int = 0  # order of sequences in each epoch (identical on every rank)

    def validate(self) -> None:
        if not self.train:
            raise UsageError("data.train: give at least one .txt/.jsonl file (or builtin:pydoc_topics)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UsageError(f"data.eval_fraction must lie in [0, 1), got {self.eval_fraction}")
        if self.seq_len < 2 or self.batch_size < 1:
            raise UsageError("data.seq_len must be >= 2 and data.batch_size >= 1")


@dataclasses.dataclass
class LMTempNetConfig:
    tau_min: float = 0.01  # method.md §3: [0.01, 2.0] for a frozen LLaMA-style LM, [0.5, 5.0] for GPT-2
    tau_max: float = 2.0
    hidden: int = 256
    dropout: float = 0.5
    lr: float = 1e-4  # constant (the reference LLaMA-2 run used lr = min_lr = 1e-4)
    weight_decay: float = 0.0

    def validate(self) -> None:
        if not 0 < self.tau_min < self.tau_max:
            raise UsageError(f"tempnet: need 0 < tau_min < tau_max, got {self.tau_min}, {self.tau_max}")


@dataclasses.dataclass
class LMLossConfig:
    rho: float = 8.0  # must be < log(V), V = the LM's vocabulary size; checked before the model loads


@dataclasses.dataclass
class LMEvalConfig:
    every_steps: int = 0  # 0: only before the first and after the last step
    max_sequences: int | None = None  # cap on held-out sequences per evaluation
    batch_size: int = 8


@dataclasses.dataclass
class LLMTrainConfig:
    model: LMModelConfig
    data: LMDataConfig
    # frozen: only TempNet trains (the LLaMA-2 setting; the LM runs in eval mode without gradients).
    # joint: LM and TempNet train together (the GPT-2 setting); TempNet has its own param group and lr.
    # plain: the LM alone under cross-entropy (tau = 1), the baseline of a joint run (no TempNet, no rho).
    mode: typing.Literal["frozen", "joint", "plain"] = "frozen"
    # Length of the run in optimizer steps (LM runs are usually sized in steps, and a demo needs
    # far less than an epoch); None: run.epochs full epochs. The LM's cosine schedule spans it.
    steps: int | None = None
    loss: LMLossConfig = dataclasses.field(default_factory=LMLossConfig)
    tempnet: LMTempNetConfig = dataclasses.field(default_factory=LMTempNetConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)  # the LM's AdamW (joint mode)
    eval: LMEvalConfig = dataclasses.field(default_factory=LMEvalConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"steps must be >= 1, got {self.steps}")
        if self.mode != "frozen" and self.model.dtype == "bfloat16":
            raise UsageError(f"model.dtype=bfloat16 is for a frozen LM; train in {self.mode} mode in float32 weights "
                             "with run.precision=amp_bf16")
