"""benchmarks/paper/zipf_split.py (the Zipf-resampled training split) and benchmarks/paper/family_recall.py
(recall@1 of head and tail families from per-query result files)."""

import json
import random
from collections import Counter

import pytest

from benchmarks.paper.coarse_captions import clean_samples
from benchmarks.paper.family_recall import family_table, label_groups, tail_recall_by_seed
from benchmarks.paper.zipf_split import draw_family, draw_split, head_and_tail, main, zipf_quotas
from clipdro.data.evalset import EvalSet
from clipdro.data.writer import ShardSample, write_shards
from clipdro.eval.results import PER_QUERY_FORMAT, query_sha256, write_results


def test_quotas_follow_rank_weights_with_largest_remainders():
    # ranks a, b, c, d (b before c: tie by name); weights 1, 1/2, 1/3, 1/4 of sum 25/12;
    # exact shares 12 * w * 12/25 = 5.76, 2.88, 1.92, 1.44 -> floors 5, 2, 1, 1 (9); the 3 left go to
    # the largest remainders c (.92), b (.88), a (.76).
    assert zipf_quotas({"d": 1, "c": 6, "b": 6, "a": 10}, size=12, exponent=1.0) == {"a": 6, "b": 3, "c": 2, "d": 1}
    assert zipf_quotas({"a": 5, "b": 1, "c": 9}, size=9, exponent=0.0) == {"c": 3, "a": 3, "b": 3}


def test_every_family_keeps_at_least_one_sample():
    # exact 2.58, 0.32, 0.10 -> 3, 0, 0; b and c each take one from the largest family
    assert zipf_quotas({"a": 100, "b": 1, "c": 1}, size=3, exponent=3.0) == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(ValueError, match="smaller than the number of families"):
        zipf_quotas({"a": 100, "b": 1, "c": 1}, size=2, exponent=1.0)


def test_a_family_is_repeated_evenly_only_when_smaller_than_its_quota():
    rng = random.Random(0)
    drawn = draw_family([4, 5, 6, 7], 3, rng)
    assert len(set(drawn)) == 3 and set(drawn) <= {4, 5, 6, 7}
    copies = Counter(draw_family([4, 5, 6], 8, rng))
    assert sum(copies.values()) == 8 and set(copies) == {4, 5, 6} and sorted(copies.values()) == [2, 3, 3]


def test_the_draw_is_seeded():
    categories = ["x"] * 30 + ["y"] * 20 + ["z"] * 5
    first, quotas = draw_split(categories, 40, 1.0, seed=3)
    assert first == draw_split(categories, 40, 1.0, seed=3)[0]
    assert first != draw_split(categories, 40, 1.0, seed=4)[0]
    assert Counter(categories[position] for position in first) == quotas


def test_head_is_the_first_half_of_the_families_by_zipf_count():
    assert head_and_tail({"e": 1, "d": 1, "c": 3, "b": 3, "a": 5}) == (["a", "b", "c"], ["d", "e"])
    assert head_and_tail({"a": 2, "b": 1}) == (["a"], ["b"])


def test_the_written_split_has_the_zipf_counts(tmp_path):
    # real family names: the summary looks up their labels in the openclipart test split
    categories = ["computer"] * 6 + ["shapes"] * 4 + ["people"] * 2 + ["logos"]
    write_shards((ShardSample(f"image {i}".encode(), "png", f"caption {i}", {"category": category, "source": f"{i}"})
                  for i, category in enumerate(categories)), tmp_path / "train", samples_per_shard=5)
    # exact 16 * w * 12/25 = 7.68, 3.84, 2.56, 1.92 -> 7, 3, 2, 1 + logos, shapes, computer = 8, 4, 2, 2
    assert main(["--shards", str(tmp_path / "train"), "--size", "16", "--seed", "1",
                 "--output", str(tmp_path / "zipf")]) == 0

    written = [sample for _, sample in clean_samples(tmp_path / "zipf" / "train")]
    assert Counter(sample.metadata["category"] for sample in written) == {"computer": 8, "shapes": 4, "people": 2,
                                                                         "logos": 2}
    for sample in written:
        source = sample.metadata["zipf_source_id"]
        assert sample.caption == f"caption {source}" and sample.metadata["category"] == categories[source]
    summary = json.loads((tmp_path / "zipf" / "zipf_summary.json").read_text())
    by_family = {family["family"]: family for family in summary["families"]}
    assert [family["family"] for family in summary["families"]] == ["computer", "shapes", "people", "logos"]
    assert {name: (family["train_count"], family["zipf_count"], family["group"]) for name, family in
            by_family.items()} == {"computer": (6, 8, "head"), "shapes": (4, 4, "head"), "people": (2, 2, "tail"),
                                   "logos": (1, 2, "tail")}
    assert by_family["computer"]["sampling"].startswith("with replacement")
    assert by_family["computer"]["max_copies_of_a_picture"] == 2 and by_family["computer"]["distinct_pictures"] == 6
    assert by_family["shapes"]["sampling"] == "without replacement"
    assert by_family["computer"]["test_classname"] == "computers" and by_family["computer"]["test_pictures"] == 251
    assert (summary["head_samples"], summary["tail_samples"]) == (12, 4)


# A 5-picture test set: labels 0..3 (picture 4 has label 3), picture 0 has two captions; families A, B head, C, D tail.
LABELS = [0, 1, 2, 3, 3]
CAPTIONS = [["a0", "a0 again"], ["b1"], ["c2"], ["d3"], ["d4"]]  # caption owners 0, 0, 1, 2, 3, 4


@pytest.fixture
def family_setup(tmp_path):
    evalset = EvalSet(root=tmp_path / "test", name="tiny", images=[f"{i}.png" for i in range(5)], captions=CAPTIONS,
                      labels=LABELS, classnames=["A", "B", "C", "D"])
    evalset.save()
    families = [{"family": name, "zipf_count": count, "test_label": label}
                for label, (name, count) in enumerate([("A", 10), ("B", 5), ("C", 3), ("D", 1)])]
    (tmp_path / "summary.json").write_text(json.dumps({"families": families}))
    return evalset, tmp_path / "summary.json"


def write_result(path, evalset, caption_ranks, image_ranks):
    """A clipdro retrieval result file with these per-query ranks (IR: per caption, TR: per picture)."""
    texts, owners = evalset.flat_captions()
    record = {"task": "retrieval", "dataset": evalset.name, "num_images": 5, "num_texts": 6,
              "metrics": {"image_retrieval_recall@1": sum(rank < 1 for rank in caption_ranks) / 6,
                          "text_retrieval_recall@1": sum(rank < 1 for rank in image_ranks) / 5},
              "per_query": {"format": PER_QUERY_FORMAT, "rank_cap": None,
                            "query_sha256": query_sha256(evalset.images, texts=texts, text_to_image=owners),
                            "image_retrieval_rank": caption_ranks, "text_retrieval_rank": image_ranks}}
    return str(write_results(path, record))


def test_family_recall_splits_recall_by_the_query_family(family_setup, tmp_path):
    evalset, summary = family_setup
    assert label_groups(summary) == {0: "head", 1: "head", 2: "tail", 3: "tail"}
    # tail captions 3, 4, 5 and tail pictures 2, 3, 4
    files = [write_result(tmp_path / "clip-seed0" / "r.json", evalset, [0, 1, 0, 0, 2, 0], [0, 0, 1, 0, 0]),
             write_result(tmp_path / "tempnet-seed0" / "r.json", evalset, [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0]),
             write_result(tmp_path / "clip-seed1" / "r.json", evalset, [0, 0, 0, 3, 3, 3], [0, 0, 0, 0, 4]),
             write_result(tmp_path / "tempnet-seed1" / "r.json", evalset, [1, 1, 1, 0, 3, 3], [0, 0, 0, 0, 0])]
    # clip seed 0: tail IR@1 2/3, TR@1 2/3; tempnet seed 0: 3/3, 3/3; clip seed 1: 0/3, 2/3; tempnet seed 1: 1/3, 3/3
    by_seed = tail_recall_by_seed(files, evalset, label_groups(summary))
    assert by_seed == {"clip": {0: pytest.approx(2 / 3), 1: pytest.approx(1 / 3)},
                       "tempnet": {0: pytest.approx(1.0), 1: pytest.approx(2 / 3)}}
    table = family_table(files, evalset, summary)
    # clip seed 0, head: IR@1 2/3 (captions 0, 1, 2), TR@1 2/2, mean 5/6; tail 2/3, 2/3, 2/3
    assert "| clip-seed0 | 66.67 | 100.00 | 83.33 | 66.67 | 66.67 | 66.67 |" in table
    assert "| clip (2) | 83.33 ± 23.57 |" in table
    # tail: tempnet - clip = +1/3 in both seeds
    assert "| tempnet − clip | tail | 3 captions + 3 images | +33.33 |" in table
    assert table.split("| tempnet − clip | tail |")[1].splitlines()[0].endswith("| +33.33, +33.33 |")
