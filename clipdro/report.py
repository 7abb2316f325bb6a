"""`clipdro report RUN_DIR`: markdown and PNG plots of a run's learned per-sample temperatures.

    clipdro report RUN_DIR_OR_CHECKPOINT [--data EVALSET_DIR] [--train-shards MANIFEST ...]
                   [--max-train-samples 10000] [--output DIR] [--bins 10] [--extremes 10]
                   [--batch-size 64] [--device auto]

Training samples are read once, in shard order, from the run's ``data.sources`` (as saved in
its checkpoint) or from ``--train-shards`` (one manifest per source, same order, when the
shards moved). The computations live in :mod:`clipdro.eval.temperature_report`.
"""

from __future__ import annotations

from pathlib import Path

from clipdro.data.evalset import EvalSet
from clipdro.data.pipeline import DataSource, RawSample, read_samples
from clipdro.errors import UsageArgumentParser, UsageError
from clipdro.eval.temperature_report import build_report, require_per_sample_temperatures, write_report
from clipdro.runtime import parse_device
from clipdro.trained_run import load_trained_run


def training_sources(run_config: dict, train_shards: list[str] | None) -> list[DataSource]:
    """The run's training sources, or ``train_shards`` in their place (same count and order, so
    every source keeps its id offset and ids still index the run's per-sample tables)."""
    sources = [DataSource(**source) for source in run_config["data"]["sources"]]
    if train_shards is None:
        return sources
    if len(train_shards) != len(sources):
        raise UsageError(f"--train-shards: the run trained on {len(sources)} source(s) "
                         f"({', '.join(source.shards for source in sources)}); give one manifest for each, in order")
    return [DataSource(shards=shards, weight=source.weight) for shards, source in zip(train_shards, sources,
                                                                                          strict=True)]


def read_training_samples(sources: list[DataSource], limit: int) -> tuple[list[RawSample], str]:
    """Up to ``limit`` training samples and a description of exactly which ones they are."""
    try:
        samples = list(read_samples(sources, limit))
    except UsageError as error:
        raise UsageError(f"{error} (reading the run's training shards; pass --train-shards if they moved, "
                         "or --max-train-samples 0 to skip them)") from None
    which = "all readable samples" if len(samples) < limit else f"the first {limit:,} readable samples in shard order"
    return samples, f"{len(samples):,} training samples ({which} of {', '.join(s.shards for s in sources)})"


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(prog="clipdro report", description="markdown + plots of a run's learned temperatures")
    parser.add_argument("run",
                        help="a run folder (its newest checkpoint) or one checkpoint (step_N folder or file)")
    parser.add_argument("--data", help="evaluation-set folder (eval.json): taus of its images and captions, "
                                       "and per class when it has labels (tempnet runs)")
    parser.add_argument("--train-shards", nargs="+", metavar="MANIFEST",
                        help="training manifests replacing the run's data.sources (same count and order)")
    parser.add_argument("--max-train-samples", type=int, default=10_000,
                        help="training samples to analyse, first in shard order (0: none)")
    parser.add_argument("--output", help="report folder (default: RUN/report)")
    parser.add_argument("--bins", type=int, default=10, help="equal-count commonness bins")
    parser.add_argument("--extremes", type=int, default=10, help="captions listed with the lowest / highest tau")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    args.device = parse_device(args.device)
    if args.max_train_samples < 0 or args.bins < 1 or args.extremes < 0 or args.batch_size < 1:
        raise UsageError("--max-train-samples and --extremes must be >= 0, --bins and --batch-size >= 1")
    # Inputs first: a wrong path should fail before the (possibly slow) model load.
    evalset = EvalSet.load(args.data) if args.data else None
    run = load_trained_run(args.run, args.device)
    require_per_sample_temperatures(run)  # before reading any training data
    samples, training_on = None, ""
    if args.max_train_samples > 0:
        samples, training_on = read_training_samples(training_sources(run.config, args.train_shards),
                                                     args.max_train_samples)
    report = build_report(run, samples, training_on, evalset, batch_size=args.batch_size, device=args.device,
                          num_bins=args.bins, num_extremes=args.extremes)
    output = Path(args.output) if args.output else (Path(args.run) if Path(args.run).is_dir()
                                                    else run.checkpoint.parent) / "report"
    print(f"wrote {write_report(report, output)}")
    return 0
