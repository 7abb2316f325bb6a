"""The install routes: faiss comes from exactly one extra, so no route ends with two faiss builds."""

import re
import tomllib
from pathlib import Path

from clipdro.eval.faiss_backend import FAISS_DISTRIBUTIONS

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def distribution(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def faiss_requirements(requirements: list[str]) -> list[str]:
    return [distribution(r) for r in requirements if distribution(r) in FAISS_DISTRIBUTIONS]


def test_faiss_is_in_no_core_dependency_and_in_exactly_one_build_per_extra():
    assert faiss_requirements(PYPROJECT["project"]["dependencies"]) == []
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert faiss_requirements(extras["cpu"]) == ["faiss-cpu"]
    assert faiss_requirements(extras["gpu"]) == ["faiss-gpu"]
    # No other extra brings a faiss build, so `.[gpu,llm,pretrained]` still has exactly one.
    others = {name: faiss_requirements(requirements) for name, requirements in extras.items()
              if name not in ("cpu", "gpu")}
    assert all(found == [] for found in others.values()), others
