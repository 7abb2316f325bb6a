"""`clipdro llm eval` / `compare`: the plain baseline, the best constant tau, document bootstrap intervals."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from clipdro import cli
from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.config import load_config
from clipdro.llm.config import LLMTrainConfig
from clipdro.llm.data import load_packed
from clipdro.llm.evaluation import best_constant_tau, heldout_sums
from clipdro.llm.model import EXPORTED_MODEL_DIR, load_lm_with_tempnet
from clipdro.llm.results import (
    RESULT_FORMAT,
    bootstrap_perplexity,
    compare_files,
    linearised_perplexity,
    paired_difference,
)
from clipdro.llm.tokenizer import ByteTokenizer
from clipdro.llm.train import train
from tests.llm_factory import tiny_overrides, write_corpus

# Three held-out documents of different lengths, so per-document sums and resampling matter.
HELDOUT_DOCUMENTS = ["Cool the confident tokens.", "Warm the uncertain ones, gently and per token.", "Temperature."]
VALIDATION_DOCUMENTS = ["A separate split picks the constant.", "It is never the test split."]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A plain and a joint run of the same seed (4 steps each) on the tiny corpus."""
    folder = tmp_path_factory.mktemp("llm-eval")
    train_file, _ = write_corpus(folder / "corpus")
    heldout = write_jsonl(folder / "corpus" / "test.jsonl", HELDOUT_DOCUMENTS)
    validation = write_jsonl(folder / "corpus" / "valid.jsonl", VALIDATION_DOCUMENTS)
    result = {"heldout": heldout, "validation": validation}
    for mode in ("plain", "joint"):
        run_dir = folder / mode
        overrides = tiny_overrides(train_file, heldout, run_dir, f"mode={mode}", "steps=4",
                                   f"data.validation=[{validation}]")
        train(load_config(LLMTrainConfig, None, overrides))
        result[mode] = run_dir
    return result


def eval_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["eval"] for line in lines if "eval" in json.loads(line)]


def test_plain_mode_trains_the_lm_alone_from_the_joint_runs_initial_weights(runs):
    state = load_checkpoint(list_checkpoints(runs["plain"])[-1])
    assert state["mode"] == "plain" and state["tempnet"] is None and state["tempnet_shape"] is None
    assert [group["name"] for group in state["optimizer"]["param_groups"]] == ["lm", "lm"]
    assert (runs["plain"] / EXPORTED_MODEL_DIR).is_dir()
    plain, joint = eval_records(runs["plain"]), eval_records(runs["joint"])
    assert plain[0]["perplexity"] == joint[0]["perplexity"]  # same seed: the same initial LM
    assert plain[-1]["perplexity"] < plain[0]["perplexity"]  # cross-entropy training lowers perplexity at tau = 1
    assert "perplexity_tempnet" not in plain[-1] and "perplexity_tempnet" in joint[-1]
    loaded = load_lm_with_tempnet(tempnet_checkpoint=runs["plain"])
    assert loaded.tempnet is None
    for key, value in loaded.lm.state_dict().items():
        assert torch.equal(value, state["lm"][key]), key


def test_plain_mode_needs_no_rho():
    config = load_config(LLMTrainConfig, None, ["mode=plain", "model.architecture={model_type: gpt2}",
                                                "model.tokenizer=byte", "data.train=[x.txt]", "loss.rho=99"])
    from clipdro.llm.train import check_lm

    check_lm(config)  # rho = 99 > log 257 would be refused in joint or frozen mode


def test_best_constant_tau_minimises_the_validation_cross_entropy(runs):
    lm = load_lm_with_tempnet(tempnet_checkpoint=runs["joint"]).lm
    validation = load_packed([str(runs["validation"])], ByteTokenizer(), seq_len=17)
    best = best_constant_tau(lm, validation, (0.02, 2.0), grid_points=49)
    assert not best.at_range_edge and 0.02 < best.tau < 2.0

    def mean_ce(tau: float) -> float:
        sums = heldout_sums(lm, None, validation, None, constant_tau=tau)
        return sums.total("cross_entropy_constant_tau") / sums.total("tokens")

    at_best = mean_ce(best.tau)
    # The interpolated optimum beats every point of a 10x finer grid around it to within second order.
    for factor in np.linspace(0.9, 1.1, 21):
        assert at_best <= mean_ce(best.tau * factor) + 1e-6
    assert math.exp(at_best) <= best.validation_perplexity + 1e-9  # the reported grid value is the best grid point's
    assert best.validation_tokens == int((validation.targets != -100).sum())
    narrow = best_constant_tau(lm, validation, (0.005, 0.5 * best.tau), grid_points=9)
    assert narrow.at_range_edge and narrow.tau == pytest.approx(0.5 * best.tau)


def test_eval_reports_the_three_perplexities_with_document_intervals(runs, tmp_path, capsys):
    output = tmp_path / "joint.json"
    assert cli.main(["llm", "eval", "--run", str(runs["joint"]), "--tau-range", "0.02", "2",
                     "--bootstrap", "2000", "--output", str(output)]) == 0
    metrics = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    record = json.loads(output.read_text())
    assert record["metrics"] == metrics and record["validation"] == [str(runs["validation"])]
    assert metrics["documents"] == len(HELDOUT_DOCUMENTS)
    assert set(record["per_document"]) == {"tokens", "cross_entropy", "cross_entropy_constant_tau",
                                           "cross_entropy_tempnet", "tau", "dro"}
    tokens = np.array(record["per_document"]["tokens"])
    # bytes + end-of-text per document; the stream's first token is never a target
    assert tokens.tolist() == [len(text) + 1 - (index == 0) for index, text in enumerate(HELDOUT_DOCUMENTS)]
    for metric, name in (("perplexity", "cross_entropy"), ("perplexity_constant_tau", "cross_entropy_constant_tau"),
                         ("perplexity_tempnet", "cross_entropy_tempnet")):
        losses = np.array(record["per_document"][name])
        assert metrics[metric] == pytest.approx(math.exp(losses.sum() / tokens.sum()), rel=1e-12)
        low, high = metrics[f"{metric}_ci95"]
        assert low <= metrics[metric] <= high and low < high
    # The constant tau was chosen on the validation split: the same as best_constant_tau there.
    lm = load_lm_with_tempnet(tempnet_checkpoint=runs["joint"]).lm
    validation = load_packed([str(runs["validation"])], ByteTokenizer(), seq_len=17)
    assert metrics["constant_tau"] == best_constant_tau(lm, validation, (0.02, 2.0)).tau


def test_compare_pairs_files_on_the_same_documents(runs, tmp_path, capsys):
    files = {}
    for mode in ("plain", "joint"):
        files[mode] = tmp_path / f"{mode}.json"
        assert cli.main(["llm", "eval", "--run", str(runs[mode]), "--tau-range", "0.02", "2", "--bootstrap", "0",
                         "--output", str(files[mode])]) == 0
    capsys.readouterr()
    assert cli.main(["llm", "compare", str(files["joint"]), str(files["plain"]), "--a-metric", "perplexity_tempnet",
                     "--b-metric", "perplexity_constant_tau", "--bootstrap", "2000"]) == 0
    comparison = json.loads(capsys.readouterr().out)
    joint, plain = (json.loads(files[mode].read_text())["metrics"] for mode in ("joint", "plain"))
    assert comparison["mean_difference"] == pytest.approx(joint["perplexity_tempnet"]
                                                          - plain["perplexity_constant_tau"])
    low, high = comparison["ci95"]
    assert low <= comparison["mean_difference"] <= high
    # A file from other held-out tokens cannot be paired.
    other = tmp_path / "other.json"
    assert cli.main(["llm", "eval", "--run", str(runs["plain"]), "--data", str(runs["validation"]),
                     "--bootstrap", "0", "--output", str(other)]) == 0
    assert cli.main(["llm", "compare", str(other), str(files["plain"])]) == 2
    assert "different held-out tokens" in capsys.readouterr().err
    assert cli.main(["llm", "compare", str(files["joint"])]) == 2  # not a pair
    # One pair: the bootstrap over documents is the interval, and it says so.
    assert comparison["ci95_covers"] == "documents only" and comparison["ci95"] == comparison["ci95_documents_only"]


def test_bootstrap_over_documents_on_a_hand_computed_example():
    # Two documents of one token each, with CE 0 and log 4: a draw takes both twice (ppl 1 or 4, p = 1/4
    # each) or each once (ppl 2, p = 1/2), so the 95 % percentile interval is [1, 4].
    tokens, losses = np.array([1.0, 1.0, 0.0]), np.array([0.0, math.log(4), 0.0])  # the third has no tokens
    assert bootstrap_perplexity(tokens, losses, replicates=4000, seed=0) == pytest.approx([1.0, 4.0])
    # Pairing: A = B gives exactly 0; a constant shift of every document's CE shifts perplexity by a factor.
    assert paired_difference([(tokens, losses, losses)], 500, 0) == [0.0, 0.0]
    low, high = paired_difference([(tokens, losses + tokens * math.log(2), losses)], 4000, 0)
    assert (low, high) == pytest.approx((1.0, 4.0))  # ppl doubles: A - B = ppl_B


def test_tau_report_tables_correlates_and_refuses_a_plain_run(runs, tmp_path, capsys):
    output = tmp_path / "report"
    assert cli.main(["llm", "report", "--run", str(runs["joint"]), "--output", str(output), "--bins", "3"]) == 0
    table = pd.read_csv(output / "tau_tokens.csv.gz")
    assert len(table) == sum(len(text) + 1 for text in HELDOUT_DOCUMENTS) - 1  # every held-out target once
    assert table["position"].tolist()[:3] == [0, 1, 2] and (table["tau"] > 0).all()
    analysis = json.loads((output / "tau_analysis.json").read_text())
    assert set(analysis["spearman"]) == {"entropy", "input_log_frequency", "target_log_frequency", "position"}
    assert analysis["tau"]["count"] == len(table) and (output / "tau_analysis.png").stat().st_size > 0
    assert "Spearman(tau, feature)" in (output / "report.md").read_text()
    assert cli.main(["llm", "report", "--run", str(runs["plain"]), "--output", str(tmp_path / "plain")]) == 2
    assert "no TempNet" in capsys.readouterr().err


def test_token_frequencies_and_document_positions_by_hand():
    from clipdro.llm.data import PackedText
    from clipdro.llm.tau_report import positions_in_documents, token_log_frequencies

    targets = torch.tensor([[1, 1, 2, -100]])
    training = PackedText(targets, targets, targets)
    expected = np.log(np.array([1, 3, 2]) / (3 + 3))  # add-one counts of ids 0, 1, 2 over 3 targets, V = 3
    assert np.allclose(token_log_frequencies(training, 3), expected)
    assert positions_in_documents(np.array([0, 0, 0, 1, 1, 3])).tolist() == [0, 1, 2, 0, 1, 0]


def test_linearised_perplexity_has_the_perplexity_as_mean_and_the_bootstrap_variance():
    rng = np.random.default_rng(0)
    tokens = rng.integers(50, 400, 60).astype(np.float64)
    losses = tokens * rng.uniform(1.0, 1.6, 60)
    linearised = linearised_perplexity(tokens, losses)
    assert linearised.mean() == pytest.approx(math.exp(losses.sum() / tokens.sum()), rel=1e-12)
    counts = np.random.default_rng(1).multinomial(60, np.full(60, 1 / 60), size=20_000)
    replicated = np.exp(counts @ losses / (counts @ tokens))
    assert linearised.var() / 60 == pytest.approx(replicated.var(), rel=0.05)


def synthetic_result(path, tokens, losses):
    """A `clipdro llm eval --output` file with only what compare reads: perplexity from per-document sums."""
    path.write_text(json.dumps({"format": RESULT_FORMAT, "targets_sha256": "same",
                                "metrics": {"perplexity": math.exp(sum(losses) / sum(tokens))},
                                "per_document": {"tokens": list(tokens), "cross_entropy": list(losses)}}))
    return path


def test_compare_with_several_seeds_covers_seeds_and_documents(tmp_path):
    # Three seeds whose perplexity differences are +0.6, +0.6 and -0.4 on every document (A's per-token CE a
    # constant above or below B's): the documents agree within each seed, so the bootstrap over documents is
    # narrow and excludes 0, while the seeds disagree, so the interval over seeds and documents contains 0.
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, 300, 40).astype(float)
    files = []
    for index, shift in enumerate((0.6, 0.6, -0.4)):
        b_losses = tokens * rng.uniform(1.2, 1.4)
        b_ppl = math.exp(b_losses.sum() / tokens.sum())
        a_losses = b_losses + tokens * (math.log(b_ppl + shift) - math.log(b_ppl))
        files += [synthetic_result(tmp_path / f"a{index}.json", tokens, a_losses),
                  synthetic_result(tmp_path / f"b{index}.json", tokens, b_losses)]
    result = compare_files(files, "perplexity", "perplexity", 2000, 0)
    assert [row["difference"] for row in result["pairs"]] == pytest.approx([0.6, 0.6, -0.4])
    assert result["ci95_covers"] == "seeds and documents"
    low, high = result["ci95"]
    assert low < 0 < high
    half = 4.302652729749464 * np.std([0.6, 0.6, -0.4], ddof=1) / math.sqrt(3)  # t_{2, 0.975} * SE over seeds
    assert high - result["mean_difference"] == pytest.approx(half, rel=0.01)
    documents_low, documents_high = result["ci95_documents_only"]
    assert 0 < documents_low < result["mean_difference"] < documents_high
    assert compare_files(files[:2], "perplexity", "perplexity", 0, 0)["ci95"] is None  # one pair, no bootstrap
