"""`clipdro eval retrieval|zeroshot|linear-probe|suite|summarize|compare`: benchmark a model on evaluation
sets, tabulate and compare results.

    clipdro eval retrieval (--model NAME [--pretrained TAG_OR_PATH] | --checkpoint RUN_DIR_OR_FILE)
                           --data EVALSET_DIR [--recall-k 1 5 10] [--exact-ranks] [--output results.json]
    clipdro eval zeroshot  (--model NAME [--pretrained TAG_OR_PATH] | --checkpoint RUN_DIR_OR_FILE) --data DIR
                           [--classnames evalset|imagenet|FILE] [--templates openai|simple|evalset|FILE]
    clipdro eval linear-probe (--model NAME [--pretrained TAG_OR_PATH] | --checkpoint RUN_DIR_OR_FILE)
                           --train TRAIN_DIR --data TEST_DIR [--lr 0.1] [--epochs 10] [--val-proportion 0.2]
                           [--weight-decay WD] [--probe-seed 0]
    clipdro eval suite SUITE.yaml (--model NAME [--pretrained TAG_OR_PATH] | --checkpoint RUN_DIR_OR_FILE)
                       [--output-dir DIR]
    clipdro eval summarize results/*.json [--format markdown|csv] [--output FILE]
    clipdro eval compare A.json B.json [A2.json B2.json ...] [--primary METRIC[,METRIC ...]]
                         [--bootstrap 10000] [--seed 0] [--format markdown|csv] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from clipdro.errors import UsageArgumentParser, UsageError
from clipdro.eval import compare
from clipdro.eval.results import load_results, summary_table, write_results
from clipdro.eval.runner import load_model, prepare_task, run_task
from clipdro.eval.zeroshot import (
    TEMPLATE_SETS,
)
from clipdro.runtime import EVAL_PRECISIONS, parse_device


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "summarize":
        return _summarize(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "suite":
        from clipdro.eval.suite import run_suite

        return run_suite(args, build_parser=_build_parser)
    args.device = parse_device(args.device)
    # Data and faiss first: a wrong path or a broken faiss install should fail before a (possibly slow)
    # model load and embedding pass, not after it.
    task = prepare_task(args)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    record = run_task(args, task, load_model(args))
    text = json.dumps(record["metrics"], indent=2)
    if args.output:
        write_results(args.output, record)
        text += f"\nwrote {args.output}"
    print(text)
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = UsageArgumentParser(prog="clipdro eval", description="retrieval / zero-shot benchmarks and result tables")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=UsageArgumentParser)

    def add_model_and_data(sub: argparse.ArgumentParser, data_help: str) -> None:
        add_model(sub)
        sub.add_argument("--data", required=True, help=data_help)
        sub.add_argument("--output", help="write the results JSON here")

    def add_model(sub: argparse.ArgumentParser) -> None:
        weights = sub.add_mutually_exclusive_group(required=True)
        weights.add_argument("--model", help="open_clip architecture, e.g. ViT-B-32 or clipdro-tiny-vit")
        weights.add_argument("--checkpoint", help="a clipdro training run folder (its newest checkpoint) "
                                                  "or checkpoint (folder or file)")
        sub.add_argument("--pretrained",
                         help="open_clip pretrained tag or weights file (default: random init)")
        sub.add_argument("--batch-size", type=int, default=64)
        sub.add_argument("--workers", type=int, default=0, help="image decoding worker processes")
        sub.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
        sub.add_argument("--precision", choices=EVAL_PRECISIONS, default="auto",
                         help="auto: bf16 autocast on CUDA (fp16 without bf16), fp32 on the CPU")
        sub.add_argument("--seed", type=int, default=None,
                         help="seed torch before the model is built, so a random-init --model is reproducible "
                              "(recorded in the results file)")

    retrieval = commands.add_parser("retrieval", help="image-text retrieval recall@K (FAISS)")
    add_model_and_data(retrieval, "evaluation-set folder with captions (eval.json), or a CLIP_benchmark "
                                  "webdataset retrieval set (folder or URL with test/nshards.txt)")
    retrieval.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], metavar="K")
    retrieval.add_argument("--exact-ranks", action="store_true",
                           help="brute-force scores; adds mean and median rank of the first positive")

    zeroshot = commands.add_parser("zeroshot", help="zero-shot classification: acc1, acc5, per-class recall")
    add_model_and_data(zeroshot, "evaluation-set folder with labels, an ImageFolder tree, or a CLIP_benchmark "
                                 "webdataset set (folder or URL with test/nshards.txt, classnames.txt)")
    zeroshot.add_argument("--classnames", default="evalset",
                          help="evalset, imagenet (by class folder: ImageNet wnids, a subset of them, or "
                               "ImageNetV2's 0 ... 999) or a file (one name per line, or folder<TAB>name)")
    zeroshot.add_argument("--templates", default=None,
                          help=f"{', '.join(TEMPLATE_SETS)}, evalset or a file with one '{{}}' template "
                               "per line (default: the set's templates if any, else openai)")

    probe = commands.add_parser("linear-probe", help="logistic-regression head on frozen image features: "
                                                     "acc1, acc5, per-class recall")
    add_model_and_data(probe, "test split: evaluation-set folder with labels, an ImageFolder tree, or a "
                              "CLIP_benchmark webdataset set (its test/ split)")
    probe.add_argument("--train", required=True,
                       help="training split, same kinds as --data (a CLIP_benchmark webdataset set: its train/ split)")
    probe.add_argument("--lr", type=float, default=0.1, help="AdamW learning rate (cosine decay; default 0.1)")
    probe.add_argument("--epochs", type=int, default=10)
    probe.add_argument("--probe-batch-size", type=int, default=64, help="feature mini-batch of the head's training")
    probe.add_argument("--val-proportion", type=float, default=0.2,
                       help="share of the training split held out to choose the weight decay (default 0.2)")
    probe.add_argument("--weight-decay", type=float, default=None,
                       help="use this weight decay instead of choosing one (trains on the whole training split)")
    probe.add_argument("--probe-seed", type=int, default=0,
                       help="seed of the held-out split, the head's initialisation and batch order")

    suite = commands.add_parser("suite", help="several tasks from a YAML file on one model, loaded once: "
                                              "one results file per task and a summary table")
    suite.add_argument("suite", metavar="SUITE.yaml", help="tasks: [{task: retrieval|zeroshot|linear-probe, "
                                                           "data: ..., <options>}, ...] (docs/evaluation.md)")
    add_model(suite)
    suite.add_argument("--output-dir", help="folder of the result files and summary (default: the file's "
                                            "output_dir, else results/<suite file stem>)")

    _add_table_commands(commands)
    return parser


def _add_table_commands(commands: argparse._SubParsersAction) -> None:
    """The commands that read result files: summarize and compare."""
    summarize = commands.add_parser("summarize", help="table of result JSON files")
    summarize.add_argument("results", nargs="+", help="result JSON files")
    summarize.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    summarize.add_argument("--output", help="write the table here instead of printing it")

    comparison = commands.add_parser("compare", help="A vs B per metric with a paired interval over seeds and queries "
                                                     "(one pair: over queries only)")
    comparison.add_argument("results", nargs="+", metavar="RESULT",
                            help="result JSON files in pairs: A B [A2 B2 ...] (A = method, B = baseline; one pair "
                                 "per training seed)")
    comparison.add_argument("--primary", type=_metric_list, default=(), metavar="METRIC[,METRIC ...]",
                            help="the primary metric, named before the comparison: one metric, or several "
                                 "(comma-separated) meaning their mean; reported first and marked primary, the "
                                 "others secondary")
    comparison.add_argument("--bootstrap", type=int, default=compare.REPLICATES, metavar="N",
                            help=f"bootstrap replicates (default {compare.REPLICATES})")
    comparison.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws (default 0)")
    comparison.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    comparison.add_argument("--output", help="write the table here instead of printing it")


def _summarize(args: argparse.Namespace) -> int:
    return _print_or_write(summary_table(load_results(args.results), args.format), args.output)


def _compare(args: argparse.Namespace) -> int:
    if len(args.results) % 2:
        raise UsageError(f"compare takes result files in pairs (A B [A2 B2 ...]), got {len(args.results)}: "
                         f"{args.results[-1]} has no partner")
    if args.bootstrap < 1:
        raise UsageError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    comparisons = compare.compare_results(load_results(args.results), args.results, args.bootstrap, args.seed,
                                          primary=args.primary)
    table = compare.format_comparison(comparisons, args.format, a_sources=args.results[0::2],
                                      b_sources=args.results[1::2], replicates=args.bootstrap, seed=args.seed)
    return _print_or_write(table, args.output)


def _metric_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty metric name in {text!r}")
    return names


def _print_or_write(table: str, output: str | None) -> int:
    if output:
        Path(output).write_text(table, encoding="utf-8")
        print(f"wrote {output}")
    else:
        print(table, end="")
    return 0
