"""benchmarks/speed/gpu_check/ on the CPU: the refusal without CUDA, arguments, wheel selection and
installation, the report writers on made-up part results, the part runner, and the CPU-runnable pieces
of the parts (the nccl comparison against its float64 reference, the FAISS agreement with two CPU
indexes). The CUDA parts themselves run only on the GPU machine (docs/performance.md#gpu)."""

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from benchmarks.speed.gpu_check import main as main_module
from benchmarks.speed.gpu_check import nccl, throughput
from benchmarks.speed.gpu_check.faiss_part import FAISS_NOT_BROUGHT, faiss_agreement, faiss_part
from benchmarks.speed.gpu_check.main import main
from benchmarks.speed.gpu_check.nccl import compare_nccl_results, toy_reference
from benchmarks.speed.gpu_check.startup import (
    PARTS,
    Context,
    exit_status,
    markdown_report,
    parse_args,
    part_result,
    run_part,
    unpack_wheels,
    wheel_distribution,
    wheels_to_install,
    write_report,
)
from benchmarks.speed.gpu_check.throughput import open_clip_launcher
from tests.launch import REPO_ROOT


def test_refuses_without_cuda_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run([sys.executable, "-m", "benchmarks.speed.gpu_check", "--out", str(out),
                                "--work-dir", str(tmp_path / "work"), "--wheels", str(tmp_path / "wheels")],
                               cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device"), completed.stderr
    assert "docs/performance.md#gpu" in lines[0]
    assert not out.exists() and not (tmp_path / "work").exists()  # nothing installed or written


def test_refusal_comes_before_any_part(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(main_module, "install_wheels", lambda *a: pytest.fail("installed without CUDA"))
    assert main(["--out", str(tmp_path / "out"), "--wheels", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1


# --- arguments ---------------------------------------------------------------------------------------


def test_default_arguments_select_every_part_and_the_gpu_settings():
    args = parse_args([])
    assert args.parts == list(PARTS) == ["throughput", "nccl", "faiss", "precision"]
    assert (args.model, args.batch_size, args.precision) == ("ViT-B-32", 256, "amp_bf16")
    assert args.out.parent == REPO_ROOT / "runs" and args.out.name.startswith("gpu-check-")
    assert args.work_dir.name.startswith("gpu-check-work-") and args.work_dir != args.out
    assert args.time_budget <= 480  # "at most 8 minutes, installs included"
    assert args.steps % args.workers == 0 and args.steps > args.warmup_steps


def test_cpu_rehearsal_sizes_the_check_for_the_cpu_and_explicit_arguments_win():
    args = parse_args(["--cpu-rehearsal"])
    assert args.cpu_rehearsal and (args.model, args.batch_size) == ("clipdro-tiny-vit", 32)
    assert args.steps % args.workers == 0 and args.steps > args.warmup_steps
    assert parse_args(["--cpu-rehearsal", "--batch-size", "16"]).batch_size == 16
    assert not parse_args([]).cpu_rehearsal


def test_cpu_rehearsal_runs_a_part_without_cuda_and_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["--cpu-rehearsal", "--parts", "precision", "--precision-steps", "2",
                             "--precision-batch", "8", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert status == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["cpu_rehearsal"] is True and report["parts"]["precision"]["status"] == "passed"
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (CPU rehearsal: no GPU figures)")


def test_parts_can_be_selected_and_repeats_collapse(tmp_path):
    args = parse_args(["--parts", "precision", "nccl", "precision", "--out", str(tmp_path / "o")])
    assert args.parts == ["precision", "nccl"] and args.out == tmp_path / "o"


@pytest.mark.parametrize("argv", [["--parts", "speed"], ["--steps", "100", "--workers", "12"],
                                  ["--steps", "24", "--warmup-steps", "36"], ["--nccl-steps", "0"],
                                  ["--faiss-captions", "4"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


# --- wheels ------------------------------------------------------------------------------------------


def make_wheel(folder: Path, name: str, version: str, module: str, source: str = "VALUE = 1\n",
               extra: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", source)
        archive.writestr(f"{name}-{version}.dist-info/METADATA",
                         f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        for member, text in (extra or {}).items():
            archive.writestr(member, text)
    return path


def test_wheel_names_and_the_missing_ones(tmp_path):
    assert wheel_distribution(Path("open_clip_torch-3.3.0-py3-none-any.whl")) == ("open_clip_torch", "3.3.0")
    assert wheel_distribution(Path(
        "regex-2026.11.19-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl")) == (
        "regex", "2026.11.19")
    with pytest.raises(ValueError, match="not a wheel"):
        wheel_distribution(Path("notes.txt"))
    present = make_wheel(tmp_path, "timm", "1.0.0", "timm_fake")
    missing = make_wheel(tmp_path, "braceexpand", "0.1.7", "braceexpand_fake")
    make_wheel(tmp_path / "open_clip_train", "webdataset", "0.2.86", "wds_fake")  # a subfolder: never installed
    assert wheels_to_install(tmp_path, installed=lambda name: name == "timm") == [missing]
    assert present not in wheels_to_install(tmp_path)  # against the real environment: timm is installed here


def test_unpacked_wheels_import_from_the_site_folder(tmp_path):
    wheel = make_wheel(tmp_path / "wheels", "gpucheckdemo", "0.1", "gpucheckdemo", "VALUE = 42\n")
    site = tmp_path / "site"
    unpack_wheels([wheel], site)
    completed = subprocess.run([sys.executable, "-c", "import gpucheckdemo, importlib.metadata as m; "
                                "print(gpucheckdemo.VALUE, m.version('gpucheckdemo'))"],
                               env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["42", "0.1"]
    data_wheel = make_wheel(tmp_path / "wheels", "scripted", "1.0", "scripted",
                            extra={"scripted-1.0.data/scripts/run": "#!/bin/sh\n"})
    with pytest.raises(ValueError, match="install it with pip"):
        unpack_wheels([data_wheel], site)


def test_open_clip_launcher_puts_the_old_webdataset_first(tmp_path):
    assert open_clip_launcher(None, tmp_path) is None
    assert open_clip_launcher(tmp_path / "no-wheels", tmp_path) is None
    main_module = "import sys\nif __name__ == '__main__':\n    print('main', sys.argv[1:])\n"
    make_wheel(tmp_path / "wheels" / "open_clip_train", "gpucheckwds", "0.2.86", "gpucheckwds", "VERSION = '0.2.86'\n",
               extra={"gpucheckwds/__main__.py": main_module})
    launcher = open_clip_launcher(tmp_path / "wheels", tmp_path / "work")
    completed = subprocess.run([str(launcher), "-c", "import gpucheckwds; print(gpucheckwds.VERSION)"],
                               capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "0.2.86"
    # `-m MODULE ARGS` (how train_throughput starts open_clip's trainer) runs the module as __main__ with its
    # arguments; without CUDA no peak-memory line follows.
    completed = subprocess.run([str(launcher), "-m", "gpucheckwds", "--lr", "8e-4"], capture_output=True, text=True,
                               check=True)
    assert completed.stdout.splitlines() == ["main ['--lr', '8e-4']"]
    console = tmp_path / "console.txt"
    console.write_text(f"Train Epoch: 0 ...\n{throughput.PEAK_MEMORY_TAG}12.5000\n")
    assert throughput.open_clip_peak_memory(console) == 12.5
    assert throughput.open_clip_peak_memory(tmp_path / "none.txt") is None


# --- reports and the part runner -----------------------------------------------------------------------

FAKE_REPORT = {
    "command": "python3 -m benchmarks.speed.gpu_check --wheels wheels/py312",
    "started": "2026-12-01 10:00:00 UTC", "finished": "2026-12-01 10:06:00 UTC",
    "environment": {"gpus": ["NVIDIA H200"], "torch": "2.11.0", "cuda": "13.0", "nccl": "2.27.3", "python": "3.12.3"},
    "parts": {
        "nccl": part_result("passed", "world size 1 (nccl): ranks identical | within tolerance", seconds=21.5,
                            table_md="| quantity | diff |\n|---|---:|\n| params | 0 |\n"),
        "precision": part_result("failed", "tempnet loss: 6.1e-02 > 0.05", seconds=40.0),
        "faiss": part_result("skipped", FAISS_NOT_BROUGHT + " (faiss-gpu is not installed)", seconds=0.0),
        "throughput": part_result("measured", "tempnet 2500/s 20.1 GiB, clip 2600/s", seconds=250.0,
                                  table_md="| trainer | samples/s |\n|---|---:|\n| tempnet | 2500.0 |\n"),
    },
}


def test_report_writers_on_made_up_part_results(tmp_path):
    json_path, markdown_path = write_report(tmp_path / "out", FAKE_REPORT)
    assert (json_path.name, markdown_path.name) == ("gpu_check.json", "gpu_check.md")
    assert json.loads(json_path.read_text()) == FAKE_REPORT
    text = markdown_path.read_text()
    assert text == markdown_report(FAKE_REPORT)
    lines = text.splitlines()
    assert lines[0] == "# GPU check"
    assert "- 1 x NVIDIA H200; torch 2.11.0, CUDA 13.0, NCCL 2.27.3, Python 3.12.3" in lines
    header = lines.index("| part | status | result | seconds |")
    assert lines[header + 2] == "| nccl | passed | world size 1 (nccl): ranks identical \\| within tolerance | 21.5 |"
    assert lines[header + 4] == f"| faiss | skipped | {FAISS_NOT_BROUGHT} (faiss-gpu is not installed) | 0.0 |"
    assert "## nccl" in lines and "## throughput" in lines and "## precision" not in lines  # details only if any
    assert "| tempnet | 2500.0 |" in lines


def test_partial_report_and_exit_status():
    partial = {key: value for key, value in FAKE_REPORT.items() if key != "finished"}
    assert "finished not yet (partial report)" in markdown_report(partial)
    assert exit_status(FAKE_REPORT) == 1  # precision failed
    passing = {"parts": {name: result for name, result in FAKE_REPORT["parts"].items() if name != "precision"}}
    assert exit_status(passing) == 0  # measured and skipped parts do not fail the check
    with pytest.raises(ValueError, match="unknown status"):
        part_result("ok", "")


def test_run_part_times_skips_and_catches(tmp_path):
    args = parse_args([])
    context = Context(out=tmp_path, work_dir=tmp_path, deadline=time.monotonic() + 1000)
    result = run_part("nccl", lambda a, c: part_result("passed", "fine"), args, context)
    assert result["status"] == "passed" and result["seconds"] >= 0

    def broken(a, c):
        raise RuntimeError("torchrun exited 1\nmore detail")

    result = run_part("nccl", broken, args, context)
    assert result["status"] == "error" and result["summary"] == "RuntimeError: torchrun exited 1"
    assert "more detail" in result["traceback"]
    late = Context(out=tmp_path, work_dir=tmp_path, deadline=time.monotonic() + 10)
    result = run_part("throughput", lambda a, c: pytest.fail("started past the budget"), args, late)
    assert result["status"] == "skipped" and "of the time budget left" in result["summary"]


# --- CPU-runnable pieces of the parts ------------------------------------------------------------------


def test_nccl_comparison_passes_its_own_reference_and_catches_a_drift():
    reference = toy_reference(_initial_state(), world_size=1, steps=2)
    saved = {"world_size": 1, "steps": 2, "initial_state": _initial_state(), "losses": reference["losses"],
             "params_per_rank": reference["params"][None],
             "tables": dict(reference["tables"])}
    result = compare_nccl_results(saved)
    assert result["ranks_identical"] and result["matches_cpu_float64"]
    assert max(result["tolerance_ratio"].values()) == 0.0
    drifted = {**saved, "params_per_rank": saved["params_per_rank"] * (1 + 1e-3)}
    result = compare_nccl_results(drifted)
    assert not result["matches_cpu_float64"] and result["tolerance_ratio"]["params"] > 1


def _initial_state():
    import torch

    torch.manual_seed(0)
    return nccl.build_toy_model().state_dict()


def test_the_nccl_and_precision_parts_train_through_the_trainers_own_step(monkeypatch):
    """Both parts call clipdro.train.clip_step (the step train() runs), not a copy of it that could drift."""
    import clipdro.train
    from benchmarks.speed.gpu_check.precision import precision_agreement

    calls = []
    real_step = clipdro.train.clip_step

    def counting_step(*args, **kwargs):
        calls.append(args[1].name)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(clipdro.train, "clip_step", counting_step)
    toy_reference(_initial_state(), world_size=1, steps=2)
    assert calls == ["tempnet"] * 2
    calls.clear()
    result = precision_agreement("clipdro-tiny-vit", "cpu", batch=4, steps=1, losses=("clip",))
    assert calls == ["clip"] * 2 and set(result["runs"]["clip"]) == {"fp32", "amp_bf16"}


def test_faiss_part_without_faiss_gpu_records_the_reason():
    result = faiss_part(parse_args([]), Context(out=Path("."), work_dir=Path("."), deadline=0.0))
    assert result["status"] == "skipped" and result["reason"] == FAISS_NOT_BROUGHT
    assert result["summary"].startswith("GPU FAISS not measured: no wheel within the 64 MiB budget")


def test_faiss_agreement_of_two_cpu_searches():
    result = faiss_agreement(500, use_gpu=(False, False))
    assert (result["num_images"], result["num_captions"]) == (100, 500)
    assert result["recalls_equal"] and result["differing_ranks"] == {"image_retrieval": 0, "text_retrieval": 0}
    recall = result["metrics"]["cpu"]["image_retrieval_recall@1"]
    assert 0.0 < recall < 1.0  # the synthetic set is neither trivial nor hopeless


@pytest.mark.slow
def test_nccl_part_plumbing_on_two_gloo_ranks(tmp_path):
    """The whole nccl part with gloo on the CPU (torchrun, 2 ranks): about 15 s on 2 cores."""
    result = nccl.run_nccl_check(tmp_path, nproc=2, backend="gloo", steps=4, timeout=240)
    assert result["status"] == "passed", result
    assert result["world_size"] == 2 and result["ranks_identical"]
    assert max(result["tolerance_ratio"].values()) < 1.0
