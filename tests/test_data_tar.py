"""The loader's tar parser against webdataset's own grouping, and its damage reports."""

import gzip
import io
import tarfile

import pytest
import webdataset as wds
from shard_factory import image_bytes, write_tar

from clipdro.data.tar_samples import tar_samples


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def varied_tar(path, tar_format):
    """Members that exercise the naming rules: long names, folders, meta files, upper-case suffixes."""
    # ustar keeps names over 100 characters in its 155-character prefix field (leading folders only).
    long_folder = "deep/" + "x" * (90 if tar_format == tarfile.USTAR_FORMAT else 120) + "/"
    with tarfile.open(path, "w", format=tar_format) as tar:
        add(tar, "__meta__", b"skipped by webdataset")
        directory = tarfile.TarInfo("folder")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        add(tar, "folder/000001.JPG", image_bytes(1))
        add(tar, "folder/000001.txt", b"one")
        add(tar, "folder/000001.meta.json", b"{}")
        add(tar, f"{long_folder}000002.jpg", image_bytes(2))
        add(tar, f"{long_folder}000002.txt", b"two" * 200)
        add(tar, "noextension", b"dropped")
        add(tar, "000003.txt", b"")
    return path


def ours(path, errors=None):
    errors = [] if errors is None else errors
    with open(path, "rb") as stream:
        return list(tar_samples(stream, str(path), errors))


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_samples_match_webdatasets_grouping(tmp_path, tar_format):
    path = varied_tar(tmp_path / "a.tar", tar_format)
    errors = []
    expected = list(wds.tarfile_samples([{"url": str(path)}]))
    assert ours(path, errors) == expected and not errors
    gzipped = tmp_path / "a.tar.gz"
    gzipped.write_bytes(gzip.compress(path.read_bytes()))
    assert [dict(s, __url__=str(path)) for s in ours(gzipped)] == expected


def test_damage_is_reported_and_samples_before_it_kept(tmp_path):
    path = write_tar(tmp_path / "a.tar", [("1.jpg", b"a" * 700), ("1.txt", b"one"), ("2.jpg", b"b" * 700),
                                         ("2.txt", b"two")])
    whole = path.read_bytes()
    with tarfile.open(path) as tar:
        offsets = {m.name: (m.offset, m.offset_data) for m in tar}
    cases = {
        "member cut": (whole[:offsets["2.jpg"][1] + 100], "truncated: member 2.jpg is cut off", ["1"]),
        "no end marker": (whole[:offsets["2.txt"][1] + 512], "without the end-of-archive marker", ["1", "2"]),
        "corrupt header": (whole[:offsets["2.jpg"][0]] + b"x" * 512 + whole[offsets["2.jpg"][0] + 512:],
                           "invalid tar header", ["1"]),
        "empty file": (b"", "without the end-of-archive marker", []),
    }
    for name, (data, message, keys) in cases.items():
        path.write_bytes(data)
        errors = []
        assert [s["__key__"] for s in ours(path, errors)] == keys, name
        assert len(errors) == 1 and message in str(errors[0]), name
