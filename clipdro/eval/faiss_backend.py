"""The one place clipdro imports faiss.

faiss comes from one of two pip distributions, chosen by an extra: ``clipdro[cpu]`` installs
faiss-cpu, ``clipdro[gpu]`` faiss-gpu. Both provide the same module ``faiss``, so with both
installed the second one's files overwrite the first's and which build you get depends on the
install order. :func:`load_faiss` refuses that environment, and one with no faiss at all, with a
:class:`~clipdro.errors.UsageError` that names the fix (``clipdro`` commands print it as one
line and exit with status 2). Only the FAISS search needs faiss: the brute-force path
(``--exact-ranks``), zero-shot evaluation and training do not import it.
"""

from __future__ import annotations

from importlib import metadata
from types import ModuleType

from clipdro.errors import UsageError

# pip distributions that provide the module ``faiss`` (the official CUDA-suffixed builds included).
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11")
INSTALL_FIX = "pip install 'clipdro[cpu]' (or 'clipdro[gpu]' on a CUDA machine)"
BOTH_FIX = "pip uninstall -y faiss-cpu faiss-gpu && pip install 'clipdro[gpu]'"


def installed_faiss_distributions() -> list[str]:
    """The faiss distributions pip has installed in this environment, in FAISS_DISTRIBUTIONS order."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def load_faiss() -> ModuleType:
    """The ``faiss`` module, or a UsageError naming the fix when none or several builds are installed."""
    found = installed_faiss_distributions()
    if len(found) > 1:
        raise UsageError(f"{' and '.join(found)} are both installed; they provide the same module `faiss` and "
                         f"overwrite each other's files: {BOTH_FIX} (or 'clipdro[cpu]' without a GPU)")
    try:
        import faiss
    except ImportError as error:
        raise UsageError(f"FAISS retrieval needs faiss, which is not installed ({error}): {INSTALL_FIX}") from None
    return faiss


def faiss_environment() -> dict:
    """``{"faiss": version, "faiss_gpus": count}`` for result files; None values when faiss cannot be loaded
    (a zero-shot or exact-rank evaluation does not need it)."""
    try:
        faiss = load_faiss()
    except UsageError:
        return {"faiss": None, "faiss_gpus": None}
    return {"faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus()}
