"""Build the embedded image-text data set ``data/openclipart/`` from Debian's openclipart-svg.

    apt-get install -y openclipart-svg && pip install cairosvg   # build-time only
    python -m data_tools.build_openclipart                       # writes data/openclipart/

Steps: list the package's SVG files (symlinks are aliases of files listed elsewhere and
are skipped), read ``dc:title`` / ``dc:description`` /
``dc:creator`` from the RDF metadata, clean the captions (data_tools/openclipart_captions.py),
render each picture with cairosvg to a 64x64 RGB image, drop identical renders (the
same picture stored as several files), split by picture into a
category-stratified test set of 1,000 images and a training set, and write

    data/openclipart/train/     WebDataset shards (img2dataset layout) + manifest.json
    data/openclipart/test/      eval.json + images/NNNNNN.webp (clipdro evaluation set)
    data/openclipart/build_stats.json   the counts quoted in data/README.md

The output is byte-identical across runs: inputs are sorted, the split uses a fixed seed,
renders are collected in input order, tar headers are fixed by the shard writer, and JSON
is written with stable key order. (Identical bytes assume the same cairosvg/cairo and
Pillow/libwebp versions; other versions may encode pixels slightly differently.)
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

from clipdro.data.evalset import EvalSet
from clipdro.data.writer import ShardSample, write_shards
from data_tools.openclipart_captions import clean_caption

PACKAGE = "openclipart-svg"
SEED = 20240611
IMAGE_SIZE = 64  # final images are IMAGE_SIZE x IMAGE_SIZE
# Render larger than the target, crop to the drawn content, then downscale: many Sodipodi
# files draw a small picture on an A4 page, which at 64 px directly would be a dot.
RENDER_LONG_SIDE = 256
# Content smaller than this (in the first render) is rendered again at a larger scale so the
# cropped picture still has at least this many pixels on its long side before downscaling.
MIN_CONTENT_PIXELS = 128
MAX_RENDER_LONG_SIDE = 4096
# Lossy WebP keeps the committed data under 25 MB, which PNG (about 3.5 KB per 64 px image),
# JPEG q90 and lossless WebP (about 2 KB) cannot: every shard sample also carries about 2.8 KB
# of tar headers and padding. Quality 90 (1.1 KB per image) came to 25.5 MB in all; quality 80
# (0.8 KB) leaves a margin and still shows no visible artefacts on flat clip art at 64 px.
IMAGE_EXT = "webp"
WEBP_QUALITY = 80
TEST_IMAGES = 1000
SAMPLES_PER_SHARD = 1000

RDF_NAMESPACES = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "cc": "http://web.resource.org/cc/",
    "dc": "http://purl.org/dc/elements/1.1/",
}

# The package's 22 top-level folders as words a zero-shot prompt can use.
CLASSNAMES = {
    "animals": "animals",
    "buildings": "buildings",
    "buttons": "buttons",
    "computer": "computers",
    "containers": "containers",
    "decorations": "decorations",
    "education": "education",
    "electronics": "electronics",
    "food": "food",
    "geography": "maps and geography",
    "logos": "logos",
    "office": "office supplies",
    "people": "people",
    "plants": "plants",
    "recreation": "games, sports and music",
    "science": "science",
    "shapes": "shapes",
    "signs_and_symbols": "signs and symbols",
    "special": "patterns and gradients",
    "tools": "tools",
    "transportation": "transportation",
    "unsorted": "miscellaneous objects",
}
TEMPLATES = [
    "a clip art drawing of {}.",
    "clip art of {}.",
    "a vector illustration of {}.",
    "an icon of {}.",
    "a cartoon drawing of {}.",
]


@dataclass(frozen=True)
class SvgRecord:
    path: Path
    source: str  # path relative to the package's svg folder, e.g. "food/fruit/pear_01.svg"
    category: str  # top-level folder
    caption: str


def find_svg_root() -> Path:
    """The package's ``.../openclipart/svg`` folder, found from ``dpkg -L``."""
    try:
        listing = subprocess.run(["dpkg", "-L", PACKAGE], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"error: Debian package {PACKAGE} is not installed (apt-get install -y {PACKAGE})")
    folders = [Path(line) for line in listing.splitlines() if line.endswith("/openclipart/svg")]
    if not folders:
        sys.exit(f"error: no openclipart/svg folder in `dpkg -L {PACKAGE}`")
    return folders[0]


def package_version() -> str:
    query = ["dpkg-query", "-W", "-f=${Version}", PACKAGE]
    return subprocess.run(query, check=True, capture_output=True, text=True).stdout.strip()


def read_metadata(path: Path) -> tuple[str, str, str] | None:
    """(title, description, creator) of the RDF ``cc:Work``; ``None`` if the XML does not parse."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return None
    work = root.find(".//rdf:RDF/cc:Work", RDF_NAMESPACES)

    def text_of(xpath: str) -> str:
        element = work.find(xpath, RDF_NAMESPACES) if work is not None else None
        return "".join(element.itertext()) if element is not None else ""

    return text_of("dc:title"), text_of("dc:description"), text_of("dc:creator/cc:Agent/dc:title")


def collect_records(svg_root: Path, stats: Counter[str]) -> list[SvgRecord]:
    records = []
    for path in sorted(svg_root.rglob("*.svg")):
        stats["svg_paths"] += 1
        if path.is_symlink():
            stats["symlink_aliases_skipped"] += 1
            continue
        stats["svg_files"] += 1
        metadata = read_metadata(path)
        if metadata is None:
            stats["unreadable_xml"] += 1
            continue
        title, description, creator = metadata
        caption = clean_caption(title, description, path.stem, creator)
        if caption is None:
            stats["dropped_by_caption_cleaning"] += 1
            continue
        source = path.relative_to(svg_root).as_posix()
        records.append(SvgRecord(path, source, source.split("/")[0], caption))
    return records


def _render_rgba(svg: bytes, long_side: int) -> Image.Image:
    import cairosvg  # build-time dependency only; imported here so --help works without it

    png = cairosvg.svg2png(bytestring=svg, output_width=long_side)
    image = Image.open(io.BytesIO(png))
    if image.height > long_side:  # portrait: fix the height instead
        image = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg, output_height=long_side)))
    return image.convert("RGBA")


def render(path: Path) -> bytes | None:
    """Encoded IMAGE_SIZE x IMAGE_SIZE RGB image of the SVG's drawn content, or ``None``."""
    try:
        svg = path.read_bytes()
        image = _render_rgba(svg, RENDER_LONG_SIDE)
        box = image.getchannel("A").getbbox()
        if box is None:
            return None  # nothing drawn
        content_long_side = max(box[2] - box[0], box[3] - box[1])
        if content_long_side < MIN_CONTENT_PIXELS:
            scale = MIN_CONTENT_PIXELS / content_long_side
            image = _render_rgba(svg, min(MAX_RENDER_LONG_SIDE, round(RENDER_LONG_SIDE * scale)))
            box = image.getchannel("A").getbbox()
            if box is None:
                return None
    except Exception:  # cairosvg raises many types on malformed or unsupported SVG
        return None
    content = image.crop(box)
    factor = IMAGE_SIZE / max(content.size)
    content = content.resize(
        (max(1, round(content.width * factor)), max(1, round(content.height * factor))), Image.LANCZOS
    )
    # Composite on white and pad to a square, centred.
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    canvas.paste(content, ((IMAGE_SIZE - content.width) // 2, (IMAGE_SIZE - content.height) // 2), content)
    encoded = io.BytesIO()
    canvas.save(encoded, format="WEBP", quality=WEBP_QUALITY, method=6)
    return encoded.getvalue()


def stratified_test_indices(categories: list[str], test_size: int, rng: random.Random) -> set[int]:
    """Pick ``test_size`` indices, each category in proportion to its size (largest remainder)."""
    by_category: dict[str, list[int]] = {}
    for index, category in enumerate(categories):
        by_category.setdefault(category, []).append(index)
    total = len(categories)
    exact = {name: len(members) * test_size / total for name, members in sorted(by_category.items())}
    quota = {name: int(share) for name, share in exact.items()}
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - quota[name]), name))
    for name in by_remainder[: test_size - sum(quota.values())]:
        quota[name] += 1
    chosen: set[int] = set()
    for name in sorted(by_category):
        chosen.update(rng.sample(by_category[name], quota[name]))
    return chosen


def write_test_set(out_dir: Path, pairs: list[tuple[SvgRecord, bytes]]) -> None:
    category_order = sorted(CLASSNAMES)
    (out_dir / "images").mkdir(parents=True)
    names = []
    for index, (_, image) in enumerate(pairs):
        name = f"images/{index:06d}.{IMAGE_EXT}"
        (out_dir / name).write_bytes(image)
        names.append(name)
    EvalSet(
        root=out_dir,
        name="openclipart-test",
        images=names,
        captions=[[record.caption] for record, _ in pairs],
        labels=[category_order.index(record.category) for record, _ in pairs],
        classnames=[CLASSNAMES[folder] for folder in category_order],
        templates=TEMPLATES,
    ).save()


def train_samples(pairs: list[tuple[SvgRecord, bytes]]) -> Iterator[ShardSample]:
    for record, image in pairs:
        yield ShardSample(image=image, image_ext=IMAGE_EXT, caption=record.caption,
                          metadata={"category": record.category, "source": record.source})


def build(out_dir: Path, svg_root: Path, workers: int) -> dict[str, object]:
    stats: Counter[str] = Counter()
    records = collect_records(svg_root, stats)
    unknown = sorted({record.category for record in records} - set(CLASSNAMES))
    if unknown:
        sys.exit(f"error: folders {unknown} have no class name in CLASSNAMES")

    with Pool(workers) as pool:
        rendered = pool.map(render, [record.path for record in records], chunksize=16)
    stats["render_failed"] = rendered.count(None)
    stats["rendered"] = len(rendered) - stats["render_failed"]
    # The package holds the same picture under several folders as separate files with slightly
    # different bytes (three wine.svg: food/, computer/icons/, an icon theme). Keep the first
    # copy of every identical rendered image so no picture is both in train and in test.
    kept: list[tuple[SvgRecord, bytes]] = []
    seen_images: set[bytes] = set()
    for record, image in zip(records, rendered, strict=True):
        if image is not None and image not in seen_images:
            seen_images.add(image)
            kept.append((record, image))
    stats["duplicate_images_dropped"] = stats["rendered"] - len(kept)

    rng = random.Random(SEED)
    test_indices = stratified_test_indices([record.category for record, _ in kept], TEST_IMAGES, rng)
    test = [pair for index, pair in enumerate(kept) if index in test_indices]
    train = [pair for index, pair in enumerate(kept) if index not in test_indices]
    rng.shuffle(train)  # mix categories across shards; the test set stays in source order

    if out_dir.exists():
        shutil.rmtree(out_dir)
    write_shards(train_samples(train), out_dir / "train", samples_per_shard=SAMPLES_PER_SHARD, prefix="train")
    write_test_set(out_dir / "test", test)

    per_category = {
        folder: {
            "classname": CLASSNAMES[folder],
            "train": sum(record.category == folder for record, _ in train),
            "test": sum(record.category == folder for record, _ in test),
        }
        for folder in sorted(CLASSNAMES)
    }
    summary = {
        "package": PACKAGE,
        "package_version": package_version(),
        "seed": SEED,
        "image_size": IMAGE_SIZE,
        "image_encoding": f"{IMAGE_EXT} quality {WEBP_QUALITY}",
        "counts": {**dict(sorted(stats.items())), "train": len(train), "test": len(test)},
        "per_category": per_category,
    }
    (out_dir / "build_stats.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/openclipart"), help="output folder (replaced)")
    parser.add_argument("--svg-root", type=Path, help="openclipart svg folder (default: found with dpkg -L)")
    parser.add_argument("--workers", type=int, default=2, help="render processes (default 2)")
    args = parser.parse_args(argv)
    summary = build(args.out, args.svg_root or find_svg_root(), args.workers)
    print(json.dumps(summary["counts"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
