"""benchmarks/paper/headline.py: the headline rows from a hand-made sweep's results.json and run logs."""

import json

import pytest

from benchmarks.paper import headline


def interval(method, reference, diff, low, high, seeds, covers="seeds and queries"):
    return {"method": method, "reference": reference, "seeds": seeds, "primary": "mean of IR@1 and TR@1",
            "metrics": {"mean of IR@1 and TR@1": {"diff": diff, "low": low, "high": high, "covers": covers}}}


@pytest.fixture
def sweep(tmp_path):
    runs = []
    for seed, (start, end, spread) in enumerate([(0.060, 0.050, 1.0), (0.058, 0.052, 1.5)]):
        runs += [{"method": "clip", "seed": seed, "name": f"clip-seed{seed}", "global_tau": 0.066 + seed * 0.002},
                 {"method": "sogclr", "seed": seed, "name": f"sogclr-seed{seed}", "global_tau": 0.066},
                 {"method": "tempnet", "seed": seed, "name": f"tempnet-seed{seed}",
                  "taus": {side: {"p50": end, "p95_over_p5": spread} for side in ("image", "text")}}]
        run_dir = tmp_path / f"tempnet-seed{seed}"
        run_dir.mkdir()
        records = [{"step": 11, "loss": 4.0, "image_tau_p50": start, "text_tau_p50": start + 0.001},
                   {"step": 22, "image_tau_p50": 0.0}]  # only the first logged percentiles count
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    results = {"settings": {"base_config": "benchmarks/paper/configs/pretrained.yaml",
                            "overrides": ["tempnet.start_epoch=0", "tempnet.lr=0.001"]},
               "runs": runs,
               "paired_intervals": [interval("tempnet", "clip", -0.0123, -0.031, 0.0064, [0, 1]),
                                    interval("sogclr", "clip", 0.004, -0.01, 0.02, [0, 1]),
                                    interval("tempnet", "sogclr", 0.01, -0.02, 0.03, [1], covers="queries only")]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_headline_rows(sweep):
    tempnet, sogclr, one_seed = headline.headline_rows(sweep, [("tempnet", "clip"), ("sogclr", "clip"),
                                                               ("tempnet", "sogclr")])
    assert tempnet == ("| tempnet − clip | pretrained.yaml, 132 steps, ρ 4.92, TempNet lr 0.001, seeds 0, 1 | -1.2 | "
                       "[-3.1, +0.6] | image 0.059 → 0.051, p95/p5 1.00–1.50; text 0.060 → 0.051, p95/p5 1.00–1.50 |")
    assert sogclr == ("| sogclr − clip | pretrained.yaml, 132 steps, seeds 0, 1 | +0.4 | [-1.0, +2.0] | "
                      "one fixed τ 0.066 |")
    assert "TempNet lr 0.001, seed 1 |" in one_seed
    assert one_seed.endswith("| +1.0 | [-2.0, +3.0] (queries only) | image 0.058 → 0.052, p95/p5 1.50; "
                             "text 0.059 → 0.052, p95/p5 1.50 |")
    assert headline.headline_rows(sweep, []) == []


def test_clip_is_a_learned_global_temperature_and_missing_pairs_exit(sweep, capsys):
    results = json.loads((sweep / "results.json").read_text())
    results["paired_intervals"].append(interval("clip", "sogclr", 0.0, -0.01, 0.01, [0, 1]))
    (sweep / "results.json").write_text(json.dumps(results))
    [row] = headline.headline_rows(sweep, [("clip", "sogclr")])
    assert row.endswith("| one learned τ: 0.070 → 0.067 |")
    with pytest.raises(SystemExit, match="no paired interval isogclr − clip"):
        headline.headline_rows(sweep, [("isogclr", "clip")])
    assert headline.main([str(sweep), "tempnet:clip"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == headline.HEADER
