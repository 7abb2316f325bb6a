"""`clipdro data <verb>`: build training shards and manifests, convert evaluation sets.

    clipdro data from-csv --csv pairs.tsv --image-column filepath --caption-column title --out shards/
    clipdro data index /data/cc3m --out /data/cc3m/manifest.json
    clipdro data index 'https://host/cc3m/{00000..00331}.tar' --out cc3m-urls.json
    clipdro data convert-karpathy --json coco_test.json --image-root /data/coco --out eval/coco-test
    clipdro data convert-clip-benchmark --shards 'wds_flickr30k/test/{0..4}.tar' --out eval/flickr30k
    clipdro data convert-imagefolder --root /data/imagenet/val --out eval/imagenet-val
"""

from __future__ import annotations

import argparse

from clipdro.errors import UsageArgumentParser


def _from_csv(args: argparse.Namespace) -> None:
    from clipdro.data.csv_shards import csv_to_shards

    manifest, skipped = csv_to_shards(args.csv, args.image_column, args.caption_column, args.out,
                                      sep=args.sep, samples_per_shard=args.samples_per_shard)
    print(f"wrote {manifest.num_samples} samples in {len(manifest.shards)} shards to {args.out}; "
          f"skipped rows: {dict(skipped) or 'none'}")


# Bytes one id costs in the per-sample tables of the tempnet loss (clipdro/losses/contrastive.py,
# clipdro/state.py): an image and a text SampleTable, each 2 float32 columns (s, b) + a bool seen flag.
TEMPNET_TABLE_BYTES_PER_ID = 2 * (2 * 4 + 1)


def _index(args: argparse.Namespace) -> None:
    from clipdro.data.index import index_shards

    result = index_shards(args.shards, args.out)
    for line in index_summary(result):
        print(line)


def index_summary(result) -> list[str]:
    """What `clipdro data index` prints: the totals, where the unused ids come from and what they
    cost, then one line per damaged shard. ``result`` is :class:`clipdro.data.index.ShardIndex`."""
    manifest = result.manifest
    counted = result.samples
    unused = manifest.num_samples - counted
    if result.rows_tried is not None:  # stats: rows tried vs written tells gaps from the layout
        layout = manifest.num_samples - result.rows_tried
        rows = f"at most {result.max_rows}" if result.max_rows < 10**result.key_digits else str(result.max_rows)
        causes = (f"{layout} reserved by the key layout, which gives each shard {10**result.key_digits} ids "
                  f"for {rows} rows; failed downloads leave {result.failed_downloads} gaps")
        if result.unreadable_rows:
            causes += f"; {result.unreadable_rows} rows of unreadable shards"
    else:
        causes = "ids not present in the shards: failed downloads or the key layout"
        if result.damaged:
            causes += ", or lost in damaged shards"
    megabytes = manifest.num_samples * TEMPNET_TABLE_BYTES_PER_ID / 1e6
    lines = [f"{result.out}: {len(manifest.shards)} shards, {counted} samples, id rule key ({result.source}); "
             f"num_samples {manifest.num_samples}: {counted} samples, {unused} ids unused ({causes}); "
             f"the per-sample tables hold num_samples rows ({megabytes:.3g} MB at float32 for the tempnet loss: "
             f"{TEMPNET_TABLE_BYTES_PER_ID} bytes per id)"]
    if result.damaged:
        lines.append(f"{len(result.damaged)} damaged shard(s); training skips what cannot be read:")
        for shard in result.damaged:
            fate = (f"{shard.num_samples} sample{'s' * (shard.num_samples != 1)} read before the damage"
                    if shard.num_samples
                    else "nothing readable, left out of the manifest")
            lines.append(f"  {shard.path}: {fate} ({shard.reason})")
    return lines


def _report(evalset) -> None:
    parts = [f"{len(evalset.images)} images"]
    if evalset.captions is not None:
        parts.append(f"{sum(len(c) for c in evalset.captions)} captions")
    if evalset.classnames is not None:
        parts.append(f"{len(evalset.classnames)} classes, {len(evalset.templates or [])} templates")
    print(f"wrote evaluation set {evalset.name!r} to {evalset.root}: {', '.join(parts)}")


def _convert_karpathy(args: argparse.Namespace) -> None:
    from clipdro.data.eval_converters import karpathy_to_evalset

    _report(karpathy_to_evalset(args.json, args.image_root, args.out, split=args.split, name=args.name))


def _convert_clip_benchmark(args: argparse.Namespace) -> None:
    from clipdro.data.eval_converters import clip_benchmark_to_evalset

    _report(clip_benchmark_to_evalset(args.shards, args.out, name=args.name))


def _convert_imagefolder(args: argparse.Namespace) -> None:
    from clipdro.data.eval_converters import imagefolder_to_evalset

    _report(imagefolder_to_evalset(args.root, args.out, classnames=args.classnames, templates=args.templates,
                                   name=args.name))


def _parser() -> argparse.ArgumentParser:
    parser = UsageArgumentParser(prog="clipdro data", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=UsageArgumentParser)

    verb = verbs.add_parser("from-csv", help="CSV/TSV of (image path, caption) -> shards + manifest")
    verb.add_argument("--csv", required=True, help="image paths are relative to this file's folder")
    verb.add_argument("--image-column", required=True)
    verb.add_argument("--caption-column", required=True)
    verb.add_argument("--sep", help="column separator (default: tab for .tsv, else comma)")
    verb.add_argument("--out", required=True, help="new or empty shard folder")
    verb.add_argument("--samples-per-shard", type=int, default=1000)
    verb.set_defaults(run=_from_csv)

    verb = verbs.add_parser("index", help="img2dataset shards (paths or URLs) -> manifest.json (key id rule)")
    verb.add_argument("shards", help="shard folder or brace pattern of paths or URLs (http(s)://, pipe:CMD, "
                                     "s3://), e.g. 'data/{00000..00099}.tar'")
    verb.add_argument("--out", required=True, help="manifest file to write")
    verb.set_defaults(run=_index)

    verb = verbs.add_parser("convert-karpathy", help="COCO/Flickr30k Karpathy JSON -> evaluation set")
    verb.add_argument("--json", required=True)
    verb.add_argument("--image-root", required=True, help="folder the JSON's image paths are relative to")
    verb.add_argument("--out", required=True)
    verb.add_argument("--split", default="test", help="split to take from dataset_*.json (default: test)")
    verb.add_argument("--name")
    verb.set_defaults(run=_convert_karpathy)

    verb = verbs.add_parser("convert-clip-benchmark",
                            help="CLIP_benchmark WebDataset retrieval set -> evaluation set")
    verb.add_argument("--shards", required=True, help="brace pattern of tar paths or URLs")
    verb.add_argument("--out", required=True)
    verb.add_argument("--name")
    verb.set_defaults(run=_convert_clip_benchmark)

    verb = verbs.add_parser("convert-imagefolder",
                            help="ImageFolder tree (e.g. ImageNet val) -> evaluation set")
    verb.add_argument("--root", required=True)
    verb.add_argument("--out", required=True)
    verb.add_argument("--classnames", default="auto",
                      help="auto (ImageNet names for the 1000 synsets, else folder names), imagenet, "
                           "or a file")
    verb.add_argument("--templates", default="openai",
                      help="openai, simple, or a file with one '{}' template a line")
    verb.add_argument("--name")
    verb.set_defaults(run=_convert_imagefolder)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.run(args)
    return 0
