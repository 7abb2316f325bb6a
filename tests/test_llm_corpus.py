"""data_tools/build_llm_corpus.py on a tiny fake python3.11-doc .deb (built with dpkg-deb, no network)."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from data_tools.build_llm_corpus import MIN_CHARACTERS, SPLITS, main

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")

PACKAGE = "python3.11-doc"
VERSION = "3.11.2-6+test1"
SOURCES = "usr/share/doc/python3.11/html/_sources"
PROSE = (
    "The json module exposes an API familiar to users of the standard library marshal and pickle "
    "modules. Encoding basic Python object hierarchies is a matter of one call, and decoding is another. "
)
COPYRIGHT = (
    "Python License\n==============\n\nPYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n"
    "--------------------------------------------\n\n1. This LICENSE AGREEMENT is between ...\n"
)


def expected_split(source: str) -> str:
    """The documented rule, computed independently of the module."""
    fraction = int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") / 2**64
    return "valid" if fraction < 0.05 else "test" if fraction < 0.10 else "train"


def pick_sources() -> list[str]:
    """Document paths that put two documents into each split, so every split is exercised."""
    wanted = {"train": 2, "valid": 2, "test": 2}
    chosen = []
    index = 0
    while any(wanted.values()):
        source = f"{SOURCES}/library/module{index}.rst.txt"
        split = expected_split(source)
        if wanted[split]:
            wanted[split] -= 1
            chosen.append(source)
        index += 1
    return chosen


@pytest.fixture(scope="module")
def fake_deb(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A .deb laid out like python3.11-doc, and the documents that must be kept (source -> text)."""
    tree = tmp_path_factory.mktemp("fake_package")
    kept: dict[str, str] = {}
    for number, source in enumerate(pick_sources()):
        kept[source] = f"Module {number}\n{'=' * 9}\n\n" + PROSE * (3 + number)
    # Non-ASCII text, including U+2028 (a line break for str.splitlines, which clipdro's .jsonl reader uses).
    kept[f"{SOURCES}/tutorial/café.rst.txt"] = "Café\n====\n\n" + PROSE * 4 + "naïve \u2028 text – ok\n"
    files = {
        **kept,
        f"{SOURCES}/includes/short.rst.txt": "A toctree-only index page.\n",  # under MIN_CHARACTERS: dropped
        "usr/share/doc/python3.11/html/library/json.html": "<html><p>" + PROSE * 5 + "</p></html>",  # not a source
        "usr/share/doc/python3.11/html/_static/notes.txt": PROSE * 5,  # .txt outside _sources
        f"usr/share/doc/{PACKAGE}/copyright": COPYRIGHT,
        "DEBIAN/control": (f"Package: {PACKAGE}\nVersion: {VERSION}\nArchitecture: all\n"
                           "Maintainer: Test <test@example.org>\nDescription: fake documentation\n"),
    }
    for relative, text in files.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_text(text, encoding="utf-8")
    # The real package links its doc folder's html to python3.11/html: it must not count twice.
    os.symlink("../python3.11/html", tree / f"usr/share/doc/{PACKAGE}/html")
    deb = tmp_path_factory.mktemp("deb") / f"{PACKAGE}_{VERSION}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   check=True, capture_output=True)
    assert all(len(text) >= MIN_CHARACTERS for text in kept.values())
    return deb, kept


@pytest.fixture(scope="module")
def built(fake_deb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "out"
    assert main(["--deb", str(fake_deb[0]), "--output", str(out)]) == 0
    return out


def read_split(out: Path, split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_splits_are_disjoint_cover_kept_documents_and_follow_the_rule(fake_deb, built):
    _, kept = fake_deb
    seen: dict[str, str] = {}
    for split in SPLITS:
        records = read_split(built, split)
        assert [record["source"] for record in records] == sorted(record["source"] for record in records)
        for record in records:
            assert list(record) == ["text", "source"]
            assert record["source"] not in seen, "a document is in two splits"
            seen[record["source"]] = split
            assert record["text"] == kept[record["source"]]  # text unchanged
    assert set(seen) == set(kept)
    assert all(split == expected_split(source) for source, split in seen.items())
    assert set(seen.values()) == set(SPLITS)


def test_manifest_counts_and_hashes(fake_deb, built):
    deb, kept = fake_deb
    manifest = json.loads((built / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["package"], manifest["version"]) == (PACKAGE, VERSION)
    assert manifest["licence"].startswith("PSF-2.0")
    assert manifest["deb"] == {"file": deb.name, "bytes": deb.stat().st_size,
                               "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()}
    assert manifest["dropped_short"] == [f"{SOURCES}/includes/short.rst.txt"]
    assert manifest["command"] == f"python -m data_tools.build_llm_corpus --package {PACKAGE} --version {VERSION}"
    assert set(manifest["files"]) == {"train.jsonl", "valid.jsonl", "test.jsonl", "copyright"}
    for name, entry in manifest["files"].items():
        data = (built / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (built / "copyright").read_text(encoding="utf-8") == COPYRIGHT
    for split in SPLITS:
        texts = [record["text"] for record in read_split(built, split)]
        counts = manifest["splits"][split]
        assert counts["documents"] == len(texts)
        assert counts["characters"] == sum(len(text) for text in texts)
        assert counts["text_bytes"] == sum(len(text.encode("utf-8")) for text in texts)
        # One document per line even for str.splitlines (clipdro.llm.data reads .jsonl that way).
        assert (built / f"{split}.jsonl").read_bytes().isascii()
    assert sum(manifest["splits"][split]["documents"] for split in SPLITS) == len(kept)


def test_rebuild_is_byte_identical_and_a_complete_output_is_kept(fake_deb, built, tmp_path, capsys):
    deb, _ = fake_deb
    names = ["train.jsonl", "valid.jsonl", "test.jsonl", "copyright", "manifest.json"]
    again = tmp_path / "again"
    assert main(["--deb", str(deb), "--output", str(again)]) == 0
    assert all((again / name).read_bytes() == (built / name).read_bytes() for name in names)

    capsys.readouterr()
    stamps = {name: (again / name).stat().st_mtime_ns for name in names}
    assert main(["--deb", str(deb), "--output", str(again), "--package", PACKAGE, "--version", VERSION]) == 0
    assert "nothing rebuilt" in capsys.readouterr().out
    assert stamps == {name: (again / name).stat().st_mtime_ns for name in names}

    (again / "valid.jsonl").write_text("damaged\n", encoding="utf-8")  # incomplete output: rebuilt
    assert main(["--deb", str(deb), "--output", str(again)]) == 0
    assert "nothing rebuilt" not in capsys.readouterr().out
    assert all((again / name).read_bytes() == (built / name).read_bytes() for name in names)


def test_missing_deb_and_wrong_version_are_clear_errors(fake_deb, tmp_path, capsys):
    missing = tmp_path / "absent.deb"
    assert main(["--deb", str(missing), "--output", str(tmp_path / "out")]) == 2
    assert f"--deb {missing}: no such file" in capsys.readouterr().err
    assert main(["--deb", str(fake_deb[0]), "--output", str(tmp_path / "out"), "--version", "9.9"]) == 2
    assert f"--version 9.9, but {fake_deb[0].name} is {VERSION}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
