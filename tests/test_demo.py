"""A shortened `make demo`: the demo config trains on the embedded data, evaluates, and reports (slow: the
report's parts are tested on a tiny run in tests/test_report.py)."""

import pytest

from clipdro import cli
from tests.launch import REPO_ROOT
from tests.run_factory import REPORT_SECTIONS


@pytest.mark.slow
def test_demo_config_trains_evaluates_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)  # the demo config names data/openclipart/... relative to the repository
    status = cli.main(["train", "--config", "configs/demo.yaml", f"run.output_dir={tmp_path}",
                       "run.epochs=1", "data.epoch_samples=512", "data.batch_size=128", "loss.rho=4.5",
                       "tempnet.num_prototypes=64"])
    assert status == 0
    printed = capsys.readouterr().out
    for metric in ("openclipart-test/image_retrieval_recall@1", "openclipart-test/text_retrieval_recall@10",
                   "openclipart-test/zeroshot_acc1"):
        assert metric in printed
    run_dir = tmp_path / "demo"
    assert cli.main(["report", str(run_dir), "--data", "data/openclipart/test", "--max-train-samples", "500"]) == 0
    report = (run_dir / "report" / "report.md").read_text()
    for section in [*REPORT_SECTIONS, "## Mean temperature per class"]:
        assert section in report
    assert "500 training samples" in report  # --max-train-samples
    assert any(path.suffix == ".png" for path in (run_dir / "report").iterdir())


@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_data_is_present(split):
    assert (REPO_ROOT / "data" / "openclipart" / split).is_dir()
