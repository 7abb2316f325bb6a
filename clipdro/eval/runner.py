"""One evaluation task (retrieval, zero-shot, linear probe) from parsed ``clipdro eval`` arguments: its data
read and checked before any model is loaded (:func:`prepare_task`), the model loaded once
(:func:`load_model`), the task run into a results record (:func:`run_task`). ``clipdro eval TASK`` runs one
(:mod:`clipdro.eval.cli`), ``clipdro eval suite`` several on one model (:mod:`clipdro.eval.suite`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from clipdro.data.eval_converters import load_evalset
from clipdro.data.evalset import EvalSet
from clipdro.errors import UsageError
from clipdro.eval import retrieval
from clipdro.eval.faiss_backend import load_faiss
from clipdro.eval.linear_probe import ProbeOptions, evaluate_linear_probe
from clipdro.eval.results import run_environment
from clipdro.eval.tasks import Preprocess, TaskResult, Tokenizer, evaluate_retrieval, evaluate_zeroshot
from clipdro.eval.zeroshot import (
    ScoredClasses,
    Template,
    default_template_source,
    load_labelled_set,
    resolve_classes,
    resolve_templates,
)
from clipdro.model_configs import register_model_configs
from clipdro.runtime import resolve_precision
from clipdro.trained_run import load_trained_run


@dataclass
class PreparedTask:
    """A task's inputs, read and checked before any model is loaded."""

    evalset: EvalSet  # the scored set (zero-shot: relabelled to the classes scored)
    classes: ScoredClasses | None = None  # zero-shot
    templates: list[Template] | None = None  # zero-shot
    template_source: str | None = None  # zero-shot
    train_set: EvalSet | None = None  # linear probe


def prepare_task(args: argparse.Namespace) -> PreparedTask:
    """Read and check the data of ``args.command`` (retrieval, zeroshot, linear-probe)."""
    if args.command == "retrieval":
        evalset = load_evalset(args.data)
        if not args.exact_ranks:
            load_faiss()
        return PreparedTask(evalset)
    evalset = load_labelled_set(args.data)
    if args.command == "linear-probe":
        return PreparedTask(evalset, train_set=load_labelled_set(args.train, split="train"))
    template_source = args.templates or default_template_source(evalset)
    classes = resolve_classes(args.classnames, evalset)
    templates = resolve_templates(template_source, evalset)
    return PreparedTask(classes.apply(evalset), classes, templates, template_source)


def run_task(args: argparse.Namespace, task: PreparedTask, loaded: LoadedModel) -> dict:
    """Evaluate ``loaded`` on a prepared task; the results record (what ``--output`` writes)."""
    model, preprocess, tokenizer = loaded.model, loaded.preprocess, loaded.tokenizer
    loader_options = {"batch_size": args.batch_size, "device": args.device, "precision": args.precision,
                      "num_workers": args.workers}
    if args.command == "retrieval":
        result = evaluate_retrieval(model, preprocess, tokenizer, task.evalset, args.recall_k,
                                    exact_ranks=args.exact_ranks, **loader_options)
        task_options = {"recall_k": args.recall_k,
                        "retrieval_backend": retrieval.search_backend(
                            args.recall_k, (result.sizes["num_images"], result.sizes["num_texts"]),
                            exact_ranks=args.exact_ranks)}
    elif args.command == "linear-probe":
        options = ProbeOptions(lr=args.lr, epochs=args.epochs, batch_size=args.probe_batch_size,
                               val_proportion=args.val_proportion, weight_decay=args.weight_decay,
                               seed=args.probe_seed)
        result, fit = evaluate_linear_probe(model, preprocess, task.train_set, task.evalset, options,
                                            **loader_options)
        task_options = {"train_data": _data_location(args.train), "train_dataset": task.train_set.name,
                        "lr": options.lr, "epochs": options.epochs, "probe_batch_size": options.batch_size,
                        "val_proportion": None if args.weight_decay is not None else options.val_proportion,
                        "probe_seed": options.seed, "weight_decay": fit.weight_decay,
                        "validation_acc1": {repr(decay): acc for decay, acc in fit.validation_acc1.items()},
                        "classes": [{"folder": None, "name": name} for name in task.train_set.classnames]}
    else:
        result = evaluate_zeroshot(model, preprocess, tokenizer, task.evalset, task.classes.names, task.templates,
                                   **loader_options)
        task_options = {"classnames": args.classnames, "templates": task.template_source,
                        "classes": task.classes.record()}
    return _result_record(args, loaded.identity, task.evalset, result, task_options)


def _data_location(data: str) -> str:
    """How a results file records a data path: a URL as given, a path absolute."""
    return data if "://" in data else str(Path(data).resolve())


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
    training run (its newest checkpoint) or one checkpoint (folder or file): its open_clip model is evaluated
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


def _result_record(args: argparse.Namespace, identity: dict, evalset: EvalSet, result: TaskResult,
                   task_options: dict) -> dict:
    return {
        "task": args.command,
        **identity,
        **({"seed": args.seed} if args.seed is not None else {}),
        "data": _data_location(args.data),
        "dataset": evalset.name,
        **task_options,
        **result.sizes,
        "metrics": result.metrics,
        "timings": result.timings,
        "precision": resolve_precision(args.precision, args.device),
        **run_environment(args.device),
        "per_query": result.per_query,
    }
