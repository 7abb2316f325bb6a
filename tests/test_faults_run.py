"""Fault injection through the CLI, for the paths clusters take: signals to the whole process group
(timeout, Kubernetes, Slurm's SIGTERM and --signal=USR1@N), torchrun forwarding them, a kill in the
middle of a checkpoint write, a reused run name, a changed config on resume, a run that fails its
start-up checks. Each interrupted run is resumed and must match the uninterrupted one exactly.

The default suite keeps one exact-resume case per signal (SIGTERM and Slurm's SIGUSR1 to the process
group), both in one launched process with their uninterrupted reference; the signal to the main process
alone, torchrun's forwarding, the kill during a checkpoint write and the fatal errors are marked slow
(CI runs them).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipdro import cli
from clipdro.checkpoint import list_checkpoints, load_checkpoint
from clipdro.data.writer import ShardSample, write_shards
from tests.launch import REPO_ROOT

EPOCHS = 3  # 6 steps of 8 per epoch: long enough to be interrupted in the middle
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.sources=[{{shards: {shards}}}]", "data.batch_size=8", "data.num_workers=2",
            "data.resampled=false", "data.shuffle_buffer=16", "loss.rho=1.0", "tempnet.dropout=0.5",
            f"run.epochs={EPOCHS}", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
            "run.log_every=1", *extra]


def step_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [record for line in path.read_text().splitlines() if line.strip()
            for record in [json.loads(line)] if "loss" in record]


def losses(run_dir: Path) -> dict[int, float]:
    records = step_records(run_dir)
    steps = [record["step"] for record in records]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {record["step"]: record["loss"] for record in records}


def start(command: list[str]) -> subprocess.Popen:
    """A process in a session of its own, so that killpg reaches it and all its children."""
    return subprocess.Popen(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def wait_for_step(process: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(record["step"] >= step for record in step_records(run_dir)):
        if process.poll() is not None:
            pytest.fail(f"the run ended before step {step}:\n{process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"no step {step} within {timeout} s"
        time.sleep(0.05)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def train_command(*args: str) -> list[str]:
    # Every run of a comparison is a subprocess with the same environment (one thread): a run
    # inside pytest would sum in another order and differ in the last bits.
    return [sys.executable, "-m", "clipdro.cli", "train", *args]


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("full") / "run"
    status, output = finish(start(train_command(*overrides(shards, run_dir))))
    assert status == 0, output[-3000:]
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same logged losses and final weights, bit for bit."""
    assert losses(run_dir) == pytest.approx(losses(reference), abs=0, rel=0)
    final, expected = (load_checkpoint(list_checkpoints(run)[-1]) for run in (run_dir, reference))
    for key, value in expected["model"].items():
        assert (final["model"][key] == value).all(), key


def assert_resumes_exactly(shards: Path, run_dir: Path, reference: Path, *extra_args: str) -> None:
    (checkpoint,) = list_checkpoints(run_dir)[-1:]
    stopped_at = load_checkpoint(checkpoint)["step"]
    assert 0 < stopped_at < 6 * EPOCHS
    status, output = finish(start(train_command(*overrides(shards, run_dir), "--resume", "latest", *extra_args)))
    assert status == 0, output[-3000:]
    assert_same_run(run_dir, reference)


# One process trains the uninterrupted reference, then for each signal a run that the test interrupts with it
# (exit 0 after its checkpoint) and the same run resumed to its end. The engine restores the signal handlers
# it replaced, so each run starts clean; loader workers are new processes for every run.
SIGNALLED_RUNS = """
import json, sys
from clipdro.cli import main
runs = json.loads(sys.argv[1])
if main(["train", *runs.pop("full")]) != 0:
    sys.exit("the uninterrupted run failed")
for name, args in runs.items():
    if main(["train", *args]) != 0:
        sys.exit(f"the {name} run failed")
    print(f"resuming {name}", flush=True)
    if main(["train", *args, "--resume", "latest"]) != 0:
        sys.exit(f"the resumed {name} run failed")
"""


def test_signals_to_the_process_group_checkpoint_and_the_resumed_runs_are_exact(shards, tmp_path):
    # SIGTERM: what timeout, Kubernetes and Slurm at the time limit send; SIGUSR1: Slurm's --signal=USR1@N.
    signals = {"sigterm": signal.SIGTERM, "sigusr1": signal.SIGUSR1}
    runs = {name: overrides(shards, tmp_path / name) for name in ["full", *signals]}
    process = start([sys.executable, "-c", SIGNALLED_RUNS, json.dumps(runs)])
    for name, signum in signals.items():
        wait_for_step(process, tmp_path / name, 2)
        os.killpg(process.pid, signum)  # every process of the group, loader workers included
    status, output = finish(process)
    assert status == 0, output[-3000:]
    for name, signum in signals.items():
        (stopped_at,) = re.findall(rf"{signal.Signals(signum).name} received: checkpoint at step (\d+)", output)
        assert 0 < int(stopped_at) < 6 * EPOCHS  # stopped in the middle, then resumed to the end
        assert_same_run(tmp_path / name, tmp_path / "full")


# The signal to the main process alone (loader workers not signalled): interrupted and resumed in one process.
TRAIN_THEN_RESUME = """
import sys
from clipdro.cli import main
if main(["train", *sys.argv[1:]]) != 0:
    sys.exit("the interrupted run failed")
print("resuming", flush=True)
sys.exit(main(["train", *sys.argv[1:], "--resume", "latest"]))
"""


@pytest.mark.slow
def test_sigterm_to_the_main_process_alone_writes_a_checkpoint_and_the_resumed_run_is_exact(shards, uninterrupted,
                                                                                           tmp_path):
    run_dir = tmp_path / "run"
    process = start([sys.executable, "-c", TRAIN_THEN_RESUME, *overrides(shards, run_dir)])
    wait_for_step(process, run_dir, 2)
    os.kill(process.pid, signal.SIGTERM)
    status, output = finish(process)
    assert status == 0, output[-3000:]
    interrupted, _, resumed = output.partition("resuming\n")
    assert "SIGTERM received: checkpoint at step" in interrupted and "received" not in resumed
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_every_rank_and_resumes_exactly(shards, tmp_path):
    def torchrun(run_dir: Path, *extra: str) -> subprocess.Popen:
        return start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      "-m", "clipdro.cli", "train", *overrides(shards, run_dir, "data.batch_size=4"), *extra])

    full = tmp_path / "full"
    status, output = finish(torchrun(full))
    assert status == 0, output[-3000:]
    parts = tmp_path / "parts"
    process = torchrun(parts)
    wait_for_step(process, parts, 2)
    os.killpg(process.pid, signal.SIGTERM)  # torchrun forwards it too; both ranks must stop at one step
    status, output = finish(process)
    # torchrun itself reports the signal it got (non-zero), after its workers checkpointed and exited.
    assert "SIGTERM received: checkpoint at step" in output, output[-3000:]
    stopped_at = load_checkpoint(list_checkpoints(parts)[-1])["step"]
    assert 0 < stopped_at < 6 * EPOCHS
    status, output = finish(torchrun(parts, "--resume", "latest"))
    assert status == 0, output[-3000:]
    assert losses(parts) == pytest.approx(losses(full), abs=0, rel=0)


KILL_DURING_CHECKPOINT_WRITE = """
import os, signal, sys
import clipdro.checkpoint
from clipdro.cli import main

writes = {"count": 0}
replace = os.replace

def replace_or_die(source, target):  # the second checkpoint dies after its files, before its folder's rename
    if os.path.basename(target).startswith("step_"):
        writes["count"] += 1
        if writes["count"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    replace(source, target)

clipdro.checkpoint.os.replace = replace_or_die
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_last_one_intact(shards, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    process = start([sys.executable, "-c", KILL_DURING_CHECKPOINT_WRITE,
                     *overrides(shards, run_dir, "run.checkpoint_every=6")])
    status, output = finish(process)
    assert status == -signal.SIGKILL, output[-3000:]
    assert [path.name for path in list_checkpoints(run_dir)] == ["step_000000006"]
    leftovers = list((run_dir / "checkpoints").glob(".*.tmp"))
    assert leftovers  # what the kill left behind
    assert_resumes_exactly(shards, run_dir, uninterrupted, "run.checkpoint_every=6")
    assert not any(path.exists() for path in leftovers)  # removed when the resumed run started


def test_a_reused_run_name_is_refused_unless_resumed_or_overwritten(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    short = ("run.epochs=1", "data.num_workers=0")
    assert cli.main(["train", *overrides(shards, run_dir, *short)]) == 0
    before = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    capsys.readouterr()
    assert cli.main(["train", *overrides(shards, run_dir, *short, "optim.lr=5e-4")]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume latest" in err and len(err.strip().splitlines()) == 1
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == before
    assert cli.main(["train", *overrides(shards, run_dir, *short, "optim.lr=5e-4"), "--overwrite"]) == 0
    assert "lr: 0.0005" in (run_dir / "config.yaml").read_text()
    assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5, 6]  # the new run alone


def test_resuming_with_a_changed_schedule_is_refused(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *overrides(shards, run_dir, "data.num_workers=0", "run.stop_after=3")]) == 0
    capsys.readouterr()
    assert cli.main(["train", *overrides(shards, run_dir, "data.num_workers=0", "run.epochs=12"),
                     "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert f"changed config (run.epochs {EPOCHS} -> 12)" in err and len(err.strip().splitlines()) == 1
    # Where and how it runs may change: more workers, another checkpoint cadence, no stop.
    assert cli.main(["train", *overrides(shards, run_dir, "run.checkpoint_every=30"), "--resume", "latest"]) == 0


def test_a_run_that_fails_its_start_up_checks_leaves_no_folder(shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *overrides(shards, run_dir, "loss.rho=3.0")]) == 2  # rho >= log(B - 1)
    assert "rho=3.0" in capsys.readouterr().err
    assert not run_dir.exists()


FAILING_RUN = """
import sys
from clipdro import cli, engine
from clipdro.data.pipeline import ShardStream

ShardStream.max_failures_in_a_row = 20  # the data error comes after 20 bad images, not 10,000
if sys.argv[1] == "step":
    def fail(self, job, output):
        raise RuntimeError("injected failure in the training step")
    engine.RunEngine._update = fail
sys.exit(cli.main(["train", *sys.argv[2:]]))
"""


@pytest.mark.slow  # a launched run each (about 10 s)
@pytest.mark.parametrize("where", ["data", "step"])
def test_a_fatal_error_ends_the_process_with_its_loader_workers(shards, tmp_path, where):
    # Loader workers ignore SIGTERM (they must outlive a preemption signal), so multiprocessing's exit
    # handler cannot terminate them: unless the run stops them itself, the process waits for them forever.
    if where == "data":
        shards = tmp_path / "bad-images"
        write_shards([ShardSample(image=b"not an image", image_ext="jpg", caption=f"picture {index}",
                                  metadata={}) for index in range(48)], shards, samples_per_shard=12)
    process = start([sys.executable, "-c", FAILING_RUN, where, *overrides(shards, tmp_path / "run")])
    try:
        status, output = finish(process, timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the process did not exit after its error")
    assert status != 0
    expected = "in a row were unusable" if where == "data" else "injected failure in the training step"
    assert expected in output
