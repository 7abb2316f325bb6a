import os
from pathlib import Path

import pytest

# A stray pretrained tag must fail at once instead of retrying the hub for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Tiny trained runs shared by the evaluation, export and report tests (each trains in seconds).
@pytest.fixture(scope="session")
def tempnet_run(tmp_path_factory):
    from tests.run_factory import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("tempnet_run"), "tempnet")


@pytest.fixture(scope="session")
def isogclr_run(tmp_path_factory):
    from tests.run_factory import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("isogclr_run"), "isogclr")


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """48 generated samples (32 px) in shards of 12: the training data of the trainer and engine tests."""
    from tests.shard_factory import write_dense

    folder = tmp_path_factory.mktemp("shards")
    write_dense(folder, count=48, per_shard=12, size=32)
    return folder


@pytest.fixture(scope="session")
def labelled_evalset(tmp_path_factory) -> Path:
    """A 6-image evaluation set named "tiny" with 2 captions per image and 3 classes (in-training evaluation)."""
    from clipdro.data.evalset import EvalSet
    from tests.shard_factory import image_bytes

    root = tmp_path_factory.mktemp("evalset")
    (root / "images").mkdir()
    for index in range(6):
        (root / "images" / f"{index}.jpg").write_bytes(image_bytes(index, size=32))
    EvalSet(root=root, name="tiny", images=[f"images/{index}.jpg" for index in range(6)],
            captions=[[f"picture number {index}", f"image {index}"] for index in range(6)],
            labels=[index % 3 for index in range(6)], classnames=["red", "green", "blue"],
            templates=["a picture of {}."]).save()
    return root
