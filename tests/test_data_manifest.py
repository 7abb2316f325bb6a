import json
import tarfile

import pytest
from shard_factory import dense_samples, write_dense

from clipdro.data.manifest import Manifest, ShardInfo
from clipdro.data.writer import ShardSample, write_shards
from clipdro.errors import UsageError


def test_writer_layout_dense_ids_and_manifest(tmp_path):
    manifest = write_dense(tmp_path, count=7, per_shard=3)
    assert [s.num_samples for s in manifest.shards] == [3, 3, 1]
    assert manifest.num_samples == 7 and manifest.id_rule == "dense"
    ids = []
    for url in manifest.shard_urls():
        with tarfile.open(url) as tar:
            names = tar.getnames()
            assert len(names) % 3 == 0 and names[0].endswith(".jpg") and names[1].endswith(".txt")
            for name in names:
                if name.endswith(".json"):
                    record = json.loads(tar.extractfile(name).read())
                    assert name == f"{record['sample_id']:09d}.json"
                    ids.append(record["sample_id"])
    assert ids == list(range(7))
    assert Manifest.load(tmp_path) == manifest


def test_writer_is_byte_reproducible(tmp_path):
    write_dense(tmp_path / "a", count=4, per_shard=4)
    write_dense(tmp_path / "b", count=4, per_shard=4)
    assert (tmp_path / "a/train-000000.tar").read_bytes() == (tmp_path / "b/train-000000.tar").read_bytes()


def test_writer_refuses_bad_input_and_used_folder(tmp_path):
    write_dense(tmp_path, count=2, per_shard=2)
    with pytest.raises(UsageError, match="already holds"):
        write_dense(tmp_path, count=2, per_shard=2)
    with pytest.raises(UsageError, match="image_ext"):
        write_shards([ShardSample(b"x", "gif", "a cat")], tmp_path / "gif")
    with pytest.raises(UsageError, match="reserved|sample_id"):
        write_shards([ShardSample(b"x", "jpg", "a cat", {"sample_id": 3})], tmp_path / "meta")
    with pytest.raises(UsageError, match="no samples"):
        write_shards([], tmp_path / "empty")


def test_manifest_round_trip_keeps_extra_fields(tmp_path):
    manifest = Manifest(num_samples=20005, id_rule="key", root=tmp_path, extra={"source": "img2dataset"},
                        shards=[ShardInfo("00000.tar", 9), ShardInfo("00001.tar", 5)])
    manifest.save(tmp_path / "manifest.json")
    assert Manifest.load(tmp_path / "manifest.json") == manifest


@pytest.mark.parametrize("change, message", [
    ({"id_rule": "hash"}, "id_rule"),
    ({"num_samples": 5}, "dense ids"),
    ({"shards": []}, "no shards"),
    ({"shards": [ShardInfo("/abs/a.tar", 6)]}, "relative"),
    ({"shards": [ShardInfo("a.tar", 3), ShardInfo("a.tar", 3)]}, "twice"),
])
def test_invalid_manifests_are_refused(tmp_path, change, message):
    fields = dict(num_samples=6, id_rule="dense", root=tmp_path, shards=[ShardInfo("a.tar", 6)])
    fields.update(change)
    with pytest.raises(UsageError, match=message):
        Manifest(**fields).validate()


def test_key_rule_needs_room_for_every_sample(tmp_path):
    with pytest.raises(UsageError, match="more than num_samples"):
        Manifest(num_samples=3, id_rule="key", root=tmp_path, shards=[ShardInfo("a.tar", 4)]).validate()


def test_load_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="no manifest"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "clipdro-manifest/1", "shards": []}')
    with pytest.raises(UsageError, match="not a valid manifest"):
        Manifest.load(tmp_path)


def test_check_files_names_the_missing_shard(tmp_path):
    manifest = write_shards(dense_samples(2), tmp_path, samples_per_shard=1)
    (tmp_path / "train-000001.tar").unlink()
    with pytest.raises(UsageError, match="train-000001.tar is missing"):
        manifest.check_files()
