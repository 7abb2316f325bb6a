import io

import numpy as np
import pytest
from PIL import Image

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


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_check_images_names_every_unreadable_image(tmp_path):
    (tmp_path / "images").mkdir()
    names = [f"images/{i}.png" for i in range(6)]
    for name in names:
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name)
    evalset = EvalSet(root=tmp_path, name="tiny", images=names, captions=[["x"]] * 6)
    evalset.check_images()  # all readable: no error

    (tmp_path / "images/1.png").unlink()
    evalset.images[1] = "images/1.jpg"
    (tmp_path / "images/1.jpg").write_bytes(_truncated_jpeg())
    with pytest.raises(UsageError) as error:
        evalset.check_images()
    message = str(error.value)
    assert message.startswith("1 unreadable image in evaluation set 'tiny' at ")
    assert "images/1.jpg (" in message and "\n" not in message

    for i in (2, 3, 4):
        (tmp_path / f"images/{i}.png").write_bytes(b"not an image")
    (tmp_path / "images/5.png").unlink()
    with pytest.raises(UsageError, match=r"^5 unreadable images in .*: images/1\.jpg \(.*\), images/2\.png "
                                         r"\(not an image PIL can identify\), images/3\.png \(.*\), \.\.\. "
                                         r"\(2 more\)$"):
        evalset.check_images(workers=2)
