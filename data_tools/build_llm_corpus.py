"""Build an English text corpus for `clipdro llm train` from a Debian documentation package.

    python -m data_tools.build_llm_corpus                     # apt-get download python3.11-doc
    python -m data_tools.build_llm_corpus --version 3.11.2-6+deb12u8 --output DIR
    python -m data_tools.build_llm_corpus --deb python3.11-doc_3.11.2-6+deb12u8_all.deb

Steps: fetch the package's .deb with ``apt-get download PACKAGE[=VERSION]`` (or take ``--deb``),
unpack it with ``dpkg-deb -x``, and take every Sphinx reST source the HTML documentation ships
(``*.txt`` files under a ``_sources`` folder, e.g. ``html/_sources/library/json.rst.txt``) as one
document, text unchanged. Documents under MIN_CHARACTERS characters (toctree-only index pages,
include snippets) are dropped. Each document goes to valid, test or train by a stable hash of its
path inside the package (SPLIT_RULE), so the split never depends on which other files exist. The
output folder (default ``$CLIPDRO_CACHE/llm-corpus/PACKAGE_VERSION``, ``$CLIPDRO_CACHE`` defaulting
to ``~/.cache/clipdro``) gets

    train.jsonl, valid.jsonl, test.jsonl   one {"text": ..., "source": PATH} object per line
    copyright                              the package's copyright file (its licence terms)
    manifest.json                          package, version, licence, the .deb's sha256, counts
                                           and sha256 of every file, the split rule, the command

The files are byte-identical on every run for the same .deb: documents are read in sorted path
order, JSON is written with fixed key order and ASCII escapes (so no line holds a character that
str.splitlines() would break at), and nothing records a time or a local path. If the output folder
already holds a complete manifest for the same .deb (same sha256, every file present and intact),
nothing is rebuilt.

Use the splits with ``data.train: DIR/train.jsonl`` and ``data.eval: DIR/valid.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clipdro.errors import UsageArgumentParser, UsageError

DEFAULT_PACKAGE = "python3.11-doc"
MIN_CHARACTERS = 500
VALID_FRACTION = 0.05
TEST_FRACTION = 0.05
SPLITS = ("train", "valid", "test")
SPLIT_RULE = (
    f"f = int.from_bytes(sha256(source.encode('utf-8')).digest()[:8], 'big') / 2**64 with source the "
    f"document's path inside the package; valid if f < {VALID_FRACTION}, test if f < "
    f"{VALID_FRACTION + TEST_FRACTION}, train otherwise"
)
DOCUMENT_RULE = (
    "every *.txt file under a _sources folder (Sphinx's reST sources of the HTML documentation), "
    f"UTF-8 text unchanged, one document per file; documents under {MIN_CHARACTERS} characters dropped"
)
PSF_HEADING = "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2"


@dataclass(frozen=True)
class DebInfo:
    package: str
    version: str
    architecture: str

    @property
    def file_name(self) -> str:
        """The archive's canonical name, as apt-get download writes it."""
        return f"{self.package}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True)
class Document:
    source: str  # path inside the package, e.g. usr/share/doc/python3.11/html/_sources/library/json.rst.txt
    text: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], cwd: Path | None = None) -> str:
    """stdout of ``command``; UsageError naming the command if it is missing or fails."""
    try:
        return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise UsageError(f"{command[0]} not found: this tool needs Debian's apt-get and dpkg-deb") from None
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or error.stdout or "").strip().splitlines()
        raise UsageError(f"`{' '.join(command)}` failed: {detail[-1] if detail else f'status {error.returncode}'}") \
            from None


def download_deb(package: str, version: str | None, folder: Path) -> Path:
    """``apt-get download PACKAGE[=VERSION]`` into ``folder``; the .deb it wrote."""
    _run(["apt-get", "download", f"{package}={version}" if version else package], cwd=folder)
    debs = sorted(folder.glob("*.deb"))
    if len(debs) != 1:
        raise UsageError(f"apt-get download {package} left {len(debs)} .deb files, expected 1")
    return debs[0]


def read_deb_info(deb: Path) -> DebInfo:
    fields: dict[str, str] = {}
    for line in _run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"]).splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    missing = [key for key in ("Package", "Version", "Architecture") if not fields.get(key)]
    if missing:
        raise UsageError(f"{deb}: no {', '.join(missing)} in the package's control file")
    return DebInfo(fields["Package"], fields["Version"], fields["Architecture"])


def split_of(source: str) -> str:
    """valid, test or train for a document's path (SPLIT_RULE)."""
    fraction = int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") / 2**64
    if fraction < VALID_FRACTION:
        return "valid"
    if fraction < VALID_FRACTION + TEST_FRACTION:
        return "test"
    return "train"


def collect_documents(root: Path) -> list[Document]:
    """Every Sphinx source under ``root`` (symlinks skipped: they alias folders listed elsewhere), sorted by path."""
    paths = []
    for folder, subfolders, files in os.walk(root):  # does not descend into symlinked folders
        subfolders.sort()
        for name in files:
            path = Path(folder) / name
            relative = path.relative_to(root)
            if name.endswith(".txt") and "_sources" in relative.parts[:-1] and not path.is_symlink():
                paths.append(relative.as_posix())
    documents = []
    for source in sorted(paths):
        try:
            documents.append(Document(source, (root / source).read_text(encoding="utf-8")))
        except UnicodeDecodeError as error:
            raise UsageError(f"{source}: not UTF-8 text ({error})") from None
    return documents


def licence_of(copyright_text: str | None) -> str:
    """One line naming the licence a Debian copyright file gives for the package as a whole."""
    if copyright_text is None:
        return "unknown: the package has no copyright file"
    if PSF_HEADING in copyright_text:
        return ("PSF-2.0: Python Software Foundation License Version 2 (the 'Python License' of the copyright "
                "file, granted for Python 'and its associated documentation')")
    for paragraph in copyright_text.split("\n\n"):  # machine-readable (DEP-5) copyright: the Files: * paragraph
        lines = paragraph.strip().splitlines()
        if any(line.partition(":")[0] == "Files" and line.partition(":")[2].split() == ["*"] for line in lines):
            for line in lines:
                if line.startswith("License:"):
                    return line[len("License:"):].strip()
    return "see the copyright file"


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (a crash never leaves half a file under the final name)."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def jsonl_bytes(documents: list[Document]) -> bytes:
    lines = [json.dumps({"text": document.text, "source": document.source}) + "\n" for document in documents]
    return "".join(lines).encode("ascii")  # json.dumps escapes non-ASCII characters


def complete_manifest(out_dir: Path, deb_sha256: str) -> dict[str, object] | None:
    """The manifest in ``out_dir`` if it is for the same .deb and every file it lists is intact, else None."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
        if manifest["deb"]["sha256"] != deb_sha256:
            return None
        for name, entry in manifest["files"].items():
            if sha256_of(out_dir / name) != entry["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def build(out_dir: Path, deb: Path, info: DebInfo, deb_sha256: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="llm-corpus-") as scratch:
        root = Path(scratch) / "root"
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        documents = collect_documents(root)
        copyright_path = root / "usr" / "share" / "doc" / info.package / "copyright"
        copyright_bytes = copyright_path.read_bytes() if copyright_path.is_file() else None
    if not documents:
        raise UsageError(f"{deb.name}: no Sphinx sources (*.txt under a _sources folder) in the package")
    kept = [document for document in documents if len(document.text) >= MIN_CHARACTERS]
    dropped = [document.source for document in documents if len(document.text) < MIN_CHARACTERS]
    by_split: dict[str, list[Document]] = {split: [] for split in SPLITS}
    for document in kept:
        by_split[split_of(document.source)].append(document)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # an interrupted rebuild is never "complete"
    outputs = {f"{split}.jsonl": jsonl_bytes(by_split[split]) for split in SPLITS}
    if copyright_bytes is not None:
        outputs["copyright"] = copyright_bytes
    for name, data in outputs.items():
        _write(out_dir / name, data)
    manifest = {
        "package": info.package,
        "version": info.version,
        "architecture": info.architecture,
        "licence": licence_of(copyright_bytes.decode("utf-8", "replace") if copyright_bytes is not None else None),
        "deb": {"file": info.file_name, "bytes": deb.stat().st_size, "sha256": deb_sha256},
        "documents": DOCUMENT_RULE,
        "split_rule": SPLIT_RULE,
        "splits": {
            split: {
                "file": f"{split}.jsonl",
                "documents": len(by_split[split]),
                "characters": sum(len(document.text) for document in by_split[split]),
                "text_bytes": sum(len(document.text.encode("utf-8")) for document in by_split[split]),
            }
            for split in SPLITS
        },
        "dropped_short": dropped,
        "files": {
            name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in outputs.items()
        },
        "command": f"python -m data_tools.build_llm_corpus --package {info.package} --version {info.version}",
    }
    _write(out_dir / "manifest.json", (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    return manifest


def summary(manifest: dict[str, object], out_dir: Path) -> str:
    splits = manifest["splits"]
    parts = ", ".join(
        f"{split} {splits[split]['documents']} documents / {splits[split]['text_bytes'] / 1e6:.2f} MB"
        for split in SPLITS
    )
    total = sum(splits[split]["text_bytes"] for split in SPLITS) / 1e6
    return (f"{manifest['package']} {manifest['version']} ({manifest['licence'].split(':')[0]}): "
            f"{sum(splits[split]['documents'] for split in SPLITS)} documents, {total:.2f} MB of text "
            f"({parts}; {len(manifest['dropped_short'])} documents under {MIN_CHARACTERS} characters dropped), "
            f"written to {out_dir}.")


def default_output(info: DebInfo) -> Path:
    from clipdro.towers import cache_dir  # imported here: clipdro.towers loads torch

    return cache_dir() / "llm-corpus" / f"{info.package}_{info.version.replace(':', '%3a')}"


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="llm-corpus-deb-") as download_dir:
        if args.deb is not None:
            deb = args.deb
            if not deb.is_file():
                raise UsageError(f"--deb {deb}: no such file")
        else:
            print(f"downloading {args.package or DEFAULT_PACKAGE} with apt-get download ...", file=sys.stderr)
            deb = download_deb(args.package or DEFAULT_PACKAGE, args.version, Path(download_dir))
        info = read_deb_info(deb)
        for option, wanted, found in (("--package", args.package, info.package),
                                      ("--version", args.version, info.version)):
            if wanted is not None and wanted != found:
                raise UsageError(f"{option} {wanted}, but {deb.name} is {found}")
        out_dir = args.output if args.output is not None else default_output(info)
        deb_sha256 = sha256_of(deb)
        manifest = complete_manifest(out_dir, deb_sha256)
        if manifest is not None:
            print(f"{out_dir} already holds the complete corpus of {info.file_name} (sha256 {deb_sha256}); "
                  "nothing rebuilt.")
            return 0
        manifest = build(out_dir, deb, info, deb_sha256)
    print(summary(manifest, out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(prog="python -m data_tools.build_llm_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path,
                        help="output folder (default: $CLIPDRO_CACHE/llm-corpus/PACKAGE_VERSION)")
    parser.add_argument("--package", help=f"Debian package to download (default {DEFAULT_PACKAGE})")
    parser.add_argument("--version", help="package version to download (default: apt's candidate)")
    parser.add_argument("--deb", type=Path, help="use this .deb instead of downloading one")
    try:
        return run(parser.parse_args(argv))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
