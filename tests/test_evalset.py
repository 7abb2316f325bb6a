import pytest

from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError


def test_round_trip_and_flat_captions(tmp_path):
    evalset = EvalSet(root=tmp_path, name="tiny", images=["a.png", "b.png"],
                      captions=[["x", "y"], ["z"]], labels=[1, 0], classnames=["cat", "dog"],
                      templates=["a photo of {}."])
    evalset.save()
    loaded = EvalSet.load(tmp_path)
    assert loaded == evalset
    assert loaded.flat_captions() == (["x", "y", "z"], [0, 0, 1])
    assert loaded.image_path(1) == tmp_path / "b.png"


@pytest.mark.parametrize("change", [
    {"captions": [["x"]]},
    {"captions": [["x"], []]},
    {"labels": [0, 2]},
    {"templates": ["no placeholder"]},
])
def test_invalid_sets_are_refused(tmp_path, change):
    fields = dict(root=tmp_path, name="bad", images=["a.png", "b.png"], captions=[["x"], ["y"]],
                  labels=[0, 1], classnames=["cat", "dog"])
    fields.update(change)
    with pytest.raises(UsageError):
        EvalSet(**fields).save()


def test_missing_set_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no evaluation set"):
        EvalSet.load(tmp_path / "nowhere")
