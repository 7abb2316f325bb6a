"""Evaluation result files (one JSON object per run) and the tables that summarise them.

A result file holds: task, model, pretrained, data, dataset, sizes, metrics, timings,
versions (clipdro, torch, open_clip, faiss), device, faiss_gpus, per_query; a retrieval result adds
retrieval_backend (what searched: ``faiss-cpu``, ``faiss-gpu (1 GPU)``, ``brute force (exact ranks)``,
see :func:`clipdro.eval.retrieval.search_backend`); a trained run evaluated with
``--checkpoint`` adds checkpoint (the file), step and loss (the run's loss name).  Metrics are fractions in
[0, 1] (CLIP_benchmark's convention); a NaN metric (acc5 with fewer than 5 classes) is
written as null so the file is strict JSON.  ``per_query`` (format PER_QUERY_FORMAT) holds the
per-query ranks every metric is computed from and the :func:`query_sha256` of the queries, for
``clipdro eval compare`` (docs/evaluation.md, "Comparing two models").  Objects are indented;
lists of numbers are written on one line, so a million per-query ranks stay a few MB.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import open_clip
import torch

import clipdro
from clipdro.errors import UsageError
from clipdro.eval.faiss_backend import faiss_environment

# Leading columns of a summary table; metric columns follow in first-seen order.
ID_COLUMNS = ("task", "dataset", "model", "pretrained")
# Added after ID_COLUMNS when any result comes from a clipdro training checkpoint: several
# runs of one architecture are told apart only by these.
CHECKPOINT_COLUMNS = ("checkpoint", "step", "loss")
# Version tag of a result file's per_query section.
PER_QUERY_FORMAT = "clipdro-per-query/1"


def query_sha256(images: Sequence[str], *, texts: Sequence[str] | None = None,
                 text_to_image: Sequence[int] | None = None, labels: Sequence[int] | None = None) -> str:
    """Hex SHA-256 naming the queries of an evaluation, in order: two result files with the same
    hash were computed on the same images (as listed in eval.json), captions and caption-to-image
    map (retrieval) or labels (zero-shot), in the same order.

    Hashed text: compact UTF-8 JSON of ``{"images": [...], "texts": [...], "text_to_image": [...]}``
    (retrieval) or ``{"images": [...], "labels": [...]}`` (zero-shot), keys in that order,
    ``json.dumps(payload, ensure_ascii=False, separators=(",", ":"))``."""
    payload: dict[str, list] = {"images": list(images)}
    if texts is not None:
        payload["texts"] = list(texts)
        payload["text_to_image"] = [int(owner) for owner in text_to_image or []]
    if labels is not None:
        payload["labels"] = [int(label) for label in labels]
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_environment(device: torch.device) -> dict:
    """versions (clipdro, torch, open_clip, faiss), device (``cpu`` or ``cuda:0 (GPU name)``), faiss_gpus
    (faiss and faiss_gpus are null where faiss cannot be loaded: zero-shot and exact ranks run without it)."""
    described = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    faiss = faiss_environment()
    return {
        "versions": {"clipdro": clipdro.__version__, "torch": torch.__version__,
                     "open_clip": open_clip.__version__, "faiss": faiss["faiss"]},
        "device": described,
        "faiss_gpus": faiss["faiss_gpus"],
    }


def write_results(path: str | Path, record: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(_strict_json(record)) + "\n", encoding="utf-8")
    return path


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    records = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UsageError(f"no such result file: {path}")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise UsageError(f"{path} is not JSON: {error}") from None
        if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
            raise UsageError(f"{path} is not a clipdro eval result (no 'metrics' object)")
        records.append(record)
    return records


def summary_table(records: Sequence[dict], fmt: str = "markdown") -> str:
    """One row per result: identifying columns (a suite task's name first when any result has one;
    checkpoint, step, loss when any result has a checkpoint), then every metric seen (blank where absent).
    Markdown rounds metrics to 4 decimals for reading; CSV keeps full precision."""
    metric_names = list(dict.fromkeys(name for record in records for name in record["metrics"]))
    id_columns = [*(("name",) if any("name" in record for record in records) else ()), *ID_COLUMNS,
                  *(CHECKPOINT_COLUMNS if any("checkpoint" in record for record in records) else ())]
    header = [*id_columns, *metric_names]
    rows = [[_cell(record.get(column)) for column in id_columns]
            + [_cell(record["metrics"].get(name), fmt == "markdown") for name in metric_names]
            for record in records]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([header, *rows])
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    raise UsageError(f"unknown table format {fmt!r} (markdown or csv)")


def _cell(value: object, round_floats: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and round_floats:
        return f"{value:.4f}"
    return str(value)


def _dumps(value: object, indent: str = "") -> str:
    """JSON with objects (and lists holding containers) indented by two spaces and every list of
    scalars on one line without spaces, e.g. ``"recall_k": [1,5,10]``; strict (no NaN)."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(key))}: {_dumps(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list | tuple) and any(isinstance(item, dict | list | tuple) for item in value):
        return "[\n" + ",\n".join(inner + _dumps(item, inner) for item in value) + "\n" + indent + "]"
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _strict_json(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(item) for item in value]
    return value
