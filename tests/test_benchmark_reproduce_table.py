"""benchmarks/paper/reproduce_table.py without training: run reuse, per-seed differences, the table, the plot,
--config (expected configs, train and oracle commands), the per-query evaluation step and the paired-interval
tables built from hand-made result files in clipdro eval's layout."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.paper import oracle_tau, reproduce_table
from benchmarks.paper.reproduce_table import (
    BASE_CONFIG,
    METRICS,
    PRIMARY,
    PRIMARY_TITLE,
    REPO_ROOT,
    eval_sets,
    finished_with,
    interval_markdown,
    interval_pairs,
    markdown,
    paired_differences,
    paired_intervals,
    parse_args,
    per_query_eval,
    plot,
    run_overrides,
    summarise,
    train,
    train_command,
)
from clipdro.config import load_config, to_dict
from clipdro.eval import compare, retrieval, zeroshot
from clipdro.eval.results import PER_QUERY_FORMAT, query_sha256, write_results
from clipdro.train_config import TrainConfig

DEMO_CONFIG = REPO_ROOT / "configs" / "pretrained_demo.yaml"


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


def test_dataset_oracle_level_runs_at_sogclrs_level_and_reports_its_tables(tmp_path):
    import torch

    overrides = run_overrides("dataset-oracle-level", 2, BASE_CONFIG.parent, ["temperature.init=0.066"])
    assert train_command("dataset-oracle-level", overrides)[1:3] == ["-m", "benchmarks.paper.dataset_oracle"]
    assert load_config(TrainConfig, BASE_CONFIG, overrides).loss.options == {"level": 0.066}
    plain = run_overrides("dataset-oracle", 2, BASE_CONFIG.parent, [])
    assert load_config(TrainConfig, BASE_CONFIG, plain).loss.options == {}  # the raw tau*, no rescaling
    # Its per-sample taus are the loss's checkpointed tables: 20 values 0.01 .. 0.2 -> p5 0.01, p95 0.19.
    (tmp_path / "checkpoints").mkdir()
    taus = torch.arange(1, 21, dtype=torch.float32) / 100
    torch.save({"format": "clipdro-checkpoint/1", "loss": {"image_taus": taus, "text_taus": 2 * taus}},
               tmp_path / "checkpoints" / "step_000004.pt")
    summary = reproduce_table.oracle_table_summary(tmp_path)
    assert summary["image"]["p5"] == pytest.approx(0.01) and summary["image"]["p95"] == pytest.approx(0.19)
    assert summary["text"]["p95_over_p5"] == pytest.approx(19.0) and np.isnan(summary["text"]["spearman_commonness"])


def test_training_tau_summary_leaves_out_samples_without_a_tau(tmp_path):
    path = tmp_path / "training_taus.csv"
    rows = [f"{i},cap,{(i + 1) / 100},{(i + 1) / 50},{-i}" for i in range(20)] + ["20,never drawn,,,-3.0"]
    path.write_text("sample_id,caption,image_tau,text_tau,commonness\n" + "\n".join(rows) + "\n")
    summary = reproduce_table.training_taus_summary(path)
    assert summary["image"]["p5"] == pytest.approx(0.01) and summary["image"]["p95"] == pytest.approx(0.19)
    assert summary["text"]["spearman_commonness"] == pytest.approx(-1.0)  # tau falls as commonness rises


# ------------------------------------------------------------------------------ --config


def test_config_defaults_to_reproduce_yaml_and_a_relative_path_resolves_from_the_repository(tmp_path, monkeypatch):
    assert parse_args([]).config == BASE_CONFIG
    monkeypatch.chdir(tmp_path)  # not found from here: looked up from the repository root
    args = parse_args(["--config", "configs/pretrained_demo.yaml", "run.epochs=1"])
    assert args.config == DEMO_CONFIG and args.overrides == ["run.epochs=1"]
    with pytest.raises(SystemExit):
        parse_args(["--config", "configs/no_such.yaml"])


@pytest.fixture
def no_subprocess(monkeypatch):
    """Records the commands reproduce_table would run (python ...) instead of running them."""
    commands, run = [], subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, *args, **kwargs: commands.append(command)
                        if command[0] == sys.executable else run(command, *args, **kwargs))
    return commands


def test_config_changes_the_expected_config_and_the_train_command(tmp_path, no_subprocess):
    args = parse_args(["--config", str(DEMO_CONFIG), "--output-dir", str(tmp_path), "run.epochs=1"])
    args.output_dir = args.output_dir.resolve()
    overrides = run_overrides("tempnet", 0, args.output_dir, args.overrides, args.config)
    demo = load_config(TrainConfig, args.config, overrides)
    assert demo.model.name == "clipdro-efflite0-minilm" and demo.loss.name == "tempnet" and demo.loss.rho == 5.0
    assert load_config(TrainConfig, BASE_CONFIG, overrides).model.name == "clipdro-tiny-vit"
    run_dir, seconds = train("clip", 0, args)
    [command] = no_subprocess
    assert command[:5] == [sys.executable, "-m", "clipdro.cli", "train", "--config"] and command[5] == str(DEMO_CONFIG)
    assert "run.name=clip-seed0" in command and seconds is not None and run_dir == tmp_path / "clip-seed0"
    # A finished run of the demo config's resolved config is reused; under the default config it is not.
    expected = to_dict(load_config(TrainConfig, DEMO_CONFIG, run_overrides("clip", 0, args.output_dir,
                                                                           args.overrides, DEMO_CONFIG)))
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(expected))
    (run_dir / "metrics.jsonl").write_text('{"step": 22, "eval": {}}\n')
    assert train("clip", 0, args) == (run_dir, None) and len(no_subprocess) == 1
    args.config = BASE_CONFIG
    train("clip", 0, args)
    assert len(no_subprocess) == 2 and no_subprocess[1][5] == str(BASE_CONFIG)


def test_the_oracle_command_passes_the_config_to_oracle_tau(tmp_path, no_subprocess, monkeypatch):
    args = parse_args(["--config", str(DEMO_CONFIG), "--output-dir", str(tmp_path)])
    train("oracle-half", 1, args)
    [command] = no_subprocess
    assert command[1:5] == ["-m", "benchmarks.paper.oracle_tau", "--config", str(DEMO_CONFIG)]
    level = load_config(TrainConfig, DEMO_CONFIG).temperature.init  # the demo config's own sogclr level
    assert f"loss.options.level={level}" in command and "loss.options.strength=0.5" in command
    # oracle_tau parses that command line and trains with that config and these overrides.
    received = []
    monkeypatch.setattr(oracle_tau, "train_main", lambda argv: received.append(argv) or 0)
    assert oracle_tau.main(command[3:]) == 0
    [argv] = received
    assert argv[:2] == ["--config", str(DEMO_CONFIG)] and argv[-1] == f"loss.options.level={level}"
    resolved = load_config(TrainConfig, argv[1], argv[2:])
    assert resolved.loss.options == {"level": level, "strength": 0.5} and resolved.run.name == "oracle-half-seed1"
    assert resolved.model.name == "clipdro-efflite0-minilm"


# ------------------------------------------------------------------------------ per-query evaluation


def test_per_query_evaluation_runs_clipdro_eval_only_when_a_file_is_missing(tmp_path, monkeypatch):
    config = load_config(TrainConfig, BASE_CONFIG, [])
    sets = eval_sets(config)
    test_set = REPO_ROOT / "data" / "openclipart" / "test"
    assert sets == {"retrieval": (test_set, "openclipart-test"), "zeroshot": (test_set, "openclipart-test")}
    commands = []

    def fake_eval(command, **kwargs):  # writes what clipdro eval would, at --output
        assert kwargs["cwd"] == REPO_ROOT and kwargs["check"]
        commands.append(command)
        output = command[command.index("--output") + 1]
        Path(output).write_text(json.dumps({"step": 22, "metrics": {}}))

    monkeypatch.setattr(reproduce_table.subprocess, "run", fake_eval)
    run_dir = tmp_path / "clip-seed0"
    run_dir.mkdir()
    files = per_query_eval(run_dir, sets, config, step=22)
    assert files == {"retrieval": run_dir / "eval_retrieval.json", "zeroshot": run_dir / "eval_zeroshot.json"}
    assert all(path.exists() for path in files.values()) and not list(run_dir.glob("*.partial.json"))
    retrieval_command, zeroshot_command = commands
    assert retrieval_command[:6] == [sys.executable, "-m", "clipdro.cli", "eval", "retrieval", "--checkpoint"]
    assert retrieval_command[6] == str(run_dir) and zeroshot_command[4] == "zeroshot"
    for command in commands:
        assert command[command.index("--data") + 1] == str(test_set)
        assert command[command.index("--device") + 1] == "cpu"
        assert command[command.index("--precision") + 1] == "fp32"
    assert retrieval_command[-4:] == ["--recall-k", "1", "5", "10"]
    per_query_eval(run_dir, sets, config, step=22)
    assert len(commands) == 2  # both files there: nothing run
    files["zeroshot"].unlink()
    per_query_eval(run_dir, sets, config, step=22)
    assert len(commands) == 3 and commands[-1][4] == "zeroshot"
    per_query_eval(run_dir, sets, config, step=44)  # files of another checkpoint are made again
    assert len(commands) == 5


# ------------------------------------------------------------------------------ paired intervals

# A tiny evaluation set: 10 images with 2 captions each (20 caption queries), 6 classes.
IMAGES = [f"images/{i}.png" for i in range(10)]
TEXTS = [f"caption {j}" for j in range(20)]
TEXT_TO_IMAGE = [j // 2 for j in range(20)]
LABELS = [i % 6 for i in range(10)]


def ranks_for(method, seed):
    """Per-query ranks of one run: image retrieval (per caption, capped at 10), text retrieval (per
    image), true-class rank (per image).  sogclr's equal clip's, so sogclr − clip is exactly 0."""
    rng = np.random.default_rng([{"clip": 0, "sogclr": 0, "tempnet": 1}[method], seed])
    return rng.integers(0, 11, 20), rng.integers(0, 11, 10), rng.integers(0, 6, 10)


def write_eval_files(run_dir, method, seed):
    """RUN/eval_retrieval.json and RUN/eval_zeroshot.json as clipdro eval --checkpoint writes them."""
    image_ranks, text_ranks, class_ranks = ranks_for(method, seed)
    common = {"model": "clipdro-tiny-vit", "pretrained": None, "checkpoint": str(run_dir / "checkpoints" / "last.pt"),
              "step": 22, "loss": method, "data": "/data/tiny", "dataset": "tiny"}
    write_results(run_dir / "eval_retrieval.json", {
        "task": "retrieval", **common, "recall_k": [1, 5, 10], "num_images": 10, "num_texts": 20,
        "metrics": retrieval.metrics_from_ranks({"image_retrieval": image_ranks, "text_retrieval": text_ranks}),
        "timings": {"embedding_s": 0.1, "search_s": 0.01}, "precision": "fp32", "device": "cpu",
        "per_query": {"format": PER_QUERY_FORMAT, "query_sha256": query_sha256(IMAGES, texts=TEXTS,
                                                                               text_to_image=TEXT_TO_IMAGE),
                      "rank_cap": 10, "image_retrieval_rank": image_ranks.tolist(),
                      "text_retrieval_rank": text_ranks.tolist()}})
    write_results(run_dir / "eval_zeroshot.json", {
        "task": "zeroshot", **common, "classnames": "evalset", "templates": "evalset", "num_images": 10,
        "num_classes": 6, "metrics": zeroshot.metrics_from_ranks(class_ranks, LABELS, 6),
        "timings": {"search_s": 0.01}, "precision": "fp32", "device": "cpu",
        "per_query": {"format": PER_QUERY_FORMAT, "query_sha256": query_sha256(IMAGES, labels=LABELS),
                      "rank_cap": None, "label": LABELS, "true_class_rank": class_ranks.tolist()}})
    return {"retrieval": f"{run_dir.name}/eval_retrieval.json", "zeroshot": f"{run_dir.name}/eval_zeroshot.json"}


def hand_metrics(method, seed):
    """The METRICS of one run computed by hand from its ranks."""
    image_ranks, text_ranks, class_ranks = ranks_for(method, seed)
    return {"IR@1": np.mean(image_ranks < 1), "IR@5": np.mean(image_ranks < 5), "IR@10": np.mean(image_ranks < 10),
            "TR@1": np.mean(text_ranks < 1), "TR@5": np.mean(text_ranks < 5), "TR@10": np.mean(text_ranks < 10),
            "zero-shot top-1": np.mean(class_ranks == 0), "zero-shot top-5": np.mean(class_ranks < 5),
            "zero-shot per-class recall": np.mean([np.mean(class_ranks[np.array(LABELS) == label] == 0)
                                                   for label in sorted(set(LABELS))])}


SEEDS = {"clip": [0, 1, 2], "sogclr": [0, 1], "tempnet": [1, 2]}  # tempnet and clip share seeds 1 and 2


@pytest.fixture
def evaluated_runs(tmp_path):
    runs = []
    for method, seeds in SEEDS.items():
        for seed in seeds:
            run_dir = tmp_path / f"{method}-seed{seed}"
            run_dir.mkdir()
            run = fake_run(method, seed, 0.0, taus=method == "tempnet")
            run["metrics"] = hand_metrics(method, seed)
            run["eval_files"] = write_eval_files(run_dir, method, seed)
            runs.append(run)
    return runs


def test_interval_tables_are_against_the_baseline_and_sogclr():
    assert interval_pairs(["clip", "sogclr", "tempnet"], "clip") == [
        ("sogclr", "clip"), ("tempnet", "clip"), ("tempnet", "sogclr")]
    assert interval_pairs(["clip", "sogclr", "tempnet"], "sogclr") == [("clip", "sogclr"), ("tempnet", "sogclr")]
    assert interval_pairs(["clip", "tempnet"], "clip") == [("tempnet", "clip")]
    assert interval_pairs(["sogclr", "tempnet"], "clip") == []  # no baseline in the sweep: no tables (as above)


def test_paired_intervals_pair_equal_seeds_and_pool_them(evaluated_runs, tmp_path):
    entry = paired_intervals(evaluated_runs, "tempnet", "clip", tmp_path, replicates=400, seed=3)
    assert entry["seeds"] == [1, 2] and (entry["method"], entry["reference"]) == ("tempnet", "clip")
    assert list(entry["metrics"]) == [PRIMARY_TITLE, *(title for title, _ in METRICS)]
    for title, item in entry["metrics"].items():
        parts = PRIMARY if title == PRIMARY_TITLE else [title]
        pair_diffs = [np.mean([hand_metrics("tempnet", s)[part] - hand_metrics("clip", s)[part] for part in parts])
                      for s in (1, 2)]
        assert item["pair_diffs"] == pytest.approx(pair_diffs)
        assert item["diff"] == pytest.approx(np.mean(pair_diffs))
        assert item["a"] == pytest.approx(np.mean([hand_metrics("tempnet", s)[part] for s in (1, 2) for part in parts]))
        assert item["covers"] == "seeds and queries"
        for low, high in ((item["low"], item["high"]), (item["query_low"], item["query_high"])):
            assert low <= item["diff"] + 1e-12 and item["diff"] - 1e-12 <= high
        assert -1 <= item["low"] and item["high"] <= 1  # a difference of fractions: the interval is cut there
        queries = {"IR": ("captions", 20), "TR": ("images", 10), "me": ("captions+images", 30)}.get(title[:2],
                                                                                                 ("images", 10))
        assert (item["queries"], item["num_queries"]) == queries
    # the intervals are clipdro eval compare's on the same files, A B A2 B2 in seed order
    sources = [str(tmp_path / f"{name}-seed{s}" / "eval_retrieval.json")
               for s in (1, 2) for name in ("tempnet", "clip")]
    records = [json.loads(Path(source).read_text()) for source in sources]
    direct = {item.metric: item for item in compare.compare_results(records, sources, 400, 3)}
    tr5 = direct["text_retrieval_recall@5"]
    assert [entry["metrics"]["TR@5"][key] for key in ("low", "high", "query_low", "query_high")] == [
        tr5.low, tr5.high, tr5.query_low, tr5.query_high]
    [primary] = compare.compare_results(records, sources, 400, 3, primary=["image_retrieval_recall@1",
                                                                            "text_retrieval_recall@1"])[:1]
    assert (entry["metrics"][PRIMARY_TITLE]["low"], entry["metrics"][PRIMARY_TITLE]["high"]) == (primary.low,
                                                                                                 primary.high)
    same = paired_intervals(evaluated_runs, "sogclr", "clip", tmp_path, replicates=200)
    assert same["seeds"] == [0, 1]
    assert all((item["diff"], item["low"], item["high"], item["query_low"], item["query_high"]) == (0.0,) * 5
               for item in same["metrics"].values())
    one_seed = paired_intervals(evaluated_runs, "tempnet", "sogclr", tmp_path, replicates=200)
    assert one_seed["seeds"] == [1]
    assert all(item["covers"] == "queries only" and (item["low"], item["high"]) == (item["query_low"],
                                                                                     item["query_high"])
               for item in one_seed["metrics"].values())
    assert paired_intervals([run for run in evaluated_runs if run["method"] != "clip"], "tempnet", "clip",
                            tmp_path) is None


SEEDS_TITLE = ("tempnet − clip, seeds 1, 2: 95 % interval over seeds and queries (t-interval over the per-seed "
               "differences plus the query effect common to all seeds, clipdro/stats.py) and, beside it, the paired "
               "bootstrap interval over queries with the seeds pooled, which leaves out the seed-to-seed variation "
               "(percentage points; ")


def test_the_paired_interval_tables_in_results_md(evaluated_runs, tmp_path):
    methods = ["clip", "sogclr", "tempnet"]
    intervals = [paired_intervals(evaluated_runs, method, reference, tmp_path, replicates=300)
                 for method, reference in interval_pairs(methods, "clip")]
    table = markdown(evaluated_runs, summarise(evaluated_runs, methods), methods, "clip", intervals)
    assert table.startswith("| method | IR@1 |") and "| tempnet-seed1 | 0.0500 (mean) |" in table  # as before
    assert table.endswith(interval_markdown(intervals))
    block = table.split(SEEDS_TITLE + "300 replicates, bootstrap seed 0):\n\n")[1].split("\n\n")[0]
    rows = block.splitlines()
    assert rows[:2] == ["| metric | difference (points) | 95 % interval, seeds and queries (points) | "
                        "95 % interval, queries only (points) |", "|---|---:|---|---|"]
    assert [row.split(" | ")[0] for row in rows[2:]] == [f"| {PRIMARY_TITLE} (primary)",
                                                         *(f"| {title}" for title, _ in METRICS)]
    tempnet = intervals[1]["metrics"]
    for row, title in zip(rows[2:], [PRIMARY_TITLE, *(title for title, _ in METRICS)], strict=True):
        item = tempnet[title]
        assert row.endswith(f" | {100 * item['diff']:+.2f} | [{100 * item['low']:+.2f}, {100 * item['high']:+.2f}] | "
                            f"[{100 * item['query_low']:+.2f}, {100 * item['query_high']:+.2f}] |")
    ir1 = np.mean([hand_metrics("tempnet", s)["IR@1"] - hand_metrics("clip", s)["IR@1"] for s in (1, 2)])
    assert rows[3].startswith(f"| IR@1 | {100 * ir1:+.2f} | [")
    assert "sogclr − clip, seeds 0, 1: 95 % interval over seeds and queries" in table
    assert "| zero-shot top-5 | +0.00 | [+0.00, +0.00] | [+0.00, +0.00] |" in table  # sogclr = clip query by query
    one_seed = ("tempnet − sogclr, seed 1: paired bootstrap 95 % interval over queries, which covers query sampling "
                "only, not the variation between training seeds (percentage points; 300 replicates")
    assert one_seed in table
    rows = table.split(one_seed)[1].split("\n\n")[1].splitlines()
    assert rows[0] == "| metric | difference (points) | 95 % interval, queries only (points) |"
    assert rows[2].startswith(f"| {PRIMARY_TITLE} (primary) | ")
    assert markdown(evaluated_runs, summarise(evaluated_runs, methods), methods) == \
        markdown(evaluated_runs, summarise(evaluated_runs, methods), methods, intervals=[])  # no tables: as before


def test_main_writes_the_interval_tables_without_training(evaluated_runs, tmp_path, monkeypatch, no_subprocess):
    """main() on runs that are already trained and evaluated: nothing is run, the tables are written."""
    def fake_train(method, seed, args):
        run_dir = args.output_dir / f"{method}-seed{seed}"
        metrics = hand_metrics(method, seed)
        record = {f"openclipart-test/{key}": metrics[title] for title, key in METRICS}
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 22, "eval": record}) + "\n")
        return run_dir, None

    monkeypatch.setattr(reproduce_table, "train", fake_train)
    monkeypatch.setattr(reproduce_table, "global_tau", lambda run_dir: 0.06)
    monkeypatch.setattr(reproduce_table, "temperature_summary", lambda run_dir: fake_run("x", 0, 0, True)["taus"])
    assert reproduce_table.main(["--methods", "clip", "tempnet", "--seeds", "1", "2", "--output-dir",
                                 str(tmp_path), "--config", str(DEMO_CONFIG)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["base_config"] == "configs/pretrained_demo.yaml"
    test_set = "data/openclipart/test"
    assert results["settings"]["eval_sets"] == {"retrieval": test_set, "zeroshot": test_set}
    assert results["runs"][0]["eval_files"] == {"retrieval": "clip-seed1/eval_retrieval.json",
                                                "zeroshot": "clip-seed1/eval_zeroshot.json"}
    [entry] = results["paired_intervals"]
    assert (entry["method"], entry["reference"], entry["seeds"], entry["replicates"]) == ("tempnet", "clip", [1, 2],
                                                                                        compare.REPLICATES)
    text = (tmp_path / "results.md").read_text()
    assert SEEDS_TITLE in text
    assert "tempnet − clip per seed" in text and "| clip (2 seeds) |" in text  # the existing tables stay
    assert no_subprocess == []  # the eval files were there: no clipdro eval, no training


def test_a_variant_sweep_takes_its_baselines_from_a_reference_sweep(evaluated_runs, tmp_path, monkeypatch,
                                                                    no_subprocess, capsys):
    """--reference-dir: clip and sogclr come from an earlier sweep's results.json (not trained), the variant's
    tempnet is trained here, and the interval tables pair them seed by seed across the two folders."""
    reference_dir = tmp_path / "reference"  # the earlier sweep: clip and sogclr runs with their eval files
    reference_dir.mkdir()
    for run in evaluated_runs:
        if run["method"] != "tempnet":
            (tmp_path / run["name"]).rename(reference_dir / run["name"])
    settings = {"base_config": "configs/pretrained_demo.yaml",
                "eval_sets": {"retrieval": "data/openclipart/test", "zeroshot": "data/openclipart/test"}}
    (reference_dir / "results.json").write_text(json.dumps({"settings": settings, "runs": evaluated_runs}))
    variant_dir = tmp_path / "variant"
    variant_dir.mkdir()
    for seed in (1,):
        (tmp_path / f"tempnet-seed{seed}").rename(variant_dir / f"tempnet-seed{seed}")
    trained = []

    def fake_train(method, seed, args):
        trained.append((method, seed, args.overrides))
        run_dir = args.output_dir / f"{method}-seed{seed}"
        metrics = hand_metrics(method, seed)
        record = {f"openclipart-test/{key}": metrics[title] for title, key in METRICS}
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 22, "eval": record}) + "\n")
        return run_dir, 30.0

    monkeypatch.setattr(reproduce_table, "train", fake_train)
    monkeypatch.setattr(reproduce_table, "temperature_summary", lambda run_dir: fake_run("x", 0, 0, True)["taus"])
    argv = ["--methods", "tempnet", "--seeds", "1", "--output-dir", str(variant_dir), "--config", str(DEMO_CONFIG),
            "--reference-dir", str(reference_dir), "loss.rho=3.0"]
    assert reproduce_table.main(argv) == 0
    assert trained == [("tempnet", 1, ["loss.rho=3.0"])]  # only the variant's method trains
    results = json.loads((variant_dir / "results.json").read_text())
    assert results["settings"]["reference"] == {"dir": str(reference_dir), "methods": ["clip", "sogclr"]}
    assert [run["method"] for run in results["runs"]] == ["clip", "sogclr", "tempnet"]
    assert results["runs"][0]["eval_files"]["retrieval"] == str(reference_dir / "clip-seed1" / "eval_retrieval.json")
    pairs = [(entry["method"], entry["reference"], entry["seeds"]) for entry in results["paired_intervals"]]
    assert pairs == [("sogclr", "clip", [1]), ("tempnet", "clip", [1]), ("tempnet", "sogclr", [1])]
    tempnet_clip = results["paired_intervals"][1]["metrics"]["IR@1"]["pair_diffs"]
    assert tempnet_clip == pytest.approx([hand_metrics("tempnet", 1)["IR@1"] - hand_metrics("clip", 1)["IR@1"]])
    text = (variant_dir / "results.md").read_text()
    assert f"| {reference_dir}/clip-seed1 | 0.0640 (global) | – | – | – | reused |" in text
    # a seed the reference sweep lacks, another base config, a method asked for twice: one clear line each
    with pytest.raises(SystemExit, match="has no evaluated sogclr run of seed 2"):
        reproduce_table.main([*argv[:3], "2", *argv[4:]])
    other_config = [arg if arg != str(DEMO_CONFIG) else str(BASE_CONFIG) for arg in argv]
    with pytest.raises(SystemExit, match="has base_config configs/pretrained_demo.yaml, this sweep"):
        reproduce_table.main(other_config)
    with pytest.raises(SystemExit):
        parse_args([*argv, "--methods", "clip", "tempnet"])
    assert "clip: in --methods and in --reference-methods" in capsys.readouterr().err
    # a reference sweep written before a metric joined the table: rerun it first
    reference_results = json.loads((reference_dir / "results.json").read_text())
    for run in reference_results["runs"]:
        del run["metrics"]["zero-shot per-class recall"]
    (reference_dir / "results.json").write_text(json.dumps(reference_results))
    with pytest.raises(SystemExit, match="predates the metrics zero-shot per-class recall; rerun that sweep"):
        reproduce_table.main(argv)


def test_archived_runs_are_restored_elsewhere_and_reused_without_training(tmp_path, monkeypatch, no_subprocess):
    """run_archive: a sweep's finished runs, saved without checkpoints (tempnet's taus summarised first), restored
    into another folder, are reused there by main(): nothing trained or evaluated, the same taus and intervals."""
    from benchmarks.paper import run_archive

    overrides = ["run.epochs=1", "data.batch_size=8", "data.epoch_samples=176"]  # 22 steps, the eval files' step
    first, archive, second = tmp_path / "first", tmp_path / "archive", tmp_path / "second"
    for method in ("clip", "tempnet"):
        for seed in (1, 2):
            run_dir = first / f"{method}-seed{seed}"
            run_dir.mkdir(parents=True)
            config = load_config(TrainConfig, DEMO_CONFIG, run_overrides(method, seed, first, overrides, DEMO_CONFIG))
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
            record = {f"openclipart-test/{key}": hand_metrics(method, seed)[title] for title, key in METRICS}
            lines = [{"step": 22, "image_tau_mean": 0.06}, {"step": 22, "eval": record}]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
            write_eval_files(run_dir, method, seed)
            (run_dir / "checkpoints").mkdir()  # stays behind
    (first / "clip-seed3").mkdir()  # not finished: not archived
    taus = fake_run("x", 0, 0, True)["taus"]
    summarised = []
    monkeypatch.setattr(reproduce_table, "temperature_summary", lambda run_dir: summarised.append(run_dir) or taus)
    assert run_archive.main(["save", str(first), str(archive)]) == 0
    assert sorted(path.name for path in archive.iterdir()) == ["clip-seed1", "clip-seed2", "tempnet-seed1",
                                                                "tempnet-seed2"]
    assert summarised == [first / "tempnet-seed1", first / "tempnet-seed2"]
    assert sorted(path.name for path in (archive / "tempnet-seed1").iterdir()) == [
        "config.yaml", "eval_retrieval.json", "eval_zeroshot.json", "metrics.jsonl", "taus_summary.json"]
    assert not (archive / "clip-seed1" / "taus_summary.json").exists()

    monkeypatch.setattr(reproduce_table, "temperature_summary", lambda run_dir: pytest.fail("taus from the archive"))
    assert reproduce_table.main(["--methods", "clip", "tempnet", "--seeds", "1", "2", "--output-dir", str(second),
                                 "--config", str(DEMO_CONFIG), "--archive-dir", str(archive), *overrides]) == 0
    assert no_subprocess == []  # reused although their config.yaml names the first folder: no training, no eval
    results = json.loads((second / "results.json").read_text())
    assert [run["taus"] for run in results["runs"] if run["method"] == "tempnet"] == [taus, taus]
    assert [run["global_tau"] for run in results["runs"] if run["method"] == "clip"] == [0.06, 0.06]
    [entry] = results["paired_intervals"]
    assert entry["seeds"] == [1, 2] and entry["metrics"]["IR@1"]["pair_diffs"] == pytest.approx(
        [hand_metrics("tempnet", s)["IR@1"] - hand_metrics("clip", s)["IR@1"] for s in (1, 2)])
    # a run already in the output folder is left alone by restore
    assert run_archive.restore_runs(archive, second) == []
