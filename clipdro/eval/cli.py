"""`clipdro eval retrieval|zeroshot|summarize|compare`: benchmark a model on an evaluation set, tabulate
and compare results.

    clipdro eval retrieval (--model NAME [--pretrained TAG_OR_PATH] | --checkpoint RUN_DIR_OR_FILE)
                           --data EVALSET_DIR [--recall-k 1 5 10] [--exact-ranks] [--output results.json]
    clipdro eval zeroshot  (--model NAME [--pretrained TAG_OR_PATH] | --checkpoint RUN_DIR_OR_FILE) --data DIR
                           [--classnames evalset|imagenet|FILE] [--templates openai|simple|evalset|FILE]
    clipdro eval summarize results/*.json [--format markdown|csv] [--output FILE]
    clipdro eval compare A.json B.json [A2.json B2.json ...] [--primary METRIC[,METRIC ...]]
                         [--bootstrap 10000] [--seed 0] [--format markdown|csv] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageArgumentParser, UsageError
from clipdro.eval import compare, retrieval
from clipdro.eval.faiss_backend import load_faiss
from clipdro.eval.results import load_results, run_environment, summary_table, write_results
from clipdro.eval.tasks import Preprocess, TaskResult, Tokenizer, evaluate_retrieval, evaluate_zeroshot
from clipdro.eval.zeroshot import (
    TEMPLATE_SETS,
    default_template_source,
    load_labelled_set,
    resolve_classnames,
    resolve_templates,
)
from clipdro.model_configs import register_model_configs
from clipdro.models import load_trained_run
from clipdro.runtime import EVAL_PRECISIONS, parse_device, resolve_precision


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "summarize":
        return _summarize(args)
    if args.command == "compare":
        return _compare(args)
    args.device = parse_device(args.device)
    # Data and faiss first: a wrong path or a broken faiss install should fail before a (possibly slow)
    # model load and embedding pass, not after it.
    if args.command == "retrieval":
        evalset = EvalSet.load(args.data)
        if not args.exact_ranks:
            load_faiss()
    else:
        evalset = load_labelled_set(args.data)
        template_source = args.templates or default_template_source(evalset)
        classnames = resolve_classnames(args.classnames, evalset)
        templates = resolve_templates(template_source, evalset)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    loaded = load_model(args)
    model, preprocess, tokenizer = loaded.model, loaded.preprocess, loaded.tokenizer
    loader_options = {"batch_size": args.batch_size, "device": args.device, "precision": args.precision,
                      "num_workers": args.workers}
    if args.command == "retrieval":
        result = evaluate_retrieval(model, preprocess, tokenizer, evalset, args.recall_k,
                                    exact_ranks=args.exact_ranks, **loader_options)
        task_options = {"recall_k": args.recall_k,
                        "retrieval_backend": retrieval.search_backend(
                            args.recall_k, (result.sizes["num_images"], result.sizes["num_texts"]),
                            exact_ranks=args.exact_ranks)}
    else:
        result = evaluate_zeroshot(model, preprocess, tokenizer, evalset, classnames, templates,
                                   **loader_options)
        task_options = {"classnames": args.classnames, "templates": template_source}
    record = _result_record(args, loaded.identity, evalset, result, task_options)
    text = json.dumps(record["metrics"], indent=2)
    if args.output:
        write_results(args.output, record)
        text += f"\nwrote {args.output}"
    print(text)
    return 0


@dataclass
class LoadedModel:
    model: torch.nn.Module  # an open_clip model (encode_image / encode_text) on args.device, eval mode
    preprocess: Preprocess
    tokenizer: Tokenizer
    identity: dict  # what the results file records about the weights: model, pretrained[, checkpoint, step, loss]


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The one place that turns CLI arguments into a model to evaluate.

    ``--model`` is any open_clip architecture (clipdro's shipped configs included);
    ``--pretrained`` an open_clip tag for it or a weights file. ``--checkpoint`` is a clipdro
    training run (its newest checkpoint) or checkpoint file: its open_clip model is evaluated
    (the TempNets play no part in retrieval or zero-shot scores).
    """
    if args.checkpoint:
        if args.pretrained:
            raise UsageError("--pretrained applies to --model; a --checkpoint holds all its weights")
        run = load_trained_run(args.checkpoint, args.device)
        identity = {"model": run.config["model"]["name"], "pretrained": None,
                    "checkpoint": str(run.checkpoint.resolve()), "step": run.step, "loss": run.loss_name}
        return LoadedModel(run.model.clip, run.eval_transform, run.tokenizer, identity)
    register_model_configs()
    if args.model not in open_clip.list_models():
        raise UsageError(f"unknown model {args.model!r} (see open_clip.list_models())")
    if args.pretrained and not Path(args.pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(args.model)
        if args.pretrained not in tags:
            raise UsageError(f"--pretrained {args.pretrained!r} is neither a file nor a tag of {args.model} "
                             f"(tags: {', '.join(tags) or 'none'})")
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained,
                                                                 device=args.device)
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(args.model),
                       {"model": args.model, "pretrained": args.pretrained})


def _build_parser() -> argparse.ArgumentParser:
    parser = UsageArgumentParser(prog="clipdro eval", description="retrieval / zero-shot benchmarks and result tables")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=UsageArgumentParser)

    def add_model_and_data(sub: argparse.ArgumentParser, data_help: str) -> None:
        weights = sub.add_mutually_exclusive_group(required=True)
        weights.add_argument("--model", help="open_clip architecture, e.g. ViT-B-32 or clipdro-tiny-vit")
        weights.add_argument("--checkpoint", help="a clipdro training run folder (its newest checkpoint) "
                                                  "or checkpoint file")
        sub.add_argument("--pretrained",
                         help="open_clip pretrained tag or weights file (default: random init)")
        sub.add_argument("--data", required=True, help=data_help)
        sub.add_argument("--batch-size", type=int, default=64)
        sub.add_argument("--workers", type=int, default=0, help="image decoding worker processes")
        sub.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
        sub.add_argument("--precision", choices=EVAL_PRECISIONS, default="auto",
                         help="auto: bf16 autocast on CUDA (fp16 without bf16), fp32 on the CPU")
        sub.add_argument("--output", help="write the results JSON here")
        sub.add_argument("--seed", type=int, default=None,
                         help="seed torch before the model is built, so a random-init --model is reproducible "
                              "(recorded in the results file)")

    retrieval = commands.add_parser("retrieval", help="image-text retrieval recall@K (FAISS)")
    add_model_and_data(retrieval, "evaluation-set folder with captions (eval.json)")
    retrieval.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 10], metavar="K")
    retrieval.add_argument("--exact-ranks", action="store_true",
                           help="brute-force scores; adds mean and median rank of the first positive")

    zeroshot = commands.add_parser("zeroshot", help="zero-shot classification: acc1, acc5, per-class recall")
    add_model_and_data(zeroshot, "evaluation-set folder with labels, or an ImageFolder tree")
    zeroshot.add_argument("--classnames", default="evalset",
                          help="evalset, imagenet or a file (one name per line)")
    zeroshot.add_argument("--templates", default=None,
                          help=f"{', '.join(TEMPLATE_SETS)}, evalset or a file with one '{{}}' template "
                               "per line (default: the set's templates if any, else openai)")

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
    return parser


def _result_record(args: argparse.Namespace, identity: dict, evalset: EvalSet, result: TaskResult,
                   task_options: dict) -> dict:
    return {
        "task": args.command,
        **identity,
        **({"seed": args.seed} if args.seed is not None else {}),
        "data": str(Path(args.data).resolve()),
        "dataset": evalset.name,
        **task_options,
        **result.sizes,
        "metrics": result.metrics,
        "timings": result.timings,
        "precision": resolve_precision(args.precision, args.device),
        **run_environment(args.device),
        "per_query": result.per_query,
    }


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
