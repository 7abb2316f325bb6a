"""The temperature report: its statistics on hand-checkable inputs, then `clipdro report` end to end."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from clipdro.cli import main
from clipdro.errors import UsageError
from clipdro.eval.temperature_report import (
    caption_words,
    commonness,
    extremes,
    require_per_sample_temperatures,
)
from clipdro.stats import distribution_summary, quantile_bins, spearman
from tests.evalset_factory import CLASSNAMES, write_tiny_evalset
from tests.run_factory import NUM_SAMPLES, REPORT_SECTIONS


def test_caption_words_are_distinct_lowercase_letter_and_digit_runs():
    assert caption_words("A cat, a CAT! l'été_2") == {"a", "cat", "l", "été", "2"}
    assert caption_words(" ... ") == set()


def test_commonness_is_the_mean_log_document_fraction_of_the_words():
    # N = 4 captions; document frequencies: a 2, cat 2, dog 1, the 1.
    values = commonness(["a cat", "a dog a", "the cat", "!"])
    np.testing.assert_allclose(values[:3], [math.log(2 / 4), (math.log(2 / 4) + math.log(1 / 4)) / 2,
                                            (math.log(1 / 4) + math.log(2 / 4)) / 2])
    assert math.isnan(values[3])
    assert commonness(["x y", "y x"]).tolist() == [0.0, 0.0]  # every word in every caption


def test_spearman_with_and_without_ties():
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(1.5 * 2))  # average ranks 1.5, 1.5, 3
    assert spearman([1, 2, 3, math.nan], [3, 2, 1, 0]) == pytest.approx(-1.0)  # NaN pairs dropped
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_quantile_bins_have_equal_counts_and_never_split_ties():
    bins = quantile_bins([4, 1, 3, 2, math.nan], {"tau": [40, 10, 30, 20, 99]}, num_bins=2)
    assert bins.to_dict("list") == {"x_min": [1, 3], "x_max": [2, 4], "x_mean": [1.5, 3.5], "count": [2, 2],
                                    "mean_tau": [15.0, 35.0]}
    tied = quantile_bins([1, 1, 1, 2], {"tau": [1, 2, 3, 6]}, num_bins=2)
    assert tied["count"].tolist() == [4] and tied["mean_tau"].tolist() == [3.0]


def test_distribution_summary_and_extremes():
    summary = distribution_summary([0.01, 0.02, 0.03, math.nan])
    assert summary["count"] == 3 and summary["median"] == pytest.approx(0.02) and summary["max"] == 0.03
    frame = pd.DataFrame({"caption": list("abcd"), "text_tau": [0.2, math.nan, 0.1, 0.3]})
    lowest, highest = extremes(frame, "text_tau", 2)
    assert lowest["caption"].tolist() == ["c", "a"] and highest["caption"].tolist() == ["d", "a"]


def test_a_run_with_one_global_temperature_is_refused():
    with pytest.raises(UsageError, match="one global temperature"):
        require_per_sample_temperatures(SimpleNamespace(loss_name="clip", checkpoint=Path("step_1.pt")))


def test_tempnet_report_end_to_end(tempnet_run, tmp_path):
    evalset_dir = tmp_path / "evalset"
    write_tiny_evalset(evalset_dir)
    output = tmp_path / "report"
    assert main(["report", str(tempnet_run.run_dir), "--data", str(evalset_dir), "--output", str(output),
                 "--bins", "4", "--extremes", "3"]) == 0
    for name in ("report.md", "tau_histograms.png", "tau_vs_commonness.png", "tau_per_class.png",
                 "training_taus.csv", "tau_vs_commonness.csv", "tau_per_class.csv"):
        assert (output / name).stat().st_size > 0, name
    markdown = (output / "report.md").read_text()
    for section in [*REPORT_SECTIONS, "## Mean temperature per class"]:
        assert section in markdown
    assert f"{NUM_SAMPLES} training samples (all readable samples of " in markdown
    assert "evaluation set 'tiny-shapes' (6 images, 12 captions)" in markdown
    training = pd.read_csv(output / "training_taus.csv")
    assert sorted(training["sample_id"]) == list(range(NUM_SAMPLES))
    assert training["caption"].tolist() == [tempnet_run.captions[i] for i in training["sample_id"]]
    assert training[["image_tau", "text_tau"]].apply(lambda tau: tau.between(0.005, 0.05)).all().all()
    assert pd.read_csv(output / "tau_vs_commonness.csv")["count"].sum() == NUM_SAMPLES
    assert sorted(pd.read_csv(output / "tau_per_class.csv")["classname"]) == sorted(CLASSNAMES)


def test_isogclr_report_reads_the_tau_tables(isogclr_run, tmp_path):
    output = tmp_path / "report"
    evalset_dir = tmp_path / "evalset"
    write_tiny_evalset(evalset_dir)
    argv = ["report", str(isogclr_run.run_dir), "--train-shards", str(isogclr_run.manifest.root),
            "--max-train-samples", "20", "--data", str(evalset_dir), "--output", str(output)]
    assert main(argv) == 0
    markdown = (output / "report.md").read_text()
    for section in REPORT_SECTIONS:
        assert section in markdown
    assert f"all {NUM_SAMPLES:,} training samples with a text tau (seen in training)" in markdown
    assert "20 training samples (the first 20 readable samples in shard order of " in markdown
    assert "Evaluation set 'tiny-shapes' not used" in markdown and "## Mean temperature per class" not in markdown
    training = pd.read_csv(output / "training_taus.csv")
    assert training["sample_id"].tolist() == list(range(20))  # dense ids, shard order


def test_report_input_errors_exit_2(isogclr_run, tmp_path, capsys):
    argv = ["report", str(isogclr_run.run_dir), "--train-shards", "a", "b"]
    assert main(argv) == 2
    assert "give one manifest for each" in capsys.readouterr().err
    assert main(["report", str(isogclr_run.run_dir), "--train-shards", str(tmp_path)]) == 2
    assert "pass --train-shards if they moved" in capsys.readouterr().err
