"""Runs of every contrastive loss at optim.accum_steps = 1 and = ACCUMULATED, and their comparison.

In-process (tests/test_accumulation.py) or, for the 2-rank case, as
``torchrun --standalone --nproc_per_node=2 tests/workers/accumulation_runs.py SHARDS OUT``: every run of
:data:`RUNS` trains in one process group, one after the other, into OUT/<loss>-k<K>.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.config import load_config
from clipdro.train import train
from clipdro.train_config import TrainConfig
from tests.run_factory import train_overrides

LOSSES = ("tempnet", "sogclr", "isogclr", "clip")
ACCUMULATED = 4  # micro-batches of 2 of run_factory's per-rank batch of 8
STEPS = 3
RUNS = [(loss_name, accum_steps) for loss_name in LOSSES for accum_steps in (1, ACCUMULATED)]


def run_dir(root: Path, loss_name: str, accum_steps: int) -> Path:
    return root / f"{loss_name}-k{accum_steps}"


def train_run(shards: Path, root: Path, loss_name: str, accum_steps: int) -> None:
    """STEPS steps of ``loss_name`` at ``accum_steps``, TempNet dropout on (0.5: the replay must draw the
    same masks). optim.eps = 1e-3: Adam turns rounding-level gradients (attention key biases, whose true
    gradient is 0) into +-lr steps that differ between any two summation orders; a large eps keeps each
    update proportional to its gradient, so the comparison tests the accumulation, not that noise."""
    train(load_config(TrainConfig, None, train_overrides(
        shards, run_dir(root, loss_name, accum_steps), f"loss.name={loss_name}", f"optim.accum_steps={accum_steps}",
        "tempnet.dropout=0.5", "tempnet.num_prototypes=4", "tempnet.lr=1e-3", "optim.eps=1e-3",
        f"run.stop_after={STEPS}")))


def logged_losses(folder: Path) -> list[float]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


def assert_same_run(whole: Path, accumulated: Path) -> None:
    """The accumulated run took the whole-batch run's steps: the same loss at every step (to 1e-5 relative;
    float32 rounding of features embedded in micro-batches is ~1e-7) and, after STEPS steps, the same
    parameters and per-sample tables (see the tolerances below)."""
    assert len(logged_losses(whole)) == STEPS
    assert logged_losses(accumulated) == pytest.approx(logged_losses(whole), rel=1e-5)
    expected, actual = (load_checkpoint(list_checkpoints(folder)[-1]) for folder in (whole, accumulated))
    assert expected["step"] == actual["step"] == STEPS
    for section in ("model", "loss"):
        for key, value in expected[section].items():
            if value.is_floating_point():
                # Parameters: 3 AdamW steps of lr <= 8e-4 move a weight by <= 2.4e-3; differences in the
                # gradients' rounding (~1e-6 relative, eps = 1e-3) change that by orders of magnitude less
                # than 1e-5. Tables hold h / tau (b) and sums of exp(h / tau) up to B - 1 (s), tau down to
                # 0.01: a rounding-level 1e-6 in a similarity h is up to 1e-4 there (seen: 1.6e-5 at b = 0.27).
                torch.testing.assert_close(actual[section][key], value, atol=1e-4 if section == "loss" else 1e-5,
                                           rtol=1e-5 if section == "loss" else 0, msg=f"{section}.{key}")
            else:
                assert torch.equal(actual[section][key], value), f"{section}.{key}"


if __name__ == "__main__":
    for loss_name, accum_steps in RUNS:
        train_run(Path(sys.argv[1]), Path(sys.argv[2]), loss_name, accum_steps)
