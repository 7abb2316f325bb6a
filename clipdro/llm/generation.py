"""Temperature-aware sampling: each step's next-token logits are divided by TempNet's tau for them.

:class:`TempNetLogitsProcessor` plugs into ``model.generate(do_sample=True, logits_processor=...)``.
transformers runs user processors after its own non-sampling processors (repetition penalty,
min length, bad words) and before the sampling warpers (temperature, top-k, top-p), so the
tempered logits are what top-k/top-p and the sampler see. :func:`generate` disables top-k and
top-p by default, as the paper sampled at temperature 1 / top-p 1 on top of TempNet's tau.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from clipdro.llm.model import predict_tau
from clipdro.llm.tokenizer import TextTokenizer
from clipdro.tempnet import LMTempNet


class TempNetLogitsProcessor(LogitsProcessor):
    """scores [batch, V] -> scores / tau[:, None], tau = TempNet(scores) for the last position.

    Entries an earlier processor masked with -inf (min length, bad words) stay -inf; for
    TempNet's input only they are replaced by the row's smallest finite logit, since TempNet
    was trained on unmasked logits and its L2 normalisation needs finite values.
    ``taus`` keeps each step's [batch] temperatures when ``record`` is set.
    """

    def __init__(self, tempnet: LMTempNet, record: bool = False):
        if tempnet.training:
            raise ValueError("put the TempNet in eval mode (dropout off) before generating")
        self.tempnet = tempnet
        self.record = record
        self.taus: list[torch.Tensor] = []

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        finite = torch.isfinite(scores)
        tempnet_input = scores
        if not bool(finite.all()):
            row_min = torch.where(finite, scores, torch.inf).amin(dim=-1, keepdim=True)
            tempnet_input = torch.where(finite, scores, row_min)
        tau = predict_tau(self.tempnet, tempnet_input).to(scores.dtype)
        if self.record:
            self.taus.append(tau)
        return scores / tau[:, None]


@dataclass
class Generation:
    text: str  # the prompt's continuation only
    token_ids: list[int]
    taus: list[float] | None  # one per generated token when a TempNet was used


@torch.no_grad()
def generate(lm: PreTrainedModel, tokenizer: TextTokenizer, prompt: str, tempnet: LMTempNet | None = None,
             max_new_tokens: int = 64, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> Generation:
    """Sample a continuation of ``prompt`` (plain sampling without a TempNet, for comparison)."""
    device = next(lm.parameters()).device
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=True) or [tokenizer.eos_token_id]
    input_ids = torch.tensor([prompt_ids], device=device)
    processor = TempNetLogitsProcessor(tempnet, record=True) if tempnet is not None else None
    torch.manual_seed(seed)
    output = lm.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True, max_new_tokens=max_new_tokens,
        top_k=top_k, top_p=top_p, temperature=1.0, pad_token_id=tokenizer.eos_token_id,
        logits_processor=LogitsProcessorList([processor] if processor else []))
    new_ids = output[0, len(prompt_ids):].tolist()
    taus = [float(step_tau[0]) for step_tau in processor.taus][: len(new_ids)] if processor else None
    return Generation(tokenizer.decode(new_ids), new_ids, taus)
