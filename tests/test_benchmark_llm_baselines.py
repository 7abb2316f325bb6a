"""benchmarks/paper/llm_baselines.py end to end on a tiny corpus: one seed x (plain, joint, frozen), the
table, the paired comparisons, and the reuse of finished runs (6 subprocesses: about a minute)."""

import json

import pytest
import yaml

from benchmarks.paper import llm_baselines
from tests.llm_factory import SEQ_LEN, TINY_GPT2

TEXTS = {
    "train": ["The temperature of a softmax decides how sharp a language model's next-token distribution is.",
              "A network that predicts one temperature per token can cool confident tokens and warm uncertain ones.",
              "Plain cross-entropy is the baseline every temperature network must beat on held-out text."],
    "valid": ["The constant temperature is chosen here.", "Never on the test documents."],
    "test": ["Cool the confident.", "Warm the uncertain, gently.", "Per token."],
}


@pytest.mark.slow  # about 20 LLM runs and reports in subprocesses
def test_three_modes_table_and_reuse(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, texts in TEXTS.items():
        (corpus / f"{split}.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    output = tmp_path / "out"
    argv = ["--corpus", str(corpus), "--seeds", "1", "--frozen-steps", "2", "--bootstrap", "200",
            "--output-dir", str(output), f"model.architecture={TINY_GPT2}", f"data.seq_len={SEQ_LEN}",
            "data.batch_size=4", "steps=2", "tempnet.hidden=16", "tempnet.dropout=0.0", "eval.batch_size=8"]
    assert llm_baselines.main(argv) == 0
    results = json.loads((output / "results.json").read_text())
    assert [(run["mode"], run["seed"]) for run in results["runs"]] == [
        (mode, 1) for mode in ("plain", "joint", "frozen")]
    rows = {row["row"]: row for row in results["summary"]}
    plain_best = rows["plain LM, best constant tau (chosen on valid)"]
    assert len(plain_best["per_seed"]) == 1 and all(tau > 0 for tau in plain_best["tau_per_seed"])
    assert rows["plain LM, tau = 1"]["tau_per_seed"] is None
    # The frozen run's LM is the plain run's: the same perplexity at tau = 1 on the same test tokens.
    plain = json.loads((output / "plain-seed1" / "eval_test.json").read_text())["metrics"]
    frozen = json.loads((output / "frozen-seed1" / "eval_test.json").read_text())["metrics"]
    assert frozen["perplexity"] == plain["perplexity"] and frozen["constant_tau"] == plain["constant_tau"]
    assert [row["comparison"] for row in results["paired"]] == [title for title, _, _ in llm_baselines.COMPARISONS]
    for row in results["paired"]:
        low, high = row["ci95"]
        assert low <= row["mean_difference"] <= high and len(row["pairs"]) == 1
    table = (output / "results.md").read_text()
    assert "| joint TempNet - plain at tau = 1 |" in table and "plain LM + TempNet trained on it frozen" in table
    assert "| joint-seed1 |" in table and "| frozen-seed1 |" in table  # the tau report rows
    assert (output / "joint-seed1" / "report" / "tau_analysis.json").is_file()

    # A rerun reuses every finished run: nothing is trained again.
    capsys.readouterr()
    assert llm_baselines.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 3 and "llm train" not in printed

    # A run interrupted after its last checkpoint (here: its final evaluation record lost) continues from that
    # checkpoint instead of training again from scratch.
    metrics = output / "joint-seed1" / "metrics.jsonl"
    records = metrics.read_text().splitlines()
    last_eval = max(index for index, line in enumerate(records) if '"eval"' in line)
    metrics.write_text("".join(line + "\n" for index, line in enumerate(records) if index != last_eval))
    assert llm_baselines.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 2 and printed.count("--resume latest") == 1
    assert "[joint seed 1]" in printed and "--overwrite" not in printed
    assert metrics.read_text().count('"eval"') == "".join(records).count('"eval"')  # evaluated again at its end

    # --select-rho: a frozen TempNet per candidate on plain-seed1, evaluated on the valid split; the rho with
    # the lowest valid perplexity drives the joint and frozen runs (trained again), the plain run is reused.
    assert llm_baselines.main(argv + ["--select-rho", "1.0", "2.0"]) == 0
    printed = capsys.readouterr().out
    selection = json.loads((output / "rho_selection.json").read_text())
    assert [candidate["rho"] for candidate in selection["candidates"]] == [1.0, 2.0]
    best = min(selection["candidates"], key=lambda candidate: candidate["valid"]["perplexity_tempnet"])
    assert selection["rho"] == best["rho"] and "(chosen)" in (output / "rho_selection.md").read_text()
    assert all(candidate["valid"]["tokens"] == plain["constant_tau_validation_tokens"]
               for candidate in selection["candidates"])  # evaluated on valid, not test
    assert printed.count("[plain seed 1] reusing the finished run") == 2  # the selection's and the sweep's
    assert "[select-rho1 seed 1]" in printed and "[joint seed 1]" in printed and "[frozen seed 1]" in printed

    def rho_of(name):
        return yaml.safe_load((output / name / "config.yaml").read_text())["loss"]["rho"]

    assert rho_of("joint-seed1") == rho_of("frozen-seed1") == selection["rho"]
    assert rho_of("select-rho2-seed1") == 2.0
    results = json.loads((output / "results.json").read_text())
    assert results["settings"]["rho"] == selection["rho"]
    assert "chosen on the valid split" in (output / "results.md").read_text()
    with pytest.raises(SystemExit):
        llm_baselines.main(argv + ["--rho", "1.0", "--select-rho", "1.0"])


def test_paired_table_names_what_each_interval_covers():
    row = {"comparison": "joint TempNet - plain at tau = 1", "mean_difference": 0.388, "ci95": [0.28, 0.49],
           "ci95_documents_only": [0.331, 0.424]}
    lines = llm_baselines.paired_markdown([row], seeds=3, replicates=100)
    assert "a 95 % interval over seeds and test documents" in lines[1] and "leaves out the seed-to-seed" in lines[1]
    assert lines[3:] == ["| A − B | mean difference | 95 % interval, seeds and documents | 95 % interval, documents "
                         "only |", "|---|---:|---|---|",
                         "| joint TempNet - plain at tau = 1 | +0.388 | [+0.280, +0.490] | [+0.331, +0.424] |"]
    one_seed = llm_baselines.paired_markdown([{**row, "ci95": row["ci95_documents_only"]}], seeds=1, replicates=100)
    assert "covers document sampling only, not the variation between training seeds" in one_seed[1]
    assert one_seed[-1] == "| joint TempNet - plain at tau = 1 | +0.388 | [+0.331, +0.424] |"
