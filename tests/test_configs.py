"""Every shipped CLIP training config parses against TrainConfig and names a loss and model we know."""

from pathlib import Path

import pytest

from clipdro.config import load_config
from clipdro.models import resolve_model_name
from clipdro.train_config import TrainConfig

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(path for folder in (ROOT / "configs", ROOT / "benchmarks" / "paper" / "configs")
                 for path in folder.glob("*.yaml") if not path.name.startswith("llm_"))


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_config_parses(path):
    config = load_config(TrainConfig, path)
    resolve_model_name(config.model.name)
    if config.loss.name in ("tempnet", "isogclr") and path.stem.startswith("cc3m"):
        assert config.loss.rho == 7.0 and config.data.batch_size == 256
