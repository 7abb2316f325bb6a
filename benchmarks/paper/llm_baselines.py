"""The LLM table of docs/llm.md: the paper's language-model claims against proper baselines.

    python -m data_tools.build_llm_corpus                      # once: the corpus (Debian python3.11-doc, 11 MB)
    python -m benchmarks.paper.llm_baselines --seeds 0 1 2     # 3 x (plain, joint, frozen) runs + evaluation
    python -m benchmarks.paper.llm_baselines --seeds 0 1 2 --select-rho 3.5 4.0 4.5 5.0   # rho chosen on valid
    python -m benchmarks.paper.llm_baselines --seeds 0 steps=20 --frozen-steps 10 --output-dir runs/llm-quick

For each seed s, three runs of ``--config`` (default configs/llm_corpus.yaml) on the corpus's train split,
all with ``run.seed = data.seed = s`` (so the plain and the joint run start from the same LM weights and
see the same batches):

* ``plain-seed{s}``: the LM alone under cross-entropy (``mode=plain``): the baseline the paper's GPT-2
  claim needs;
* ``joint-seed{s}``: LM + TempNet under the token DRO loss (``mode=joint``), the paper's GPT-2 setting;
* ``frozen-seed{s}``: a fresh TempNet on the frozen plain LM of the same seed (``mode=frozen``,
  ``--frozen-steps`` steps): the paper's frozen-LM setting on our baseline.

The joint and frozen runs use ``--rho`` (default: the config's ``loss.rho``); the plain runs have no
rho and keep the config's, so changing ``--rho`` reuses them. ``--select-rho R1 R2 ...`` chooses it on the valid split
first: for each candidate a frozen TempNet (``--frozen-steps``) on the first seed's plain LM,
``select-rho{R}-seed{s}``, evaluated on the valid split; the rho with the lowest valid perplexity with
TempNet is used for every joint and frozen run (``rho_selection.md``). The test split is never used
to choose rho or tau.

Each run is then evaluated by ``clipdro llm eval --run RUN --output RUN/eval_test.json``: the corpus's test
split, with the LM's best constant tau chosen on the valid split (never on test), each perplexity with a
95 % bootstrap interval over the test documents; the joint and frozen runs also get ``clipdro llm report``
(what their tau tracks: entropy, token frequency, position). The paired comparisons (``clipdro llm compare``: with two
or more seeds an interval over seeds and documents, and the bootstrap over documents with the same draws for every
seed's pair, seeds pooled) are

* joint with TempNet - plain at tau = 1 (the paper's claim, as it was measured);
* joint with TempNet - plain at its best constant tau (what a free constant already gives the baseline);
* frozen TempNet on the plain LM - that LM at its best constant tau (the frozen-mode claim);
* joint at its best constant tau - plain at its best constant tau (is the jointly trained LM better at all);
* joint with TempNet - joint at its best constant tau (what the per-token spread adds).

A run whose folder holds a finished run of the same resolved config is reused, and an unfinished one
continues from its last checkpoint (rerunning continues an interrupted sweep; its train_seconds then
count only the continuation). Outputs in ``--output-dir`` (default runs/llm-baselines): the runs,
``results.json`` and ``results.md`` (the table: mean over seeds and each seed, then the paired
differences in perplexity points with their intervals: over seeds and documents with two or more
seeds, and over documents only, seeds pooled). Extra ``key=value`` arguments override the config of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from clipdro.checkpoint import list_checkpoints
from clipdro.config import load_config, to_dict
from clipdro.errors import UsageError
from clipdro.llm.config import LLMTrainConfig
from clipdro.llm.model import EXPORTED_MODEL_DIR
from clipdro.llm.results import compare_files
from clipdro.towers import cache_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = REPO_ROOT / "configs" / "llm_corpus.yaml"
CORPUS_NAME = "python3.11-doc_3.11.2-6+deb12u8"  # data_tools.build_llm_corpus's folder of the version used
MODES = ("plain", "joint", "frozen")
EVAL_FILE = "eval_test.json"
# The tau reported beside each perplexity metric (none at tau = 1)
TAU_OF_METRIC = {"perplexity_constant_tau": "constant_tau", "perplexity_tempnet": "tau_mean"}
# (row title, mode, metric of its eval file), in table order
ROWS = [
    ("plain LM, tau = 1", "plain", "perplexity"),
    ("plain LM, best constant tau (chosen on valid)", "plain", "perplexity_constant_tau"),
    ("plain LM + TempNet trained on it frozen", "frozen", "perplexity_tempnet"),
    ("joint LM with its TempNet", "joint", "perplexity_tempnet"),
    ("joint LM, tau = 1", "joint", "perplexity"),
    ("joint LM, best constant tau (chosen on valid)", "joint", "perplexity_constant_tau"),
]
# (title, (mode A, metric A), (mode B, metric B)): A - B, paired over test documents, seeds pooled
COMPARISONS = [
    ("joint TempNet - plain at tau = 1", ("joint", "perplexity_tempnet"), ("plain", "perplexity")),
    ("joint TempNet - plain at its best constant tau", ("joint", "perplexity_tempnet"),
     ("plain", "perplexity_constant_tau")),
    ("frozen TempNet on the plain LM - that LM at its best constant tau", ("frozen", "perplexity_tempnet"),
     ("plain", "perplexity_constant_tau")),
    ("joint at its best constant tau - plain at its best constant tau", ("joint", "perplexity_constant_tau"),
     ("plain", "perplexity_constant_tau")),
    ("joint TempNet - joint at its best constant tau", ("joint", "perplexity_tempnet"),
     ("joint", "perplexity_constant_tau")),
]


def default_corpus() -> Path:
    return cache_dir() / "llm-corpus" / CORPUS_NAME


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every run, e.g. steps=20")
    parser.add_argument("--config", type=Path, default=BASE_CONFIG)
    parser.add_argument("--corpus", type=Path, default=None,
                        help="folder with train/valid/test.jsonl (default: data_tools.build_llm_corpus's output, "
                             f"$CLIPDRO_CACHE/llm-corpus/{CORPUS_NAME})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--frozen-steps", type=int, default=1000,
                        help="steps of the frozen-LM TempNet runs (0.22-0.29 s a step here: about 4-5 minutes)")
    parser.add_argument("--frozen-tempnet-lr", type=float, default=1e-3, help="its TempNet learning rate")
    parser.add_argument("--rho", type=float, default=None,
                        help="rho of the joint and frozen runs (default: the config's loss.rho)")
    parser.add_argument("--select-rho", nargs="+", type=float, default=None, metavar="RHO",
                        help="choose rho among these on the valid split (frozen TempNets on the first seed's "
                             "plain LM) and use it for the joint and frozen runs")
    parser.add_argument("--bootstrap", type=int, default=10_000)
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "runs" / "llm-baselines")
    args = parser.parse_args(argv)
    if args.rho is not None and args.select_rho:
        parser.error("give --rho or --select-rho, not both")
    args.corpus = (args.corpus or default_corpus()).resolve()
    missing = [name for name in ("train.jsonl", "valid.jsonl", "test.jsonl") if not (args.corpus / name).is_file()]
    if missing:
        parser.error(f"--corpus {args.corpus} lacks {', '.join(missing)}: run python -m data_tools.build_llm_corpus")
    args.output_dir = args.output_dir.resolve()
    return args


def run_overrides(mode: str, seed: int, args: argparse.Namespace, rho: float | None = None,
                  name: str | None = None, eval_split: str = "test") -> list[str]:
    """Every override of one run (the data splits, the mode, the seeds, the folder, rho, then the user's).
    ``rho`` (joint and frozen only: a plain run has none) defaults to the config's."""
    corpus = args.corpus
    overrides = [f"data.train=[{corpus / 'train.jsonl'}]", f"data.eval=[{corpus / f'{eval_split}.jsonl'}]",
                 f"data.validation=[{corpus / 'valid.jsonl'}]", f"mode={mode}", f"run.seed={seed}",
                 f"data.seed={seed}", f"run.output_dir={args.output_dir}",
                 f"run.name={name or f'{mode}-seed{seed}'}",
                 *([f"loss.rho={rho}"] if rho is not None and mode != "plain" else []), *args.overrides]
    if mode == "frozen":  # the plain run's exported LM, frozen; a fresh TempNet
        overrides += [f"model.name_or_path={args.output_dir / f'plain-seed{seed}' / EXPORTED_MODEL_DIR}",
                      "model.architecture=null", "model.tokenizer=null", f"steps={args.frozen_steps}",
                      f"tempnet.lr={args.frozen_tempnet_lr}"]
    return overrides


def same_config(run_dir: Path, expected: dict) -> bool:
    """Whether ``run_dir`` holds a run of exactly this resolved config (finished or not)."""
    saved = run_dir / "config.yaml"
    return saved.is_file() and to_dict(load_config(LLMTrainConfig, saved, [])) == expected


def eval_records(run_dir: Path) -> list[dict]:
    """The evaluation records of a run's metrics.jsonl, in step order (none without the file)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [record for record in records if "eval" in record]


def finished_with(run_dir: Path, expected: dict) -> bool:
    """Whether ``run_dir`` holds a run of exactly this resolved config that trained to its last step."""
    evaluated = eval_records(run_dir)
    return (bool(evaluated) and same_config(run_dir, expected) and expected["steps"] is not None
            and evaluated[-1]["step"] == expected["steps"])


def train(name: str, overrides: list[str], args: argparse.Namespace) -> float | None:
    """Train run ``name`` (``args.output_dir / name``) unless a finished run of this config is there;
    the training wall seconds, or None when the finished run was reused."""
    expected = to_dict(load_config(LLMTrainConfig, args.config, overrides))
    if expected["steps"] is None:
        raise UsageError("llm_baselines sizes runs in steps: set steps in the config or as an override")
    run_dir = args.output_dir / name
    label = f"[{name.rsplit('-seed', 1)[0]} seed {name.rsplit('-seed', 1)[1]}]"
    if finished_with(run_dir, expected):
        print(f"{label} reusing the finished run in {run_dir}", flush=True)
        return None
    # An interrupted run of this config continues from its last checkpoint (resume is exact); anything
    # else in the folder is replaced.
    resume = same_config(run_dir, expected) and bool(list_checkpoints(run_dir))
    command = [sys.executable, "-m", "clipdro.cli", "llm", "train", "--config", str(args.config), *overrides,
               *(["--resume", "latest"] if resume else ["--overwrite"])]
    print(f"{label} {' '.join(command)}", flush=True)
    console = args.output_dir / f"{name}.console.txt"
    started = time.monotonic()
    with console.open("w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT).returncode
    if status != 0:
        raise SystemExit(f"{label} training failed ({status}); see {console}")
    return time.monotonic() - started


def select_rho(args: argparse.Namespace) -> dict:
    """Frozen TempNets at each ``--select-rho`` candidate on the first seed's plain LM, evaluated on the
    valid split: {"seed", "candidates": [{"rho", "run", "valid": {...}}], "rho": the one with the lowest
    valid perplexity with TempNet}. Writes rho_selection.json and rho_selection.md."""
    seed = args.seeds[0]
    train(f"plain-seed{seed}", run_overrides("plain", seed, args), args)
    candidates = []
    for rho in args.select_rho:
        name = f"select-rho{rho:g}-seed{seed}"
        train(name, run_overrides("frozen", seed, args, rho=rho, name=name, eval_split="valid"), args)
        candidates.append({"rho": rho, "run": name, "valid": eval_records(args.output_dir / name)[-1]["eval"]})
    chosen = min(candidates, key=lambda candidate: candidate["valid"]["perplexity_tempnet"])
    selection = {"seed": seed, "candidates": candidates, "rho": chosen["rho"]}
    (args.output_dir / "rho_selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    lines = [f"# rho for the joint and frozen runs, chosen on the valid split (seed {seed})", "",
             f"A frozen TempNet ({args.frozen_steps} steps, lr {args.frozen_tempnet_lr:g}) on plain-seed{seed} per "
             "candidate; valid-split figures at its last step. Chosen: the lowest perplexity with TempNet.", "",
             "| rho | perplexity with TempNet | LM alone (tau = 1) | mean tau | DRO objective |",
             "|---:|---:|---:|---:|---:|"]
    for candidate in candidates:
        valid = candidate["valid"]
        mark = " (chosen)" if candidate is chosen else ""
        lines.append(f"| {candidate['rho']:g}{mark} | {valid['perplexity_tempnet']:.3f} | "
                     f"{valid['perplexity']:.3f} | {valid['tau_mean']:.3f} | {valid['dro_objective']:.4f} |")
    text = "\n".join(lines) + "\n"
    (args.output_dir / "rho_selection.md").write_text(text)
    print(text, flush=True)
    return selection


def train_and_evaluate(mode: str, seed: int, args: argparse.Namespace, rho: float | None) -> dict:
    overrides = run_overrides(mode, seed, args, rho=rho)
    wall = train(f"{mode}-seed{seed}", overrides, args)
    run_dir = args.output_dir / f"{mode}-seed{seed}"
    eval_file = run_dir / EVAL_FILE
    if not eval_file.is_file() or wall is not None:
        command = [sys.executable, "-m", "clipdro.cli", "llm", "eval", "--run", str(run_dir), "--bootstrap",
                   str(args.bootstrap), "--output", str(eval_file)]
        with (args.output_dir / f"{mode}-seed{seed}.eval.txt").open("w") as log:
            if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT).returncode != 0:
                raise SystemExit(f"[{mode} seed {seed}] evaluation failed; see {log.name}")
    record = {"mode": mode, "seed": seed, "run_dir": str(run_dir), "train_seconds": wall,
              "metrics": json.loads(eval_file.read_text())["metrics"]}
    if mode != "plain":  # what its TempNet's tau tracks (clipdro llm report)
        analysis_file = run_dir / "report" / "tau_analysis.json"
        if not analysis_file.is_file() or wall is not None:
            command = [sys.executable, "-m", "clipdro.cli", "llm", "report", "--run", str(run_dir)]
            with (args.output_dir / f"{mode}-seed{seed}.report.txt").open("w") as log:
                if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT).returncode != 0:
                    raise SystemExit(f"[{mode} seed {seed}] tau report failed; see {log.name}")
        analysis = json.loads(analysis_file.read_text())
        record["tau_analysis"] = {"tau": analysis["tau"], "spearman": analysis["spearman"]}
    return record


def summary_rows(runs: list[dict], seeds: list[int]) -> list[dict]:
    by_mode = {(run["mode"], run["seed"]): run["metrics"] for run in runs}
    rows = []
    for title, mode, metric in ROWS:
        values = [by_mode[(mode, seed)][metric] for seed in seeds if metric in by_mode.get((mode, seed), {})]
        intervals = [by_mode[(mode, seed)].get(f"{metric}_ci95") for seed in seeds if (mode, seed) in by_mode]
        tau_key = TAU_OF_METRIC.get(metric)
        taus = [by_mode[(mode, seed)].get(tau_key) for seed in seeds] if tau_key else None
        rows.append({"row": title, "mode": mode, "metric": metric, "per_seed": values, "per_seed_ci95": intervals,
                     "mean": statistics.mean(values) if values else None,
                     "std": statistics.stdev(values) if len(values) > 1 else None,
                     "tau_per_seed": taus})
    return rows


def paired_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for title, (mode_a, metric_a), (mode_b, metric_b) in COMPARISONS:
        files = []
        for seed in args.seeds:
            files += [args.output_dir / f"{mode_a}-seed{seed}" / EVAL_FILE,
                      args.output_dir / f"{mode_b}-seed{seed}" / EVAL_FILE]
        result = compare_files(files, metric_a, metric_b, args.bootstrap, seed=0)
        rows.append({"comparison": title, **result})
    return rows


def markdown(summary: list[dict], paired: list[dict], runs: list[dict], args: argparse.Namespace,
             settings: dict) -> str:
    seeds = ", ".join(map(str, args.seeds))
    lines = [f"# LLM baselines ({len(args.seeds)} seeds: {seeds})", "",
             f"- config: `{settings['config']}` + `{' '.join(args.overrides) or 'no overrides'}`; corpus "
             f"`{args.corpus.name}`; frozen TempNet: {args.frozen_steps} steps at lr {args.frozen_tempnet_lr:g}",
             f"- rho of the joint and frozen runs: {settings['rho']:g}"
             + (" (chosen on the valid split: rho_selection.md)" if settings["rho_selection"] else ""),
             f"- machine: {settings['hardware']}", "",
             "Test-split perplexity (per token of the run's tokenizer); per seed with its 95 % bootstrap interval "
             "over test documents; tau: the best constant tau (valid split) or the mean TempNet tau.", "",
             "| | mean ± std | per seed [95 % interval] | tau per seed |", "|---|---:|---|---|"]
    for row in summary:
        if row["mean"] is None:
            continue
        spread = f" ± {row['std']:.3f}" if row["std"] is not None else ""
        per_seed = "; ".join(f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                             for value, ci in zip(row["per_seed"], row["per_seed_ci95"], strict=True))
        taus = ", ".join(f"{tau:.3f}" for tau in row["tau_per_seed"] or [] if tau is not None)
        lines.append(f"| {row['row']} | {row['mean']:.3f}{spread} | {per_seed} | {taus} |")
    lines += ["", "What the TempNet's per-token tau tracks on the test tokens (`clipdro llm report`): its spread and "
              "Spearman's correlation with the LM's entropy, the frequency of the token the prediction follows and "
              "of the predicted token, and the position in the document:", "",
              "| run | tau p5 / median / p95 | p95 / p5 | entropy | input frequency | target frequency | position |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        if "tau_analysis" not in run:
            continue
        tau, correlation = run["tau_analysis"]["tau"], run["tau_analysis"]["spearman"]
        lines.append(f"| {run['mode']}-seed{run['seed']} | {tau['p5']:.3f} / {tau['median']:.3f} / {tau['p95']:.3f} "
                     f"| {tau['spread_p95_over_p5']:.3f} | {correlation['entropy']:+.3f} | "
                     f"{correlation['input_log_frequency']:+.3f} | {correlation['target_log_frequency']:+.3f} | "
                     f"{correlation['position']:+.3f} |")
    return "\n".join(lines + paired_markdown(paired, len(args.seeds), args.bootstrap)) + "\n"


def paired_markdown(paired: list[dict], seeds: int, replicates: int) -> list[str]:
    """The paired-difference table: with two or more seeds the interval over seeds and documents, then the
    bootstrap over documents (seeds pooled); with one seed the bootstrap alone, said to cover documents only."""
    def interval(values: list[float] | None) -> str:
        return f"[{values[0]:+.3f}, {values[1]:+.3f}]" if values else "not computed"

    if seeds > 1:
        lines = ["", "Paired differences A − B in perplexity: a 95 % interval over seeds and test documents "
                 "(t-interval over the per-seed differences plus the document effect common to all seeds, "
                 "clipdro/stats.py), and the bootstrap over test documents, the same draws for every seed's pair, "
                 f"seeds pooled ({replicates} replicates), which leaves out the seed-to-seed variation:", "",
                 "| A − B | mean difference | 95 % interval, seeds and documents | 95 % interval, documents only |",
                 "|---|---:|---|---|"]
        lines += [f"| {row['comparison']} | {row['mean_difference']:+.3f} | {interval(row['ci95'])} | "
                  f"{interval(row['ci95_documents_only'])} |" for row in paired]
        return lines
    lines = ["", f"Paired differences A − B in perplexity, one seed: 95 % bootstrap interval over test documents "
             f"({replicates} replicates), which covers document sampling only, not the variation between "
             "training seeds:", "", "| A − B | mean difference | 95 % interval, documents only |", "|---|---:|---|"]
    return lines + [f"| {row['comparison']} | {row['mean_difference']:+.3f} | {interval(row['ci95_documents_only'])} |"
                    for row in paired]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    selection = select_rho(args) if args.select_rho else None
    rho = selection["rho"] if selection else args.rho
    runs = []
    for seed in args.seeds:
        for mode in MODES:  # frozen needs its seed's plain LM first
            runs.append(train_and_evaluate(mode, seed, args, rho))
    joint_config = load_config(LLMTrainConfig, args.config, run_overrides("joint", args.seeds[0], args, rho=rho))
    settings = {"config": str(args.config), "overrides": args.overrides, "corpus": str(args.corpus),
                "seeds": args.seeds, "frozen_steps": args.frozen_steps, "frozen_tempnet_lr": args.frozen_tempnet_lr,
                "rho": joint_config.loss.rho, "rho_selection": selection,
                "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                            f"Python {platform.python_version()}"}
    summary, paired = summary_rows(runs, args.seeds), paired_rows(args)
    (args.output_dir / "results.json").write_text(json.dumps(
        {"settings": settings, "runs": runs, "summary": summary, "paired": paired}, indent=1) + "\n")
    text = markdown(summary, paired, runs, args, settings)
    (args.output_dir / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
