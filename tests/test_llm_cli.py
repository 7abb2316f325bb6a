"""`clipdro llm ...`: start-up refusals (exit 2, one line), generation output, transformers stays optional."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipdro import cli
from clipdro.config import load_config
from clipdro.llm.config import LLMTrainConfig
from clipdro.llm.train import train
from tests.llm_factory import tiny_overrides, write_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_rho_at_or_above_log_vocabulary_is_refused_at_start_up(tmp_path, capsys, monkeypatch):
    # The demo's byte vocabulary has V = 257, log V = 5.549.
    monkeypatch.chdir(REPO_ROOT)  # the demo config names its corpus relative to the repository
    assert cli.main(["llm", "train", "--config", "configs/llm_demo.yaml", "loss.rho=5.6",
                     f"run.output_dir={tmp_path}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "rho=5.6" in lines[0] and "log(257)" in lines[0]
    assert not any(tmp_path.iterdir()), "nothing may be written before the check"


@pytest.mark.parametrize("argv, message", [
    (["llm", "fly"], "unknown subcommand"),
    (["llm", "train", "--config", "configs/llm_demo.yaml", "mode=sideways"], "mode"),
    (["llm", "train", "--config", "configs/llm_demo.yaml", "model.name_or_path=x"], "exactly one"),
    (["llm", "generate", "--prompt", "hi"], "--model, --tempnet"),
    (["llm", "train", "--config", "configs/llm_demo.yaml", "data.train=[/nonexistent/corpus.txt]"],
     "data file not found: /nonexistent/corpus.txt"),
    (["llm", "train", "--config", "configs/llm_demo.yaml", "model.architecture.n_positions=64"],
     "data.seq_len=128 exceeds the LM's 64 positions"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_generate_prints_the_continuation_and_per_token_tau(tmp_path, capsys):
    train_file, heldout_file = write_corpus(tmp_path / "corpus")
    run_dir = tmp_path / "run"
    train(load_config(LLMTrainConfig, None, tiny_overrides(train_file, heldout_file, run_dir, "mode=joint",
                                                           "steps=1")))
    capsys.readouterr()
    assert cli.main(["llm", "generate", "--tempnet", str(run_dir), "--prompt", "The temperature",
                     "--max-new-tokens", "5", "--show-tau"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("The temperature")
    header = out.index("token\ttau")
    taus = [float(line.rsplit("\t", 1)[1]) for line in out[header + 1:]]
    assert 1 <= len(taus) <= 5 and all(0.5 <= tau <= 3.0 for tau in taus)


def test_core_package_imports_and_llm_command_fails_cleanly_without_transformers():
    # One process: `import transformers` raises ImportError, the core package imports, then the LLM command.
    completed = run_python("import sys; sys.modules['transformers'] = None\n"
                           "import clipdro, clipdro.losses, clipdro.tempnet, clipdro.train\n"
                           "assert 'clipdro.llm' not in sys.modules\n"
                           "from clipdro.cli import main\n"
                           "sys.exit(main(['llm', 'train', '--config', 'configs/llm_demo.yaml']))")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == ["clipdro llm: error: clipdro llm needs transformers: "
                                                     "pip install 'clipdro[llm]'"]
