"""`python -m open_clip_train.main ARGS` that also knows clipdro's model configs.

    benchmarks/speed/.venv-openclip/bin/python -m benchmarks.speed.open_clip_train_launcher --model clipdro-tiny-vit ...

open_clip's trainer only knows the architectures shipped in its wheel, so this registers the JSON
configs in clipdro/model_configs/ first. The folder is found from this file's location instead of
importing clipdro: the launcher runs in the open_clip venv (webdataset 0.2.86, see
benchmarks/speed/train_throughput.py), where clipdro's own imports are not meant to run. Run it from
the repo root, so that ``benchmarks.speed`` is importable (it imports nothing but this module).
"""

from __future__ import annotations

import sys
from pathlib import Path

import open_clip
from open_clip_train.main import main

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "clipdro" / "model_configs"

if __name__ == "__main__":
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    sys.exit(main(sys.argv[1:]))  # main returns None on success and -1 when the run folder already exists
