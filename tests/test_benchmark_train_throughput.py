"""The log parsing, statistics and ratios of benchmarks/speed/train_throughput.py (no training here)."""

import json
import math

import pytest

from benchmarks.speed.train_throughput import (
    LogWindow,
    Throughput,
    default_rho,
    markdown_table,
    open_clip_train_data,
    parse_clipdro_metrics,
    parse_open_clip_log,
    steady_state,
    summarise,
    targets_met,
    throughput_ratios,
)

# Two step lines as open_clip_train 3.3.0 writes them (batch 64, 3 steps per epoch), around other log lines.
OPEN_CLIP_LOG = """\
2026-11-28,00:26:41 | INFO | Running with a single process. Device cpu.
2026-11-28,00:26:47 | INFO | Start epoch 0
2026-11-28,00:26:47 | INFO | Train Epoch: 0 [ 64/192 (33%)] Data (t): 1.820 Batch (t): 5.941, 10.7726/s, \
10.7726/s/gpu LR: 0.000800 Logit Scale: 14.286 Contrastive_loss: 4.6138 (4.6138) Loss: 4.6138 (4.6138)
2026-11-28,00:26:50 | INFO | Train Epoch: 0 [128/192 (67%)] Data (t): 0.015 Batch (t): 3.407, 18.7859/s, \
18.7859/s/gpu LR: 0.000746 Logit Scale: 14.274 Contrastive_loss: 4.2495 (4.4317) Loss: 4.2495 (4.4317)
2026-11-28,00:26:54 | INFO | Train Epoch: 0 [192/192 (100%)] Data (t): 0.006 Batch (t): 3.160, 20.2530/s, \
20.2530/s/gpu LR: 0.000600 Logit Scale: 14.265 Contrastive_loss: 4.2152 (4.3595) Loss: 4.2152 (4.3595)
"""


def test_open_clip_one_step_windows_take_the_precise_rate():
    windows = parse_open_clip_log(OPEN_CLIP_LOG, batch_size=64)
    assert [(window.first_step, window.last_step) for window in windows] == [(1, 1), (2, 2), (3, 3)]
    assert windows[1].seconds == pytest.approx(64 / 18.7859)
    assert windows[0].data_seconds == pytest.approx(1.820)


def test_open_clip_longer_windows_take_the_batch_time_average():
    lines = OPEN_CLIP_LOG.splitlines()
    windows = parse_open_clip_log("\n".join(lines[:3] + lines[4:]), batch_size=64)  # step 2 not logged
    assert [(window.first_step, window.last_step) for window in windows] == [(1, 1), (2, 3)]
    assert windows[1].seconds == pytest.approx(2 * 3.160)
    assert windows[1].data_seconds == pytest.approx(2 * 0.006)


def test_open_clip_steps_continue_across_epochs():
    second_epoch = OPEN_CLIP_LOG.replace("Train Epoch: 0", "Train Epoch: 1")
    windows = parse_open_clip_log(OPEN_CLIP_LOG + second_epoch, batch_size=64)
    assert [window.last_step for window in windows] == [1, 2, 3, 4, 5, 6]


def test_clipdro_metrics_give_window_times_and_skip_eval_lines():
    lines = [json.dumps({"step": 1, "samples_per_s": 32.0, "data_s_per_step": 1.5, "loss": 4.0}),
             json.dumps({"step": 3, "samples_per_s": 128.0, "data_s_per_step": 0.01, "loss": 3.9}),
             json.dumps({"step": 3, "eval": {"recall@1": 0.1}})]
    assert parse_clipdro_metrics(lines, batch_size=64) == [LogWindow(1, 1, 2.0, 1.5), LogWindow(2, 3, 1.0, 0.02)]


def test_a_log_going_back_in_steps_is_refused():
    lines = [json.dumps({"step": step, "samples_per_s": 10.0, "data_s_per_step": 0.0}) for step in (1, 2, 2)]
    with pytest.raises(ValueError, match="step 2 logged after step 2"):
        parse_clipdro_metrics(lines, batch_size=8)


def test_steady_state_counts_windows_after_the_warmup_with_total_and_median_rates():
    windows = [LogWindow(1, 1, 10.0, 9.0), LogWindow(2, 2, 1.0, 0.1), LogWindow(3, 4, 2.0, 0.0),
               LogWindow(5, 5, 2.0, 0.2)]
    result = steady_state(windows, warmup_steps=1, batch_size=100)
    assert result == Throughput(measured_steps=4, samples_per_s=pytest.approx(400 / 5.0),
                                median_samples_per_s=pytest.approx(100.0), data_fraction=pytest.approx(0.3 / 5.0))
    # A window that straddles the warm-up cut is dropped whole.
    assert steady_state(windows, warmup_steps=3, batch_size=100).measured_steps == 1


def test_steady_state_without_measured_steps_is_an_error():
    with pytest.raises(ValueError, match="warm-up"):
        steady_state([LogWindow(1, 1, 1.0, 0.0)], warmup_steps=1, batch_size=8)


def test_repeats_summarise_to_medians_and_add_up_steps():
    runs = [Throughput(10, 100.0, 110.0, 0.1), Throughput(10, 90.0, 95.0, 0.3), Throughput(10, 120.0, 99.0, 0.2)]
    assert summarise(runs) == Throughput(30, 100.0, 99.0, 0.2)


def test_ratios_and_targets():
    ratios = throughput_ratios(tempnet=96.0, clip=100.0, open_clip=98.0)
    assert ratios["tempnet_overhead"] == pytest.approx(100 / 96 - 1)  # extra time per sample
    assert ratios["ours_vs_open_clip"] == pytest.approx(100 / 98)
    assert ratios["tempnet_vs_open_clip"] == pytest.approx(96 / 98)
    assert targets_met(ratios) == {"tempnet_overhead_at_most_5_percent": True,
                                   "ours_at_least_as_fast_as_open_clip": True}
    slow = throughput_ratios(tempnet=90.0, clip=100.0, open_clip=101.0)
    assert targets_met(slow) == {"tempnet_overhead_at_most_5_percent": False,
                                 "ours_at_least_as_fast_as_open_clip": False}


def test_markdown_table_lists_every_trainer_and_the_ratios():
    summary = {"tempnet": Throughput(50, 96.0, 97.0, 0.01), "clip": Throughput(50, 100.0, 101.0, 0.02),
               "open_clip": Throughput(50, 98.0, 99.0, 0.03)}
    table = markdown_table(summary, throughput_ratios(96.0, 100.0, 98.0))
    assert "| tempnet | 96.0 | 97.0 | 1.0% | 50 |" in table
    assert "| open_clip | 98.0 | 99.0 | 3.0% | 50 |" in table
    assert "overhead over CLIP (our loop): +4.2%" in table
    assert "ours (clip loss) / open_clip: 1.020" in table


@pytest.mark.parametrize("batch_size", [64, 256, 2048])
def test_default_rho_stays_below_the_bound_with_the_papers_margin(batch_size):
    rho = default_rho(batch_size)
    assert rho < math.log(batch_size - 1)
    assert math.log(batch_size - 1) - rho == pytest.approx(0.6, abs=0.01)


def test_open_clip_train_data_lists_the_manifest_shards(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"shards": [{"path": "train-000000.tar", "num_samples": 2}, {"path": "train-000001.tar", "num_samples": 1}]}))
    folder = tmp_path.resolve()
    assert open_clip_train_data(tmp_path) == f"{folder}/train-000000.tar::{folder}/train-000001.tar"


def test_markdown_table_peak_memory_column():
    summary = {name: Throughput(10, 100.0, 100.0, 0.01) for name in ("tempnet", "clip", "open_clip")}
    ratios = throughput_ratios(100.0, 100.0, 100.0)
    assert "peak CUDA memory" not in markdown_table(summary, ratios)
    table = markdown_table(summary, ratios, {"tempnet": 5.25, "clip": 5.0})
    assert "| tempnet | 100.0 | 100.0 | 1.0% | 10 | 5.25 GiB |" in table
    assert "| open_clip | 100.0 | 100.0 | 1.0% | 10 | – |" in table
