"""Checkpoints: sharded folders and their tables, the permissions they get, stale temporaries left by a
crash, single-file checkpoints of earlier releases, and files that are not clipdro checkpoints (one
UsageError naming the file, whatever torch.load raises). Resharding across world sizes: test_train_distributed."""

import os

import pytest
import torch

from clipdro.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    resolve_checkpoint,
    save_atomic,
    save_sharded_checkpoint,
)
from clipdro.errors import UsageError
from tests.launch import REPO_ROOT, run_torchrun
from tests.workers import reshard_tables

PAYLOAD = {"format": "clipdro-checkpoint/1", "step": 3, "weights": torch.arange(4.0), "loss": {"tau": 0.5}}
TABLES = {"loss/image_table.s": torch.linspace(0, 1, 7),
          "loss/image_table.seen": torch.tensor([True, False] * 3 + [True])}


def save(run_dir, step, payload=PAYLOAD):
    path = checkpoint_path(run_dir, step)
    save_sharded_checkpoint(payload, {key: value.clone() for key, value in TABLES.items()}, path)
    return path


def test_a_sharded_checkpoint_holds_the_payload_and_the_tables_whole(tmp_path):
    path = save(tmp_path, 3)
    assert path.name == "step_000000003" and list_checkpoints(tmp_path) == [path]
    assert resolve_checkpoint(path) == path and resolve_checkpoint(tmp_path) == path
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["weights"], PAYLOAD["weights"]) and state["loss"]["tau"] == 0.5
    assert torch.equal(state["loss"]["image_table.s"], TABLES["loss/image_table.s"])
    assert torch.equal(state["loss"]["image_table.seen"], TABLES["loss/image_table.seen"])
    into = {"loss/image_table.s": torch.zeros(7), "loss/image_table.seen": torch.zeros(7, dtype=torch.bool)}
    filled = load_checkpoint(path, tables=into)  # in place, as a resumed run's tables are
    assert torch.equal(into["loss/image_table.s"], TABLES["loss/image_table.s"])
    assert filled["loss"]["image_table.s"] is into["loss/image_table.s"]
    with pytest.raises(UsageError, match="no table 'loss/text_table.s'"):
        load_checkpoint(path, tables={"loss/text_table.s": torch.zeros(7)})


def test_writing_a_step_again_replaces_it_and_single_files_still_load(tmp_path):
    save(tmp_path, 2)
    path = save(tmp_path, 2, {**PAYLOAD, "step": 2})
    assert load_checkpoint(path)["step"] == 2 and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    single_file = path.parent / "step_000000001.pt"
    save_atomic({**PAYLOAD, "step": 1}, single_file)
    assert list_checkpoints(tmp_path) == [single_file, path] and load_checkpoint(single_file)["step"] == 1


def test_a_damaged_sharded_checkpoint_is_a_usage_error(tmp_path):
    path = save(tmp_path, 4)
    (path / ".metadata").write_bytes(b"half a checkpoint")
    with pytest.raises(UsageError, match=f"{path}: not a clipdro checkpoint"):
        load_checkpoint(path)


@pytest.fixture
def umask():
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_get_the_mode_the_umask_allows(tmp_path, umask, mask, mode):
    umask(mask)
    path = save(tmp_path, 3)
    assert {file.stat().st_mode & 0o777 for file in path.iterdir()} == {mode}
    assert path.stat().st_mode & 0o777 == mode | (mode & 0o444) >> 2  # folders: x wherever r
    assert os.umask(mask) == mask  # reading the umask left it as it was


def test_stale_temporaries_are_removed_and_checkpoints_kept(tmp_path):
    kept = save(tmp_path, 2)
    folder = kept.parent
    stale = [folder / ".step_000000003.pt.k2j4xq_1.tmp", folder / ".step_000000004.pt.abc.tmp",
             folder / ".step_000000005.tmp", folder / ".step_000000006.old"]
    for path in stale[:2]:
        path.write_bytes(b"half a checkpoint")
    for path in stale[2:]:
        path.mkdir()
        (path / "__0_0.distcp").write_bytes(b"half a shard")
    other = [folder / "notes.tmp", folder / "step_000000005.pt.tmp"]
    for path in other:
        path.write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == sorted(stale)
    assert not any(path.exists() for path in stale) and all(path.exists() for path in other)
    assert list_checkpoints(tmp_path) == [kept] and load_checkpoint(kept)["step"] == 3
    assert remove_stale_temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path / "no-such-run") == []


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("make, reason", [
    (lambda path: path.write_text("step: 3\nthis is a YAML file\n"), "UnpicklingError"),
    (lambda path: path.write_bytes(b""), "EOFError"),
    (lambda path: (torch.save(PAYLOAD, path), _truncated(path)), "RuntimeError"),
    (lambda path: torch.save([1, 2, 3], path), "it holds a list, not a dict"),
    (lambda path: torch.save({"weight": torch.zeros(2)}, path), "no 'format' field"),
])
def test_a_file_that_is_not_a_checkpoint_is_a_usage_error(tmp_path, make, reason):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(UsageError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a clipdro checkpoint (") and reason in message
    assert "\n" not in message and len(message) < len(str(path)) + 200


def test_a_folder_is_not_a_checkpoint_file(tmp_path):
    with pytest.raises(UsageError, match="a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def reshard_at(world_size: int, source, target) -> None:
    """Checkpoint ``source`` ('-': new tables) read at ``world_size`` ranks, checked row by row, written to
    ``target``."""
    if world_size == 1:
        reshard_tables.reshard(str(source), target)
    else:
        run_torchrun(str(REPO_ROOT / "tests" / "workers" / "reshard_tables.py"), str(source), str(target),
                     nproc=world_size)


@pytest.mark.slow
def test_tables_reshard_from_two_ranks_to_one_and_back(tmp_path):
    reshard_at(2, "-", tmp_path / "two")
    reshard_at(1, tmp_path / "two", tmp_path / "one")
    state = load_checkpoint(tmp_path / "one")
    assert state["loss"]["image_tau_table.tau"].shape == (reshard_tables.NUM_SAMPLES,)
    reshard_at(2, tmp_path / "one", tmp_path / "two-again")


@pytest.mark.slow
def test_tables_reshard_four_two_one_two_four(tmp_path):
    source = "-"
    for index, world_size in enumerate([4, 2, 1, 2, 4]):
        reshard_at(world_size, source, tmp_path / f"{index}-{world_size}")
        source = tmp_path / f"{index}-{world_size}"
