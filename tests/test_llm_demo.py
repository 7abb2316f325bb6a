"""The offline demo, shortened: a tiny LM learns pydoc_data.topics, then a TempNet trained on the
frozen LM lowers the held-out DRO objective, and generation with its logits processor works."""

import json
from pathlib import Path

from clipdro import cli
from clipdro.llm.model import EXPORTED_MODEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
SHORT = ["data.seq_len=32", "data.batch_size=8", "eval.max_sequences=32", "run.log_every=10",
         "model.architecture={model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 32}"]


def held_out_evals(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["eval"] for record in lines if "eval" in record]


def test_demo_stages_lower_the_held_out_dro_objective(tmp_path, capsys):
    lm_run, tempnet_run = tmp_path / "lm", tmp_path / "tempnet"
    assert cli.main(["llm", "train", "--config", str(REPO_ROOT / "configs" / "llm_demo.yaml"), *SHORT, "steps=40",
                     f"run.output_dir={tmp_path}", "run.name=lm"]) == 0
    assert cli.main(["llm", "train", "--config", str(REPO_ROOT / "configs" / "llm_demo_frozen.yaml"),
                     *SHORT[:4], "steps=40", f"model.name_or_path={lm_run / EXPORTED_MODEL_DIR}",
                     f"run.output_dir={tmp_path}", "run.name=tempnet"]) == 0
    before, after = held_out_evals(tempnet_run)
    assert after["dro_objective"] < before["dro_objective"] - 0.05, (before, after)
    assert after["perplexity"] == before["perplexity"]  # frozen: only the TempNet changed
    capsys.readouterr()
    assert cli.main(["llm", "generate", "--tempnet", str(tempnet_run), "--prompt", "The", "--max-new-tokens", "8",
                     "--show-tau"]) == 0
    assert capsys.readouterr().out.startswith("The")
