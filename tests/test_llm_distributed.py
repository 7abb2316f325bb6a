"""2 gloo ranks holding half of each global batch reproduce the 1-process LLM run (joint mode)."""

import json
from pathlib import Path

import pytest
import torch

from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.config import load_config
from clipdro.llm.config import LLMTrainConfig
from clipdro.llm.train import train
from tests.launch import REPO_ROOT, run_torchrun
from tests.llm_factory import tiny_overrides, write_corpus


def step_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


@pytest.mark.slow  # a torchrun launch of the LLM trainer (about 15 s)
def test_two_ranks_equal_one_process(tmp_path):
    train_file, heldout_file = write_corpus(tmp_path / "corpus")
    # 3 steps, a checkpoint after each; one of the global batches holds the padded sequence.
    common = ("mode=joint", "run.epochs=1", "run.checkpoint_every=1")
    single = tmp_path / "single"
    train(load_config(LLMTrainConfig, None, tiny_overrides(train_file, heldout_file, single, *common)))
    double = tmp_path / "double"
    run_torchrun(REPO_ROOT / "tests" / "workers" / "llm_train.py",
                 *tiny_overrides(train_file, heldout_file, double, *common, "data.batch_size=2"))

    single_losses, double_losses = step_losses(single), step_losses(double)
    assert sorted(single_losses) == [1, 2, 3]
    for step, loss in single_losses.items():
        assert abs(double_losses[step] - loss) < 1e-5, step
    single_checkpoints, double_checkpoints = list_checkpoints(single), list_checkpoints(double)
    assert [path.name for path in double_checkpoints] == [path.name for path in single_checkpoints]
    for single_path, double_path in zip(single_checkpoints, double_checkpoints, strict=True):
        single_state, double_state = load_checkpoint(single_path), load_checkpoint(double_path)
        for section in ("tempnet", "lm"):
            for key, value in single_state[section].items():
                torch.testing.assert_close(double_state[section][key], value, atol=1e-5, rtol=0,
                                           msg=f"{single_path.name} {section}.{key}")
    # Both nets moved between steps 1 and 3: the runs are not comparing untouched initialisations.
    first, last = load_checkpoint(single_checkpoints[0]), load_checkpoint(single_checkpoints[-1])
    for section, key in (("tempnet", "projection.0.weight"), ("lm", "transformer.h.0.mlp.c_fc.weight")):
        assert not torch.equal(first[section][key], last[section][key]), f"{section}.{key} did not change"
