"""`clipdro info`: the environment facts a bug report or benchmark needs."""

from __future__ import annotations

import json
import platform
from importlib import metadata

from clipdro.errors import UsageArgumentParser

PACKAGES = ("clipdro", "torch", "torchvision", "open_clip_torch", "webdataset", "faiss-cpu", "faiss-gpu",
            "timm", "transformers")


def environment_info() -> dict:
    """Package versions, Python, CPU threads and accelerators; used in checkpoints and result files."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        import faiss

        info["faiss_gpus"] = faiss.get_num_gpus()
    except ImportError:
        info["faiss_gpus"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(prog="clipdro info", description=__doc__)
    parser.parse_args(argv)
    print(json.dumps(environment_info(), indent=2))
    return 0
