"""Tiny LLM runs for the tests: a 2-layer, 32-wide GPT-2 over the byte tokenizer (V = 257), no dropout,
so a run is deterministic and any rank split of a global batch must reproduce the 1-process run."""

from __future__ import annotations

import json
from pathlib import Path

TINY_GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64, resid_pdrop: 0.0, " \
            "embd_pdrop: 0.0, attn_pdrop: 0.0}"

# Packed with seq_len 17 these make 12 sequences (3 global batches of 4, none dropped); the last
# holds 8 real targets and 9 padded ones, so ranks see different token counts.
DOCUMENTS = ["The temperature of a softmax decides how sharp a language model's next-token distribution is.",
             "A network that predicts one temperature per token can cool confident tokens and warm uncertain ones."]
SEQ_LEN = 17
HELDOUT = "A temperature per token: cool the confident, warm the uncertain."


def write_corpus(folder: Path) -> tuple[Path, Path]:
    """(train.jsonl with the documents, heldout.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.jsonl"
    train.write_text("".join(json.dumps({"text": document}) + "\n" for document in DOCUMENTS))
    heldout = folder / "heldout.txt"
    heldout.write_text(HELDOUT)
    return train, heldout


def tiny_overrides(train: Path, heldout: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"model.architecture={TINY_GPT2}", "model.tokenizer=byte", f"data.train=[{train}]",
            f"data.eval=[{heldout}]", f"data.seq_len={SEQ_LEN}", "data.batch_size=4", "loss.rho=3.0",
            "tempnet.dropout=0.0", "tempnet.hidden=16", "tempnet.lr=1e-2", "tempnet.tau_min=0.5",
            "tempnet.tau_max=3.0", "optim.lr=1e-3", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
            "run.log_every=1", *extra]
