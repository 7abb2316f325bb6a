"""`clipdro eval suite SUITE.yaml`: several evaluation tasks on one model, loaded once, like
CLIP_benchmark's ``eval`` over a dataset list followed by its ``build`` table.

A suite file::

    output_dir: results/my-suite        # optional; --output-dir overrides; default: results/<file stem>
    tasks:
      - name: imagenet-v2               # optional; names the results file (default: TASK-INDEX)
        task: zeroshot                  # retrieval | zeroshot | linear-probe
        data: /data/imagenetv2
        classnames: imagenet            # any option of that `clipdro eval TASK` command,
        templates: openai               # dashes or underscores: recall_k, exact_ranks, ...
      - task: retrieval
        data: /data/wds_flickr30k
        recall_k: [1, 5, 10]

Each task's options become that command's flags (``key: value`` -> ``--key value``; a list -> several
values; ``true`` -> the bare flag, ``false``/null -> omitted) after the suite's own model and
runtime flags, and are parsed and checked by the same parser as the single commands. Every task's data
is read and checked first, then the model is loaded once and the tasks run in order. A task that
fails (bad options, missing data, an unreadable image, ...) is reported and the others still run;
the exit status is then 1. Written: ``OUTPUT_DIR/NAME.json`` per task that ran, ``summary.md`` (the
summary table, then the failed tasks) and ``summary.csv`` (full precision).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from clipdro.errors import UsageError
from clipdro.eval.results import summary_table, write_results
from clipdro.eval.runner import load_model, prepare_task, run_task
from clipdro.runtime import parse_device

SUITE_TASKS = ("retrieval", "zeroshot", "linear-probe")
# Flags the suite passes to every task; a task may set its own batch_size / workers.
MODEL_FLAGS = ("model", "pretrained", "checkpoint", "device", "precision", "seed")
RUNTIME_FLAGS = ("batch_size", "workers")


def read_suite(path: str | Path) -> tuple[list[tuple[str, dict]], str | None]:
    """The (name, options) of every task of a suite file, in order, and its ``output_dir``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such suite file: {path}")
    try:
        payload = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UsageError(f"{path} is not YAML: {' '.join(str(error).split())}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("tasks"), list) or not payload["tasks"]:
        raise UsageError(f"{path}: expected a mapping with a non-empty 'tasks' list")
    unknown = sorted(set(payload) - {"tasks", "output_dir"})
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(unknown)} (tasks, output_dir)")
    tasks, names = [], set()
    for index, options in enumerate(payload["tasks"], start=1):
        if not isinstance(options, dict) or options.get("task") not in SUITE_TASKS:
            raise UsageError(f"{path}: task {index} needs 'task: {' | '.join(SUITE_TASKS)}'")
        options = dict(options)
        name = str(options.pop("name", f"{options['task']}-{index}"))
        if name in names or not name or "/" in name:
            raise UsageError(f"{path}: task {index}: name {name!r} is empty, has a '/', or is used twice")
        names.add(name)
        tasks.append((name, options))
    return tasks, payload.get("output_dir")


def task_argv(options: dict, suite_args: argparse.Namespace) -> list[str]:
    """The `clipdro eval TASK ...` arguments of one suite task: the suite's model and runtime flags,
    then the task's own options (which may override batch_size and workers)."""
    options = {key.replace("-", "_"): value for key, value in options.items()}
    task = options.pop("task")
    refused = sorted(set(options) & set(MODEL_FLAGS + ("output",)))
    if refused:
        raise UsageError(f"{', '.join(refused)} belong to the suite command, not to a task")
    inherited = {key: getattr(suite_args, key) for key in MODEL_FLAGS + RUNTIME_FLAGS if key not in options}
    argv = [task]
    for key, value in {**inherited, **options}.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def run_suite(suite_args: argparse.Namespace, build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    """Run a suite (``clipdro eval suite``); 0 when every task ran, 1 when any failed."""
    tasks, configured_dir = read_suite(suite_args.suite)
    output_dir = Path(suite_args.output_dir or configured_dir or Path("results") / Path(suite_args.suite).stem)
    suite_args.device = parse_device(suite_args.device)
    failures: dict[str, str] = {}
    prepared = []
    for name, options in tasks:  # every task's data first: a bad path should not wait for the model
        try:
            args = build_parser().parse_args(task_argv(options, suite_args))
            args.device = suite_args.device
            prepared.append((name, args, prepare_task(args)))
        except Exception as error:  # noqa: BLE001 - a failed task is reported, the others still run
            failures[name] = _one_line(error)
    records = []
    if prepared:
        if suite_args.seed is not None:
            torch.manual_seed(suite_args.seed)
        loaded = load_model(prepared[0][1])  # every task has the suite's model flags
        for name, args, task in prepared:
            try:
                record = {"name": name, **run_task(args, task, loaded)}
            except Exception as error:  # noqa: BLE001
                failures[name] = _one_line(error)
                continue
            write_results(output_dir / f"{name}.json", record)
            records.append(record)
    _write_summary(output_dir, records, failures, [name for name, _ in tasks])
    return 1 if failures else 0


def _write_summary(output_dir: Path, records: list[dict], failures: dict[str, str], order: list[str]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = summary_table(records, "markdown") if records else "No task ran.\n"
    if failures:
        markdown += "\nFailed tasks:\n\n" + "".join(f"- {name}: {failures[name]}\n" for name in order
                                                    if name in failures)
    (output_dir / "summary.md").write_text(markdown, encoding="utf-8")
    if records:
        (output_dir / "summary.csv").write_text(summary_table(records, "csv"), encoding="utf-8")
    print(markdown, end="")
    print(f"wrote {len(records)} result file(s), summary.md and summary.csv to {output_dir}"
          + (f"; {len(failures)} task(s) failed" if failures else ""))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, UsageError) else f"{type(error).__name__}: {text}"
