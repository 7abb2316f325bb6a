"""The LLM training loop on a tiny GPT-2: checkpoints round-trip, resume, frozen mode, export."""

import json
import math
from pathlib import Path

import pytest
import torch

from clipdro import cli
from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.config import load_config
from clipdro.llm.config import LLMTrainConfig
from clipdro.llm.model import EXPORTED_MODEL_DIR, TempNetShape, load_lm_with_tempnet
from clipdro.llm.train import train
from tests.llm_factory import tiny_overrides, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def run(corpus, run_dir: Path, *extra: str, resume: str | None = None) -> dict:
    return train(load_config(LLMTrainConfig, None, tiny_overrides(*corpus, run_dir, *extra)), resume=resume)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_joint_run_checkpoint_round_trips_lm_and_tempnet(corpus, tmp_path, capsys):
    run_dir = tmp_path / "joint"
    final = run(corpus, run_dir, "mode=joint", "steps=2")
    state = load_checkpoint(list_checkpoints(run_dir)[-1])
    assert state["step"] == 2 and state["mode"] == "joint" and state["lm"] is not None

    # A fresh TempNet (other seed) gives other taus until the trained weights are loaded.
    logits = 3 * torch.randn(5, 257, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    fresh = TempNetShape(**state["tempnet_shape"]).build().eval()
    before = fresh(logits)
    fresh.load_state_dict(state["tempnet"])
    loaded = load_lm_with_tempnet(tempnet_checkpoint=run_dir)
    assert not torch.equal(before, fresh(logits))
    assert torch.equal(loaded.tempnet(logits), fresh(logits))

    # The reloaded LM + TempNet reproduce the in-memory models' held-out metrics from the end of training.
    assert cli.main(["llm", "eval", "--tempnet", str(run_dir)]) == 0
    reloaded = json.loads(capsys.readouterr().out)
    assert set(reloaded) == {"tokens", "documents", "perplexity", "perplexity_tempnet", "tau_mean", "dro_objective",
                             "perplexity_ci95", "perplexity_tempnet_ci95"}  # no validation files: no constant tau
    for key, value in final.items():
        assert reloaded[key] == pytest.approx(value, rel=1e-9, abs=0), key

    # Joint mode exports the trained LM with its tokenizer, loadable as a plain model folder.
    exported = load_lm_with_tempnet(model=str(run_dir / EXPORTED_MODEL_DIR))
    for key, value in exported.lm.state_dict().items():
        assert torch.equal(value, state["lm"][key]), key


def test_frozen_mode_trains_only_the_tempnet(corpus, tmp_path):
    lm_run = tmp_path / "lm"
    run(corpus, lm_run, "mode=joint", "steps=1")
    frozen_run = tmp_path / "frozen"
    frozen = (f"model.name_or_path={lm_run / EXPORTED_MODEL_DIR}", "model.architecture=null", "model.tokenizer=null",
              "mode=frozen", "steps=3")
    run(corpus, frozen_run, *frozen)
    state = load_checkpoint(list_checkpoints(frozen_run)[-1])
    assert state["lm"] is None  # the frozen LM is rebuilt from model.name_or_path, not stored again
    assert [group["name"] for group in state["optimizer"]["param_groups"]] == ["tempnet"]
    assert not (frozen_run / EXPORTED_MODEL_DIR).exists()
    loaded = load_lm_with_tempnet(tempnet_checkpoint=frozen_run)
    original = load_lm_with_tempnet(model=str(lm_run / EXPORTED_MODEL_DIR))
    for key, value in original.lm.state_dict().items():
        assert torch.equal(loaded.lm.state_dict()[key], value), key
    evals = [record["eval"] for record in records(frozen_run) if "eval" in record]
    assert [record["step"] for record in records(frozen_run) if "eval" in record] == [0, 3]
    assert evals[0]["perplexity"] == pytest.approx(evals[1]["perplexity"], rel=1e-12)  # the LM did not change


def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_run(corpus, tmp_path):
    common = ("mode=joint", "run.epochs=2", "tempnet.dropout=0.5")  # 6 steps across an epoch boundary
    full = tmp_path / "full"
    run(corpus, full, *common)
    parts = tmp_path / "parts"
    run(corpus, parts, *common, "run.stop_after=4")
    run(corpus, parts, *common, resume="latest")
    losses = {r["step"]: r["loss"] for r in records(full) if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert {r["step"]: r["loss"] for r in records(parts) if "loss" in r} == pytest.approx(losses, rel=1e-12)
    final_full, final_parts = (load_checkpoint(list_checkpoints(folder)[-1]) for folder in (full, parts))
    for section in ("tempnet", "lm"):
        for key, value in final_full[section].items():
            assert torch.equal(final_parts[section][key], value), f"{section}.{key}"


@pytest.mark.parametrize("mode, dtype", [("joint", "float32"), ("frozen", "bfloat16")])
def test_bf16_autocast_trains_with_a_float32_tempnet(corpus, tmp_path, mode, dtype):
    """amp_bf16 (the GPU setting) runs on CPU autocast too: bf16 logits, float32 loss and TempNet input."""
    final = run(corpus, tmp_path / "bf16", f"mode={mode}", f"model.dtype={dtype}", "run.precision=amp_bf16",
                "steps=2")
    assert all(map(math.isfinite, final.values()))
    state = load_checkpoint(list_checkpoints(tmp_path / "bf16")[-1])
    assert all(value.dtype == torch.float32 for value in state["tempnet"].values())
