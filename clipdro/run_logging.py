"""Training logs: one text line every N steps, a JSONL metrics file, TensorBoard events, tqdm.

Only rank 0 writes. Throughput is measured over the window since the previous log line:
samples/s counts the global batch, per device divides by the world size, and the data vs
compute split tells whether the loader keeps up.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("clipdro.run_logging")


TAU_QUANTILES = (5, 50, 95)  # logged as PREFIX_p5 / _p50 / _p95: where the batch's temperatures lie, and their spread


def tau_summary(prefix: str, tau: torch.Tensor) -> dict[str, float]:
    """Mean, min, max, std and the TAU_QUANTILES percentiles (linear interpolation) of a batch's temperatures."""
    tau = tau.float().flatten()
    quantiles = torch.quantile(tau, torch.tensor([q / 100 for q in TAU_QUANTILES], device=tau.device))
    return {f"{prefix}_mean": float(tau.mean()), f"{prefix}_min": float(tau.min()), f"{prefix}_max": float(tau.max()),
            f"{prefix}_std": float(tau.std()) if tau.numel() > 1 else 0.0,
            **{f"{prefix}_p{q}": float(value) for q, value in zip(TAU_QUANTILES, quantiles.tolist(), strict=True)}}


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5) else f"{value:.4f}"
    return str(value)


def format_values(record: dict[str, Any], keys: list[str]) -> str:
    """``key value`` pairs for the keys present in ``record``, in the order of ``keys``."""
    return " ".join(f"{key} {_format_value(record[key])}" for key in keys if key in record)


class RunLogger:
    """Rank 0's log files for one run; ``line_keys`` picks what the one-line summary shows.

    ``resumed_at``: the step a resumed run continues from. Records after it (steps the
    interrupted invocation took past its last checkpoint, which are now taken again) are dropped
    from metrics.jsonl and TensorBoard, so every step appears once.
    """

    def __init__(self, run_dir: Path, enabled: bool, line_keys: list[str], resumed_at: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.line_keys = line_keys
        self._tensorboard = None
        self._metrics_file = None
        self._progress = None
        self._redirect = None
        self._window: dict[str, float] = {}
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.run_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logging.getLogger("clipdro").addHandler(handler)
            self._file_handler = handler
            metrics_path = self.run_dir / "metrics.jsonl"
            if resumed_at is not None and metrics_path.exists():
                kept = [line for line in metrics_path.read_text(encoding="utf-8").splitlines()
                        if line.strip() and json.loads(line)["step"] <= resumed_at]
                metrics_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
            self._metrics_file = open(metrics_path, "a", encoding="utf-8")  # noqa: SIM115
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"),
                                              purge_step=None if resumed_at is None else resumed_at + 1)

    def start_window(self, step: int) -> None:
        self._window = {"start": time.perf_counter(), "data": 0.0, "compute": 0.0, "samples": 0, "steps": 0}

    def record_step(self, data_seconds: float, compute_seconds: float, samples: int) -> None:
        window = self._window
        window["data"] += data_seconds
        window["compute"] += compute_seconds
        window["samples"] += samples
        window["steps"] += 1
        if self.enabled and self._progress is None and sys.stderr.isatty():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._progress = tqdm(unit="step", dynamic_ncols=True)
            # Console log lines go through tqdm.write so they do not break the bar.
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger()])
            self._redirect.__enter__()
        if self._progress is not None:
            self._progress.update(1)

    def log_step(self, step: int, total_steps: int, values: dict[str, Any], world_size: int) -> None:
        window = self._window
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        steps = max(window["steps"], 1)
        record = {
            "step": step,
            "samples_per_s": window["samples"] / elapsed,
            "samples_per_s_per_device": window["samples"] / elapsed / world_size,
            "data_s_per_step": window["data"] / steps,
            "compute_s_per_step": window["compute"] / steps,
            **{key: value for key, value in values.items() if value is not None},
        }
        self.start_window(step)
        if not self.enabled:
            return
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        for key, value in record.items():
            if isinstance(value, int | float) and key != "step":
                self._tensorboard.add_scalar(f"train/{key}", value, step)
        log.info("step %d/%d | %s", step, total_steps, format_values(record, self.line_keys))

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._metrics_file.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        self._metrics_file.flush()
        for key, value in metrics.items():
            self._tensorboard.add_scalar(f"eval/{key}", value, step)
        log.info("eval step %d | %s", step, format_values(metrics, sorted(metrics)))

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._redirect.__exit__(None, None, None)
            self._progress.close()
        self._metrics_file.close()
        self._tensorboard.close()
        logging.getLogger("clipdro").removeHandler(self._file_handler)
        self._file_handler.close()
