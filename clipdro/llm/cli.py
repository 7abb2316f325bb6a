"""`clipdro llm train|generate|eval`: LLM TempNet training, temperature-aware sampling, held-out perplexity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clipdro.config import from_dict
from clipdro.errors import UsageArgumentParser, UsageError
from clipdro.llm.results import BOOTSTRAP_REPLICATES, PERPLEXITIES
from clipdro.runtime import PRECISIONS, parse_device

USAGE = """usage: clipdro llm <subcommand> [args ...]

subcommands:
  train     train a TempNet on a frozen LM, or LM + TempNet jointly (--config configs/llm_*.yaml)
  generate  sample from an LM whose logits are divided by TempNet's per-token tau
  eval      held-out perplexity at tau = 1, at the best constant tau and with TempNet, with intervals
  compare   paired perplexity differences of `eval --output` files over the same documents
  report    what a TempNet's per-token tau tracks (LM entropy, token frequency, position)"""


def generate_main(argv: list[str]) -> int:
    parser = UsageArgumentParser(prog="clipdro llm generate", description="Sample with TempNet temperatures.")
    parser.add_argument("--model", default=None, help="LM folder or hub name (default: the TempNet run's LM)")
    parser.add_argument("--tempnet", default=None, help="checkpoint or run folder of `clipdro llm train`; "
                                                        "without it: plain sampling at temperature 1")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=0, help="0: off (the paper sampled without top-k)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto (cuda if available)")
    parser.add_argument("--show-tau", action="store_true", help="print each generated token with its tau")
    args = parser.parse_args(argv)
    from clipdro.llm.generation import generate
    from clipdro.llm.model import load_lm_with_tempnet

    loaded = load_lm_with_tempnet(args.model, args.tempnet, parse_device(args.device))
    result = generate(loaded.lm, loaded.tokenizer, args.prompt, loaded.tempnet, args.max_new_tokens, args.top_k,
                      args.top_p, args.seed)
    print(args.prompt + result.text)
    if args.show_tau:
        if result.taus is None:
            raise UsageError("--show-tau needs --tempnet")
        print("\ntoken\ttau")
        for token_id, tau in zip(result.token_ids, result.taus, strict=True):
            print(f"{loaded.tokenizer.decode([token_id])!r}\t{tau:.4f}")
    return 0


def eval_main(argv: list[str]) -> int:
    parser = UsageArgumentParser(
        prog="clipdro llm eval",
        description="Held-out perplexity at tau = 1, at the LM's best constant tau and with TempNet, each with a "
                    "bootstrap interval over documents.")
    parser.add_argument("--run", "--tempnet", dest="run", default=None,
                        help="checkpoint or run folder of `clipdro llm train` (joint, frozen or plain)")
    parser.add_argument("--model", default=None, help="LM folder or hub name (default: the run's LM)")
    parser.add_argument("--data", nargs="*", default=None,
                        help=".txt/.jsonl files or builtin:pydoc_topics (default: the run's held-out set)")
    parser.add_argument("--validation", nargs="*", default=None,
                        help="files on which the best constant tau is chosen (default: the run's data.validation; "
                             "none: no constant-tau figures)")
    parser.add_argument("--tau-range", nargs=2, type=float, default=(0.1, 10.0), metavar=("LOW", "HIGH"),
                        help="range searched for the best constant tau (default 0.1 10)")
    parser.add_argument("--seq-len", type=int, default=None, help="default: the run's, else 512")
    parser.add_argument("--rho", type=float, default=None, help="for the DRO objective (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-sequences", type=int, default=None,
                        help="cap on held-out (and validation) sequences (default: the run's eval.max_sequences, "
                             "else all)")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPLICATES,
                        help=f"bootstrap replicates over documents (default {BOOTSTRAP_REPLICATES}; 0: no intervals)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto (cuda if available)")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the metrics and per-document sums here (input of `clipdro llm compare`)")
    args = parser.parse_args(argv)
    from clipdro.llm.config import LLMTrainConfig
    from clipdro.llm.data import load_datasets, load_packed
    from clipdro.llm.evaluation import best_constant_tau, heldout_sums
    from clipdro.llm.model import load_lm_with_tempnet
    from clipdro.llm.results import result_record

    if args.bootstrap < 0 or not 0 < args.tau_range[0] < args.tau_range[1]:
        raise UsageError("need --bootstrap >= 0 and 0 < LOW < HIGH for --tau-range")
    loaded = load_lm_with_tempnet(args.model, args.run, parse_device(args.device))
    run_config = from_dict(LLMTrainConfig, loaded.config) if loaded.config is not None else None
    seq_len = args.seq_len or (run_config.data.seq_len if run_config else 512)
    text_field = run_config.data.text_field if run_config else "text"
    if args.data:
        heldout = load_packed(args.data, loaded.tokenizer, seq_len, text_field)
    elif run_config is not None:
        run_config.data.seq_len = seq_len
        _, heldout = load_datasets(run_config.data, loaded.tokenizer)
        if heldout is None:
            raise UsageError("the run had no held-out data: give --data")
    else:
        raise UsageError("give --data (or --run of a run with held-out data)")
    validation_files = args.validation if args.validation is not None else (
        run_config.data.validation if run_config else [])
    max_sequences = args.max_sequences if args.max_sequences is not None else (
        run_config.eval.max_sequences if run_config else None)
    rho = args.rho if args.rho is not None else (run_config.loss.rho if run_config else None)
    if loaded.tempnet is not None and rho is None:
        raise UsageError("give --rho for the DRO objective")
    evaluation = {"batch_size": args.batch_size, "precision": args.precision, "max_sequences": max_sequences}
    constant = None
    if validation_files:
        validation = load_packed(validation_files, loaded.tokenizer, seq_len, text_field)
        constant = best_constant_tau(loaded.lm, validation, tuple(args.tau_range), **evaluation)
    sums = heldout_sums(loaded.lm, loaded.tempnet, heldout, rho, constant_tau=constant.tau if constant else None,
                        **evaluation)
    identity = {"run": args.run, "model": args.model, "data": args.data or "the run's held-out set",
                "validation": validation_files, "seq_len": seq_len, "rho": rho, "tau_range": list(args.tau_range),
                **evaluation}
    record = result_record(sums, constant, heldout.rows(slice(None, max_sequences)), args.bootstrap, args.seed,
                           identity)
    print(json.dumps(record["metrics"], indent=2))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


def compare_main(argv: list[str]) -> int:
    parser = UsageArgumentParser(
        prog="clipdro llm compare",
        description="Paired perplexity differences A - B over the same held-out documents, averaged over seeds (one "
                    "pair per seed). ci95: with two or more pairs an interval over seeds and documents, with one pair "
                    "the bootstrap over documents only; ci95_documents_only: that bootstrap (seeds pooled).")
    parser.add_argument("files", nargs="+", type=Path, help="A.json B.json [A2.json B2.json ...] of `clipdro llm "
                                                             "eval --output`; each pair = one seed")
    parser.add_argument("--a-metric", default="perplexity", choices=PERPLEXITIES, help="metric of each A file")
    parser.add_argument("--b-metric", default="perplexity", choices=PERPLEXITIES, help="metric of each B file")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPLICATES,
                        help=f"replicates of the bootstrap over documents (default {BOOTSTRAP_REPLICATES}; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    args = parser.parse_args(argv)
    from clipdro.llm.results import compare_files

    if len(args.files) % 2:
        raise UsageError(f"give files in pairs A B [A2 B2 ...]; got {len(args.files)}")
    print(json.dumps(compare_files(args.files, args.a_metric, args.b_metric, args.bootstrap, args.seed), indent=2))
    return 0


def report_main(argv: list[str]) -> int:
    parser = UsageArgumentParser(prog="clipdro llm report",
                                 description="What a TempNet's per-token tau tracks: LM entropy, token frequency, "
                                             "position (table, correlations, figure).")
    parser.add_argument("--run", "--tempnet", dest="run", required=True,
                        help="run folder or checkpoint of a joint or frozen `clipdro llm train` run")
    parser.add_argument("--data", nargs="*", default=None, help="held-out files (default: the run's held-out set)")
    parser.add_argument("--max-sequences", type=int, default=None, help="cap on held-out sequences (default all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bins", type=int, default=10, help="quantile bins per feature (default 10)")
    parser.add_argument("--output", type=Path, default=None, help="report folder (default RUN/report)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto (cuda if available)")
    args = parser.parse_args(argv)
    from clipdro.llm.config import LLMTrainConfig
    from clipdro.llm.data import load_datasets, load_packed
    from clipdro.llm.model import load_lm_with_tempnet
    from clipdro.llm.tau_report import analyse, token_log_frequencies, token_table, write_report

    loaded = load_lm_with_tempnet(None, args.run, parse_device(args.device))
    if loaded.tempnet is None:
        raise UsageError(f"{args.run}: a plain run has no TempNet to report on")
    run_config = from_dict(LLMTrainConfig, loaded.config)
    training, heldout = load_datasets(run_config.data, loaded.tokenizer)
    if args.data:
        heldout = load_packed(args.data, loaded.tokenizer, run_config.data.seq_len, run_config.data.text_field)
    if heldout is None:
        raise UsageError("the run had no held-out data: give --data")
    vocab_size = loaded.lm.get_output_embeddings().weight.shape[0]
    table = token_table(loaded.lm, loaded.tempnet, heldout, token_log_frequencies(training, vocab_size),
                        args.batch_size, max_sequences=args.max_sequences)
    run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent.parent
    title = f"TempNet tau of {run_dir.name} ({run_config.mode} mode) on {len(table)} held-out tokens"
    path = write_report(table, analyse(table, args.bins), args.output or run_dir / "report", title)
    print(path.read_text())
    print(f"wrote {path.parent}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    subcommand, rest = argv[0], argv[1:]
    try:
        import transformers  # noqa: F401  (the optional dependency of every subcommand)
    except ImportError:
        raise UsageError("clipdro llm needs transformers: pip install 'clipdro[llm]'") from None
    if subcommand == "train":
        from clipdro.llm.train import main as train_main

        return train_main(rest)
    if subcommand == "generate":
        return generate_main(rest)
    if subcommand == "eval":
        return eval_main(rest)
    if subcommand == "compare":
        return compare_main(rest)
    if subcommand == "report":
        return report_main(rest)
    raise UsageError(f"unknown subcommand {subcommand!r} (train, generate, eval, compare, report)")
