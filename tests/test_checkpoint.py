"""Checkpoint files: the permissions they get, stale temporaries left by a crash, and files that
are not clipdro checkpoints (one UsageError naming the file, whatever torch.load raises)."""

import os

import pytest
import torch

from clipdro.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from clipdro.errors import UsageError

PAYLOAD = {"format": "clipdro-checkpoint/1", "step": 3, "weights": torch.arange(4.0)}


@pytest.fixture
def umask():
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_get_the_mode_the_umask_allows(tmp_path, umask, mask, mode):
    umask(mask)
    path = save_checkpoint(PAYLOAD, tmp_path, step=3, keep_last=0)
    assert path == checkpoint_path(tmp_path, 3)
    assert path.stat().st_mode & 0o777 == mode
    assert os.umask(mask) == mask  # reading the umask left it as it was


def test_stale_temporaries_are_removed_and_checkpoints_kept(tmp_path):
    kept = save_checkpoint(PAYLOAD, tmp_path, step=2, keep_last=0)
    folder = kept.parent
    stale = [folder / ".step_000000003.pt.k2j4xq_1.tmp", folder / ".step_000000004.pt.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
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
