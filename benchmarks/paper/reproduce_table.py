"""The paper's comparison (CLIP, SogCLR, iSogCLR, TempNet; method.md §5) at laptop scale.

    python -m benchmarks.paper.reproduce_table                 # 4 methods x 3 seeds, about 1 hour on 2 CPU cores
    python -m benchmarks.paper.reproduce_table --methods clip sogclr isogclr tempnet oracle   # + the oracle
    python -m benchmarks.paper.reproduce_table --seeds 0 --methods clip tempnet run.epochs=2   # a quick look
    python -m benchmarks.paper.reproduce_table --methods sogclr oracle oracle-half oracle-inverted --baseline sogclr
    python -m benchmarks.paper.reproduce_table --config configs/pretrained_demo.yaml \
        --methods clip sogclr tempnet --output-dir runs/reproduce-pretrained-demo tempnet.start_epoch=0

Every run trains with the base config ``--config`` (default ``benchmarks/paper/configs/reproduce.yaml``:
``clipdro-tiny-vit`` on the embedded openclipart training split) plus the method's overrides
(``METHODS`` below), so the model, the data order (``data.seed``), the initialisation (``run.seed``),
the batch and the number of steps are the same for all methods of a seed. Each run is evaluated at
its end by the trainer itself on the config's evaluation sets (``eval.retrieval[0]``,
``eval.zeroshot[0]``; reproduce.yaml: the held-out split): retrieval recall@1/5/10 both ways and
zero-shot top-1/top-5 accuracy (22-way). Runs of a per-sample method (``tempnet``, ``isogclr``) then
get ``clipdro report``, whose ``training_taus.csv`` gives the spread of the learned temperatures over
the 5,712 training samples and their Spearman correlation with caption commonness (docs/evaluation.md).

Every run is also evaluated again with ``clipdro eval retrieval|zeroshot --checkpoint RUN --device cpu
--precision fp32`` on the same two sets (``RUN/eval_retrieval.json``, ``RUN/eval_zeroshot.json``,
made only when missing), whose per-query ranks give paired intervals: for each method other than
``--baseline``, method − baseline (and method − sogclr when sogclr is in the sweep), seed s of the
method paired with seed s of the reference (``clipdro.eval.compare``, docs/evaluation.md "Comparing
two models"): with two or more seeds a 95 % interval over seeds and queries, and beside it the
paired bootstrap interval over queries with the seeds pooled (which leaves out the seed-to-seed
variation); with one seed the query-only interval alone, said to be so.  The primary metric,
``PRIMARY`` (the mean of IR@1 and TR@1), is fixed in this file before any run and comes first.

A sweep that changes one setting of the methods it trains (``loss.rho=3.04``, ``tempnet.lr=...``) is
compared against the unchanged baselines of an earlier sweep with ``--reference-dir DIR`` (that
sweep's ``results.json``): its ``--reference-methods`` (default clip and sogclr) are taken from
there, seed for seed, without training, and enter every table and interval as if trained here. The
two sweeps must share the base config and the evaluation sets (checked).

Runs are done seed by seed (all methods of seed 0 first), so a partial sweep is balanced. A run
whose folder already holds a finished run of exactly the same resolved config is reused, not
retrained: rerunning the command after an interruption continues the sweep (``--fresh`` retrains).
Extra ``key=value`` arguments override the config of every run (e.g. ``run.epochs=2``). With
``--archive-dir DIR`` (benchmarks/paper/run_archive.py) the small files of every finished run are also kept in
DIR, and runs kept there that the output folder lacks are copied in first and reused: a sweep continues on
another machine from what was committed, without checkpoints (the tau spread is cached per run).

Outputs in ``--output-dir`` (default ``runs/reproduce``): one folder per run, ``results.json``
(settings, hardware, every run, summaries, ``paired_intervals``: fractions, not points),
``results.md`` (the mean ± std table, per-seed differences of each method from ``--baseline``
(default clip), temperature spreads, then the paired-interval tables in points) and ``--figure``
(default ``OUTPUT_DIR/reproduce_table.png``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchmarks.paper.dataset_oracle  # noqa: F401  (registers the dataset-oracle loss)
import benchmarks.paper.oracle_tau  # noqa: F401  (registers the oracle loss: its configs resolve here too)
from benchmarks.paper.run_archive import TAUS_FILE, restore_runs, save_run
from clipdro.config import load_config, to_dict
from clipdro.data.evalset import EvalSet
from clipdro.eval import compare
from clipdro.eval.results import load_results
from clipdro.eval.zeroshot import load_labelled_set
from clipdro.stats import spearman
from clipdro.train_config import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "reproduce.yaml"
# The per-query evaluation files of a run (clipdro eval ... --output), by task.
EVAL_FILES = {"retrieval": "eval_retrieval.json", "zeroshot": "eval_zeroshot.json"}
# The second reference of the paired intervals (besides --baseline) when it is in the sweep.
SECOND_REFERENCE = "sogclr"

# Each method's settings on top of the base config. Everything else (model, data, batch, steps,
# optimiser, tau range, rho, gamma) is shared; docs/results.md explains every choice.
METHODS: dict[str, list[str]] = {
    "clip": ["loss.name=clip", "temperature.init=0.07"],  # open_clip's initial 1/logit_scale, learned from there
    "sogclr": ["loss.name=sogclr"],  # one fixed tau = temperature.init of the base config
    "isogclr": ["loss.name=isogclr"],  # per-sample tau tables, every row starting at temperature.init
    # TempNet frozen (at its initial tau, about 0.06) for the first half: docs/results.md, "the cold dive"
    "tempnet": ["loss.name=tempnet", "tempnet.start_epoch=6"],
}
# Not in the paper, not run by default: every anchor gets its exact in-batch tau* (KL = rho), rescaled to
# sogclr's level temperature.init (benchmarks.paper.oracle_tau): what perfect personalisation alone is worth here.
# The variants raise each tau's ratio to the batch's geometric mean to a power (oracle_tau.py --strength):
# 0.5 half the spread on a log scale (a smoothed tau*, what an imperfect TempNet learns), 2 double, -1 the rule
# inverted (the anchors it warms are cooled, and vice versa).
ORACLE_STRENGTHS = {"oracle": 1.0, "oracle-half": 0.5, "oracle-double": 2.0, "oracle-inverted": -1.0}
# sogclr's estimator with oracle temperatures; run_overrides adds the level (the resolved temperature.init).
METHODS |= {name: ["loss.name=oracle", f"loss.options.strength={strength}"]
            for name, strength in ORACLE_STRENGTHS.items()}
# Each sample's tau* against the whole training set, refreshed per epoch (benchmarks.paper.dataset_oracle):
# a temperature that depends on the sample alone, which a TempNet can represent.
# "dataset-oracle-level" rescales every refresh to sogclr's level temperature.init (run_overrides adds it), so
# that it differs from sogclr in the spread alone: over all N - 1 competitors the same rho asks for a far colder
# tau than in a batch of B - 1 (docs/results.md, "The dataset-scope oracle").
# "dataset-oracle-matched" reaches the same level by the margin instead: each refresh solves for the rho' whose
# tau* has sogclr's geometric mean and uses those tau* unscaled and unclipped (the DRO rule itself at that rho').
METHODS["dataset-oracle"] = ["loss.name=dataset-oracle"]
METHODS["dataset-oracle-level"] = ["loss.name=dataset-oracle"]
METHODS["dataset-oracle-matched"] = ["loss.name=dataset-oracle", "loss.options.level_by=rho"]
DATASET_ORACLES = ("dataset-oracle", "dataset-oracle-level", "dataset-oracle-matched")  # taus in the loss's tables
LEVELLED_METHODS = (*ORACLE_STRENGTHS, "dataset-oracle-level", "dataset-oracle-matched")
ENTRY_POINTS = {**dict.fromkeys(ORACLE_STRENGTHS, "benchmarks.paper.oracle_tau"),  # they register their loss
                **dict.fromkeys(DATASET_ORACLES, "benchmarks.paper.dataset_oracle")}
DEFAULT_METHODS = ["clip", "sogclr", "isogclr", "tempnet"]
PER_SAMPLE_METHODS = ("isogclr", "tempnet")

# (column title, metrics.jsonl key) in table order; IR = text->image, TR = image->text (method.md §5)
METRICS = [
    ("IR@1", "image_retrieval_recall@1"), ("IR@5", "image_retrieval_recall@5"), ("IR@10", "image_retrieval_recall@10"),
    ("TR@1", "text_retrieval_recall@1"), ("TR@5", "text_retrieval_recall@5"), ("TR@10", "text_retrieval_recall@10"),
    ("zero-shot top-1", "zeroshot_acc1"), ("zero-shot top-5", "zeroshot_acc5"),
    # Each class weighted equally: top-1 alone rewards leaning towards the large classes (openclipart's
    # test split: 25 % computers, 24 % shapes), which a model can do while recognising fewer classes.
    ("zero-shot per-class recall", "zeroshot_mean_per_class_recall"),
]
# The primary metric of the paired intervals, fixed here before any run (the paper's headline: retrieval R@1 both
# ways): the mean of these METRICS titles, all of one task; every other metric is secondary.
PRIMARY = ("IR@1", "TR@1")
PRIMARY_TITLE = "mean of IR@1 and TR@1"


def metric_task(key: str) -> str:
    """The evaluation task of a METRICS key: zeroshot_* keys are zero-shot, the rest retrieval."""
    return "zeroshot" if key.startswith("zeroshot_") else "retrieval"


def result_metric(key: str) -> str:
    """A METRICS key's name in a ``clipdro eval`` result file (and its per_query comparison)."""
    return key.removeprefix("zeroshot_")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every run, e.g. run.epochs=2")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "runs" / "reproduce")
    parser.add_argument("--figure", type=Path, help="the plot (default OUTPUT_DIR/reproduce_table.png)")
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--baseline", default="clip", choices=list(METHODS),
                        help="the method every other one is compared with seed by seed in results.md")
    parser.add_argument("--reference-dir", type=Path,
                        help="an earlier sweep's output folder: its --reference-methods runs are compared, not "
                             "trained (same base config and evaluation sets; the overrides may differ)")
    parser.add_argument("--reference-methods", nargs="+", default=["clip", "sogclr"], choices=list(METHODS),
                        help="the methods taken from --reference-dir (default clip sogclr)")
    parser.add_argument("--archive-dir", type=Path,
                        help="keep finished runs' small files here (benchmarks/paper/run_archive.py): runs archived "
                             "there and missing from --output-dir are restored first and reused, and every run is "
                             "archived once evaluated")
    parser.add_argument("--config", type=Path, default=BASE_CONFIG,
                        help="base config of every run (default benchmarks/paper/configs/reproduce.yaml); "
                             "a relative path not found from here is looked up from the repository root")
    args = parser.parse_intermixed_args(argv)  # overrides before and after --options
    args.config = resolve_config(args.config)
    if not args.config.is_file():
        parser.error(f"--config: no such file: {args.config}")
    if args.reference_dir is not None:
        args.reference_dir = resolve_config(args.reference_dir)
        if both := sorted(set(args.reference_methods) & set(args.methods)):
            parser.error(f"{', '.join(both)}: in --methods and in --reference-methods; a method is trained "
                         "here or taken from --reference-dir, not both")
    return args


def resolve_config(path: Path) -> Path:
    """``path`` made absolute (the runs train in the repository root): from the current directory, or
    from the repository root when it is relative and only there."""
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path.resolve()


def display_path(path: Path) -> str:
    """``path`` relative to the repository root when inside it (as results.json records it), else absolute."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path.resolve())


# ------------------------------------------------------------------------------ one run


def run_overrides(method: str, seed: int, output_dir: Path, extra: list[str],
                  config: Path = BASE_CONFIG) -> list[str]:
    overrides = [*METHODS[method], f"run.seed={seed}", f"data.seed={seed}", f"run.output_dir={output_dir}",
                 f"run.name={method}-seed{seed}", *extra]
    if method in LEVELLED_METHODS:  # at sogclr's level, temperature.init as resolved: only the spread differs
        overrides.append(f"loss.options.level={load_config(TrainConfig, config, overrides).temperature.init}")
    return overrides


def final_eval(run_dir: Path) -> dict | None:
    """The last evaluation record of a run's metrics.jsonl, None when the run has none."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [record for record in records if "eval" in record]
    return evals[-1] if evals else None


def without_output_dir(config: dict) -> dict:
    """A resolved config without ``run.output_dir``: where a run was written (a restored one,
    benchmarks/paper/run_archive.py, was written elsewhere) does not change it."""
    return {**config, "run": {key: value for key, value in config["run"].items() if key != "output_dir"}}


def finished_with(run_dir: Path, expected: dict) -> bool:
    """Whether ``run_dir`` holds a run of exactly this resolved config that trained to its end."""
    saved = run_dir / "config.yaml"
    # Resolved again, so that options added since the run was trained take their defaults.
    if not saved.exists() or (without_output_dir(to_dict(load_config(TrainConfig, saved, [])))
                              != without_output_dir(expected)):
        return False
    return trained_to_end(run_dir, expected)


def trained_to_end(run_dir: Path, config: dict) -> bool:
    """Whether the last evaluation in ``run_dir``'s metrics.jsonl is at the config's last step."""
    record = final_eval(run_dir)
    steps = config["run"]["epochs"] * config["data"]["epoch_samples"] // config["data"]["batch_size"]
    return record is not None and record["step"] == steps


def finished_run_method(run_dir: Path) -> str | None:
    """The method of a sweep's run folder (named METHOD-seedS) when that run trained to its end and has
    both per-query evaluation files of its final step; None otherwise."""
    method = run_dir.name.rsplit("-seed", 1)[0]
    saved = run_dir / "config.yaml"
    if method not in METHODS or not saved.is_file():
        return None
    if not trained_to_end(run_dir, to_dict(load_config(TrainConfig, saved, []))):
        return None
    step = final_eval(run_dir)["step"]
    files = [run_dir / name for name in EVAL_FILES.values()]
    return method if all(path.is_file() and json.loads(path.read_text()).get("step") in (None, step)
                         for path in files) else None


def train_command(method: str, overrides: list[str], config: Path = BASE_CONFIG) -> list[str]:
    """The command line of one run (an oracle's entry point registers its loss, then trains)."""
    if method in ENTRY_POINTS:
        entry_point = ["-m", ENTRY_POINTS[method], "--config", str(config)]
    else:
        entry_point = ["-m", "clipdro.cli", "train", "--config", str(config)]
    return [sys.executable, *entry_point, *overrides]


def train(method: str, seed: int, args: argparse.Namespace) -> tuple[Path, float | None]:
    """Train (or reuse) one run; returns its folder and the training wall time (None when reused)."""
    overrides = run_overrides(method, seed, args.output_dir, args.overrides, args.config)
    expected = to_dict(load_config(TrainConfig, args.config, overrides))
    run_dir = args.output_dir / f"{method}-seed{seed}"
    if not args.fresh and finished_with(run_dir, expected):
        print(f"[{method} seed {seed}] reusing the finished run in {run_dir}", flush=True)
        return run_dir, None
    shutil.rmtree(run_dir, ignore_errors=True)
    command = train_command(method, overrides, args.config)
    print(f"[{method} seed {seed}] {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(args.output_dir / f"{method}-seed{seed}.console.txt", "w") as console:
        subprocess.run(command, cwd=REPO_ROOT, stdout=console, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - started
    print(f"[{method} seed {seed}] trained in {seconds / 60:.1f} min", flush=True)
    return run_dir, seconds


def eval_sets(config: TrainConfig) -> dict[str, tuple[Path, str]]:
    """Per task, the folder and name of the config's first evaluation set (``eval.retrieval[0]``,
    ``eval.zeroshot[0]``, relative paths from the repository root, where the runs train): the
    trainer logs its metrics as ``NAME/key``, and the per-query evaluation uses the same folder."""
    sets = {}
    for task, paths in (("retrieval", config.eval.retrieval), ("zeroshot", config.eval.zeroshot)):
        if not paths:
            raise SystemExit(f"the config has no eval.{task} set: the table needs retrieval and zero-shot metrics")
        folder = REPO_ROOT / paths[0]  # an absolute path stays as it is
        evalset = EvalSet.load(folder) if task == "retrieval" else load_labelled_set(folder)
        sets[task] = folder, evalset.name
    return sets


def per_query_eval(run_dir: Path, sets: dict[str, tuple[Path, str]], config: TrainConfig,
                   step: int | None = None) -> dict[str, Path]:
    """``RUN/eval_retrieval.json`` and ``RUN/eval_zeroshot.json`` (per-query ranks), each made with
    ``clipdro eval TASK --checkpoint RUN`` on the CPU in fp32 when missing, or when it holds another
    checkpoint ``step`` than the run's final evaluation; returns them by task."""
    files = {}
    for task, (folder, _) in sets.items():
        output = run_dir / EVAL_FILES[task]
        if output.exists() and step is not None and json.loads(output.read_text()).get("step") not in (None, step):
            output.unlink()  # from an earlier checkpoint of this folder
        if not output.exists():
            partial = output.with_name(output.stem + ".partial.json")  # no half-written file on an interruption
            command = [sys.executable, "-m", "clipdro.cli", "eval", task, "--checkpoint", str(run_dir),
                       "--data", str(folder), "--device", "cpu", "--precision", "fp32",
                       "--batch-size", str(config.eval.batch_size), "--output", str(partial)]
            if task == "retrieval":
                command += ["--recall-k", *map(str, config.eval.recall_k)]
            print(f"[{run_dir.name}] clipdro eval {task} --checkpoint {run_dir}", flush=True)
            subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
            partial.replace(output)
        files[task] = output
    return files


def check_against_training(run: dict, files: dict[str, Path]) -> None:
    """Warn when the per-query evaluation does not reproduce the trainer's final metrics."""
    records = {task: json.loads(path.read_text())["metrics"] for task, path in files.items()}
    for title, key in METRICS:
        value = records[metric_task(key)].get(result_metric(key))
        if value is not None and abs(value - run["metrics"][title]) > 1e-6:
            print(f"[{run['name']}] warning: {title} {100 * value:.2f} in {files[metric_task(key)].name} but "
                  f"{100 * run['metrics'][title]:.2f} in training's final evaluation", flush=True)


def temperature_summary(run_dir: Path) -> dict:
    """Spread of the learned per-sample taus over the training samples, from ``clipdro report``."""
    subprocess.run([sys.executable, "-m", "clipdro.cli", "report", str(run_dir), "--data",
                    str(REPO_ROOT / "data" / "openclipart" / "test")],
                   cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    return training_taus_summary(run_dir / "report" / "training_taus.csv")


def run_taus(run_dir: Path, method: str) -> dict | None:
    """The spread of a run's learned temperatures (per-sample methods and dataset oracles; None for the
    others), from ``RUN/taus_summary.json`` when there, else from its final checkpoint, then saved there."""
    cached = run_dir / TAUS_FILE
    if cached.is_file():
        return json.loads(cached.read_text())
    if method in PER_SAMPLE_METHODS:
        taus = temperature_summary(run_dir)
    elif method in DATASET_ORACLES:
        taus = oracle_table_summary(run_dir)
    else:
        return None
    cached.write_text(json.dumps(taus, indent=2))
    return taus


def training_taus_summary(path: Path) -> dict:
    """Per side: the spread of a report's ``training_taus.csv`` and tau's Spearman with caption commonness.
    Empty cells (an isogclr sample the run never drew; a caption without words) are NaN, left out."""
    with open(path) as file:
        rows = list(csv.DictReader(file))

    def column(name: str) -> list[float]:
        return [float(row[name] or "nan") for row in rows]

    commonness = column("commonness")
    return {side: {**spread(column(f"{side}_tau")), "spearman_commonness": spearman(commonness, column(f"{side}_tau"))}
            for side in ("image", "text")}


def spread(values: list[float]) -> dict:
    """mean, std, p5, p50, p95 and p95/p5 of the finite values."""
    taus = sorted(value for value in values if math.isfinite(value))
    p5, p50, p95 = (taus[int(q * (len(taus) - 1))] for q in (0.05, 0.5, 0.95))
    return {"mean": statistics.fmean(taus), "std": statistics.pstdev(taus), "p5": p5, "p50": p50, "p95": p95,
            "p95_over_p5": p95 / p5}


def oracle_table_summary(run_dir: Path) -> dict:
    """Spread of a dataset-oracle run's per-sample taus (its last refresh, the tables in its newest checkpoint),
    over the samples of the training split; no commonness correlation (NaN)."""
    from clipdro.checkpoint import list_checkpoints, load_checkpoint

    loss_state = load_checkpoint(list_checkpoints(run_dir)[-1], map_location="cpu")["loss"]
    return {side: {**spread(loss_state[f"{side}_taus"].double().tolist()), "spearman_commonness": math.nan}
            for side in ("image", "text")}


def global_tau(run_dir: Path) -> float:
    """The last logged (mean) temperature: clip's 1/logit_scale, sogclr's fixed tau, the oracle's batch mean."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [record for record in records if "image_tau_mean" in record][-1]["image_tau_mean"]


def reference_runs(reference_dir: Path, methods: list[str], seeds: list[int], settings: dict) -> list[dict]:
    """The runs of ``methods`` x ``seeds`` from the sweep in ``reference_dir`` (its results.json), named by
    their folder and with absolute evaluation-file paths; exits with one line when the sweep is missing,
    lacks one of them, or was made with another base config or other evaluation sets."""
    path = reference_dir / "results.json"
    if not path.is_file():
        raise SystemExit(f"--reference-dir: no results.json in {reference_dir} (run that sweep first)")
    reference = json.loads(path.read_text())
    for key in ("base_config", "eval_sets"):
        if reference["settings"][key] != settings[key]:
            raise SystemExit(f"--reference-dir: {path} has {key} {reference['settings'][key]}, this sweep "
                             f"{settings[key]}: its runs are not comparable")
    by_key = {(run["method"], run["seed"]): run for run in reference["runs"]}
    runs = []
    for seed in seeds:
        for method in methods:
            if (method, seed) not in by_key or not by_key[(method, seed)].get("eval_files"):
                raise SystemExit(f"--reference-dir: {path} has no evaluated {method} run of seed {seed}")
            run = dict(by_key[(method, seed)])
            if missing := [title for title, _ in METRICS if title not in run["metrics"]]:
                raise SystemExit(f"--reference-dir: {path} predates the metrics {', '.join(missing)}; rerun that "
                                 "sweep first (its finished runs are reused)")
            run["name"] = display_path(reference_dir / run["name"])
            run["train_seconds"] = None
            run["eval_files"] = {task: str(reference_dir / file) for task, file in run["eval_files"].items()}
            runs.append(run)
    return runs


# ------------------------------------------------------------------------------ summaries


def signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.2f}"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict], methods: list[str]) -> dict:
    summary = {}
    for method in methods:
        mine = [run for run in runs if run["method"] == method]
        summary[method] = {title: mean_std([run["metrics"][title] for run in mine]) for title, _ in METRICS}
        summary[method]["seeds"] = len(mine)
    return summary


def paired_differences(runs: list[dict], method: str, baseline: str) -> dict[str, list[float]]:
    """Per seed, method - baseline for each metric (same data order and initialisation)."""
    by_key = {(run["method"], run["seed"]): run for run in runs}
    seeds = sorted(seed for (name, seed) in by_key if name == method and (baseline, seed) in by_key)
    return {title: [by_key[(method, seed)]["metrics"][title] - by_key[(baseline, seed)]["metrics"][title]
                    for seed in seeds] for title, _ in METRICS}


def interval_pairs(methods: list[str], baseline: str) -> list[tuple[str, str]]:
    """(method, reference) of the paired-interval tables: every method against the baseline, and
    against sogclr too when sogclr is in the sweep and is not the baseline."""
    if baseline not in methods:
        return []
    references = [baseline, *([SECOND_REFERENCE] if SECOND_REFERENCE in methods and SECOND_REFERENCE != baseline
                               else [])]
    return [(method, reference) for method in methods for reference in references
            if method not in (baseline, reference)]


def paired_intervals(runs: list[dict], method: str, reference: str, output_dir: Path,
                     replicates: int = compare.REPLICATES, seed: int = 0) -> dict | None:
    """method − reference for each METRICS metric, the PRIMARY mean first, with the intervals of
    :func:`clipdro.eval.compare.compare_results`: seed s of the method paired with seed s of the
    reference, only seeds both have per-query files for.  ``low``/``high``: with two or more seeds
    over seeds and queries, with one over queries only (``covers`` says which); ``query_low``/
    ``query_high``: the paired bootstrap over queries, seeds pooled.  Values are fractions; None
    when no seed pairs up."""
    by_key = {(run["method"], run["seed"]): run for run in runs if run.get("eval_files")}
    seeds = sorted(s for (name, s) in by_key if name == method and (reference, s) in by_key)
    if not seeds:
        return None
    keys = dict(METRICS)
    primary = [result_metric(keys[title]) for title in PRIMARY]
    found: dict[str, compare.Comparison] = {}
    for task in EVAL_FILES:
        sources = [str(output_dir / by_key[(name, s)]["eval_files"][task])
                   for s in seeds for name in (method, reference)]
        task_primary = primary if metric_task(keys[PRIMARY[0]]) == task else ()
        for item in compare.compare_results(load_results(sources), sources, replicates, seed, primary=task_primary):
            found[PRIMARY_TITLE if item.primary else item.metric] = item
    metrics: dict[str, dict] = {}
    for title, key in [(PRIMARY_TITLE, None), *METRICS]:
        item = found.get(PRIMARY_TITLE if key is None else result_metric(key))
        if item is not None:
            metrics[title] = {"a": item.a, "b": item.b, "diff": item.diff, "low": item.low, "high": item.high,
                              "covers": item.covers, "query_low": item.query_low, "query_high": item.query_high,
                              "pair_diffs": list(item.pair_diffs), "queries": item.queries,
                              "num_queries": item.num_queries}
    return {"method": method, "reference": reference, "seeds": seeds, "replicates": replicates,
            "bootstrap_seed": seed, "confidence": compare.CONFIDENCE, "primary": PRIMARY_TITLE, "metrics": metrics}


def interval_markdown(intervals: list[dict]) -> str:
    """One table per entry of :func:`paired_intervals`: difference and intervals in points, the
    primary metric first.  With two or more seeds the interval over seeds and queries comes first
    and the query-only one beside it; with one seed the table says it covers queries only."""
    lines = []
    for entry in intervals:
        seeds, level = entry["seeds"], f"{100 * entry['confidence']:g} %"
        bootstrap = f"{entry['replicates']} replicates, bootstrap seed {entry['bootstrap_seed']}"
        if len(seeds) == 1:
            lines += ["", f"{entry['method']} − {entry['reference']}, seed {seeds[0]}: paired bootstrap {level} "
                      f"interval over queries, which covers query sampling only, not the variation between "
                      f"training seeds (percentage points; {bootstrap}):", "",
                      f"| metric | difference (points) | {level} interval, queries only (points) |", "|---|---:|---|"]
        else:
            lines += ["", f"{entry['method']} − {entry['reference']}, seeds {', '.join(map(str, seeds))}: {level} "
                      "interval over seeds and queries (t-interval over the per-seed differences plus the query "
                      "effect common to all seeds, clipdro/stats.py) and, beside it, the paired bootstrap interval "
                      f"over queries with the seeds pooled, which leaves out the seed-to-seed variation "
                      f"(percentage points; {bootstrap}):", "",
                      f"| metric | difference (points) | {level} interval, seeds and queries (points) | "
                      f"{level} interval, queries only (points) |", "|---|---:|---|---|"]
        for title in [PRIMARY_TITLE, *(title for title, _ in METRICS)]:
            item = entry["metrics"].get(title)
            name = f"{title} (primary)" if title == PRIMARY_TITLE else title
            if item is None:  # e.g. top-5 with fewer than 5 classes
                lines.append(f"| {name} | – | – |" + (" – |" if len(seeds) > 1 else ""))
                continue
            cells = [f"{100 * item['diff']:+.2f}"]
            if len(seeds) > 1:
                cells.append(f"[{100 * item['low']:+.2f}, {100 * item['high']:+.2f}]")
            cells.append(f"[{100 * item['query_low']:+.2f}, {100 * item['query_high']:+.2f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if lines else ""


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(runs: list[dict], summary: dict, methods: list[str], baseline: str = "clip",
             intervals: list[dict] | None = None) -> str:
    lines = ["| method | " + " | ".join(title for title, _ in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for method in methods:
        count = summary[method]["seeds"]
        # one seed has no spread: print the value alone rather than a misleading "± 0.0"
        cells = [f"{percent(mean)} ± {percent(std)}" if count > 1 else percent(mean)
                 for mean, std in (summary[method][t] for t, _ in METRICS)]
        label = f"{count} seeds" if count > 1 else "1 seed"
        lines.append(f"| {method} ({label}) | " + " | ".join(cells) + " |")
    for method in methods:
        if method == baseline or baseline not in methods:
            continue
        differences = paired_differences(runs, method, baseline)
        lines += ["", f"{method} − {baseline} per seed (percentage points, same data order and initialisation):", "",
                  "| metric | " + " | ".join(f"seed {run['seed']}" for run in runs if run["method"] == method)
                  + " | mean |", "|---|" + "---:|" * (1 + sum(run["method"] == method for run in runs))]
        for title, _ in METRICS:
            values = differences[title]
            lines.append(f"| {title} | " + " | ".join(f"{100 * v:+.1f}" for v in values)
                         + f" | {100 * statistics.fmean(values):+.1f} |")
    lines += ["", "| run | final tau (image) | image tau p5 – p95 (p95/p5) | text tau p5 – p95 (p95/p5) | "
              "Spearman(tau, commonness) image / text | train min |", "|---|---|---|---|---|---:|"]
    for run in runs:
        minutes = f"{run['train_seconds'] / 60:.1f}" if run["train_seconds"] else "reused"
        taus = run.get("taus")
        if taus:
            image, text = taus["image"], taus["text"]
            lines.append(f"| {run['name']} | {image['mean']:.4f} (mean) | {image['p5']:.4f} – {image['p95']:.4f} "
                         f"({image['p95_over_p5']:.2f}) | {text['p5']:.4f} – {text['p95']:.4f} "
                         f"({text['p95_over_p5']:.2f}) | {signed(image['spearman_commonness'])} / "
                         f"{signed(text['spearman_commonness'])} | {minutes} |")
        else:
            kind = "global" if run["method"] in ("clip", "sogclr") else "last batch's mean"
            lines.append(f"| {run['name']} | {run['global_tau']:.4f} ({kind}) | – | – | – | {minutes} |")
    return "\n".join(lines) + "\n" + interval_markdown(intervals or [])


def plot(runs: list[dict], summary: dict, methods: list[str], path: Path, model: str = "clipdro-tiny-vit") -> None:
    from matplotlib.figure import Figure  # no pyplot: files only, no display needed

    shown = ["IR@1", "IR@5", "TR@1", "TR@5", "zero-shot top-1"]
    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(methods)
    for offset, method in enumerate(methods):
        xs = [index + (offset - (len(methods) - 1) / 2) * width for index in range(len(shown))]
        means = [100 * summary[method][title][0] for title in shown]
        stds = [100 * summary[method][title][1] for title in shown]
        axes.bar(xs, means, width, yerr=stds, capsize=3, label=method)
        for x, title in zip(xs, shown, strict=True):  # every seed as a dot
            seeds = [100 * run["metrics"][title] for run in runs if run["method"] == method]
            axes.scatter([x] * len(seeds), seeds, s=8, color="black", zorder=3)
    axes.set_xticks(range(len(shown)), shown)
    axes.set_ylabel("% on the 1,000 held-out openclipart images")
    axes.set_title(f"{model} on openclipart: mean ± std over seeds (dots: single seeds)")
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.output_dir = args.output_dir.resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(TrainConfig, args.config, args.overrides)  # the methods' overrides leave eval alone
    sets = eval_sets(config)
    settings = {"base_config": display_path(args.config), "seeds": args.seeds, "baseline": args.baseline,
                "methods": {method: METHODS[method] for method in args.methods}, "overrides": args.overrides,
                "eval_sets": {task: display_path(folder) for task, (folder, _) in sets.items()}}
    runs, methods = [], args.methods
    if args.archive_dir is not None:
        for run_dir in restore_runs(args.archive_dir, args.output_dir):
            print(f"restored {run_dir.name} from {display_path(args.archive_dir)}", flush=True)
    if args.reference_dir is not None:  # the unchanged baselines of an earlier sweep, not retrained
        runs = reference_runs(args.reference_dir, args.reference_methods, args.seeds, settings)
        methods = [*args.reference_methods, *args.methods]
        settings["reference"] = {"dir": display_path(args.reference_dir), "methods": args.reference_methods}
    for seed in args.seeds:
        for method in args.methods:
            run_dir, seconds = train(method, seed, args)
            final = final_eval(run_dir)
            record = final["eval"]
            run = {"method": method, "seed": seed, "name": run_dir.name, "train_seconds": seconds,
                   "metrics": {title: record[f"{sets[metric_task(key)][1]}/{key}"] for title, key in METRICS}}
            files = per_query_eval(run_dir, sets, config, final["step"])
            check_against_training(run, files)
            run["eval_files"] = {task: str(path.relative_to(args.output_dir)) for task, path in files.items()}
            if (taus := run_taus(run_dir, method)) is not None:
                run["taus"] = taus
            else:
                run["global_tau"] = global_tau(run_dir)
            if args.archive_dir is not None:
                save_run(run_dir, args.archive_dir)
            runs.append(run)
    summary = summarise(runs, methods)
    intervals = [entry for method, reference in interval_pairs(methods, args.baseline)
                 if (entry := paired_intervals(runs, method, reference, args.output_dir)) is not None]
    table = markdown(runs, summary, methods, args.baseline, intervals)
    figure = args.figure or args.output_dir / "reproduce_table.png"
    plot(runs, summary, methods, figure, config.model.name)
    hardware = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                "python": platform.python_version()}
    (args.output_dir / "results.json").write_text(json.dumps(
        {"settings": settings, "hardware": hardware, "runs": runs, "summary": summary,
         "paired_intervals": intervals}, indent=2))
    (args.output_dir / "results.md").write_text(table)
    print(table)
    print(f"wrote {args.output_dir / 'results.json'}, {args.output_dir / 'results.md'}, {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
