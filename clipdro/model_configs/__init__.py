"""Small open_clip architectures shipped with clipdro (random init, for CPU demos and tests).

``clipdro-tiny-vit``: 32 px ViT (patch 8, 2 layers, width 128) and a 2-layer text tower, 64-d
embeddings, about 3.7 M parameters; most of them sit in the 49,408-token embedding.
``clipdro-small-vit``: 64 px ViT (4 layers, width 256), 4-layer text tower, 256-d embeddings.
``clipdro-RN50-DistilBERT``: the paper's CC3M model (method.md §5): timm ResNet-50 with
ImageNet weights and pretrained DistilBERT, 256-d embeddings, 256 px. Its weights download
from the Hugging Face hub, so it needs network (GPU training only in practice).
``clipdro-efflite0-minilm``: ImageNet EfficientNet-Lite0 + all-MiniLM-L6-v2, 64 px, 32 tokens,
256-d embeddings, with weights from two pip packages (the ``pretrained`` extra), named in its
``clipdro_towers`` section (clipdro/towers.py): offline.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent
_registered = False


def register_model_configs() -> None:
    """Make the shipped JSON configs known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def shipped_model_names() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))
