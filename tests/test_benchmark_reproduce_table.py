"""benchmarks/paper/reproduce_table.py without training: run reuse, per-seed differences, the table, the plot."""

import yaml

from benchmarks.paper.reproduce_table import (
    BASE_CONFIG,
    METRICS,
    finished_with,
    markdown,
    paired_differences,
    plot,
    run_overrides,
    summarise,
    train_command,
)
from clipdro.config import TrainConfig, load_config, to_dict


def fake_run(method, seed, value, taus=None):
    run = {"method": method, "seed": seed, "name": f"{method}-seed{seed}", "train_seconds": 60.0,
           "metrics": {title: value for title, _ in METRICS}}
    if taus:
        run["taus"] = {side: {"mean": 0.05, "std": 0.01, "p5": 0.03, "p95": 0.06, "p95_over_p5": 2.0,
                              "spearman_commonness": 0.25} for side in ("image", "text")}
    else:
        run["global_tau"] = 0.064
    return run


RUNS = [fake_run("clip", 0, 0.10), fake_run("clip", 1, 0.12), fake_run("tempnet", 0, 0.13, taus=True),
        fake_run("tempnet", 1, 0.13, taus=True)]


def test_summary_is_mean_and_sample_std_over_seeds():
    summary = summarise(RUNS, ["clip", "tempnet"])
    mean, std = summary["clip"]["IR@1"]
    assert abs(mean - 0.11) < 1e-12 and abs(std - 0.014142135623730963) < 1e-12  # stdev of (0.10, 0.12)
    assert summary["tempnet"]["IR@1"] == (0.13, 0.0) and summary["tempnet"]["seeds"] == 2


def test_paired_differences_match_seeds():
    differences = paired_differences(RUNS, "tempnet", "clip")
    assert [round(value, 6) for value in differences["TR@1"]] == [0.03, 0.01]


def test_markdown_table_and_plot(tmp_path):
    summary = summarise(RUNS, ["clip", "tempnet"])
    table = markdown(RUNS, summary, ["clip", "tempnet"])
    assert "| clip (2 seeds) | 11.0 ± 1.4 |" in table
    assert "| IR@1 | +3.0 | +1.0 | +2.0 |" in table  # tempnet - clip per seed, then the mean
    assert "| tempnet-seed0 | 0.0500 (mean) | 0.0300 – 0.0600 (2.00) |" in table
    assert "| clip-seed0 | 0.0640 (global) |" in table
    oracle = markdown([*RUNS, fake_run("oracle", 0, 0.09)], summary | summarise([fake_run("oracle", 0, 0.09)],
                                                                                 ["oracle"]), ["clip", "oracle"])
    assert "| oracle-seed0 | 0.0640 (last batch's mean) |" in oracle and "| IR@1 | -1.0 | -1.0 |" in oracle
    assert "| oracle (1 seed) | 9.0 |" in oracle  # a single seed: no "± 0.0"
    against_tempnet = markdown(RUNS, summary, ["clip", "tempnet"], baseline="tempnet")
    assert "clip − tempnet per seed" in against_tempnet and "| IR@1 | -3.0 | -1.0 | -2.0 |" in against_tempnet
    plot(RUNS, summary, ["clip", "tempnet"], tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 1000


def test_a_run_is_reused_only_with_the_same_config_and_a_final_evaluation(tmp_path):
    overrides = run_overrides("tempnet", 0, tmp_path, ["run.epochs=1"])
    expected = to_dict(load_config(TrainConfig, BASE_CONFIG, overrides))
    run_dir = tmp_path / "tempnet-seed0"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(expected))
    assert not finished_with(run_dir, expected)  # no evaluation yet
    (run_dir / "metrics.jsonl").write_text('{"step": 22, "loss": 1.0}\n{"step": 22, "eval": {}}\n')
    assert finished_with(run_dir, expected)
    other = to_dict(load_config(TrainConfig, BASE_CONFIG, [*overrides, "loss.rho=2.0"]))
    assert not finished_with(run_dir, other)


def test_a_run_saved_before_an_option_existed_is_reused_when_the_option_has_its_default(tmp_path):
    overrides = run_overrides("clip", 0, tmp_path, ["run.epochs=1"])
    expected = to_dict(load_config(TrainConfig, BASE_CONFIG, overrides))
    run_dir = tmp_path / "clip-seed0"
    run_dir.mkdir()
    older = {**expected, "tempnet": {key: value for key, value in expected["tempnet"].items() if key != "start_epoch"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(older))
    (run_dir / "metrics.jsonl").write_text('{"step": 22, "eval": {}}\n')
    assert finished_with(run_dir, expected)


def test_oracle_runs_at_the_resolved_sogclr_level():
    overrides = run_overrides("oracle", 1, BASE_CONFIG.parent, ["temperature.init=0.0546"])
    command = train_command("oracle", overrides)
    assert command[1:3] == ["-m", "benchmarks.paper.oracle_tau"]
    resolved = load_config(TrainConfig, BASE_CONFIG, overrides)
    assert resolved.loss.name == "oracle" and resolved.loss.options == {"strength": 1.0, "level": 0.0546}
    inverted = run_overrides("oracle-inverted", 1, BASE_CONFIG.parent, [])
    assert load_config(TrainConfig, BASE_CONFIG, inverted).loss.options == {"strength": -1.0, "level": 0.06}
    assert "run.name=oracle-inverted-seed1" in train_command("oracle-inverted", inverted)
    clip = run_overrides("clip", 1, BASE_CONFIG.parent, [])
    assert train_command("clip", clip)[1:5] == ["-m", "clipdro.cli", "train", "--config"]
