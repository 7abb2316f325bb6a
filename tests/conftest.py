import os

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
