"""`clipdro <command> ...`: one entry point, each command a module with its own `main(argv)`.

Commands are imported lazily so `clipdro --help` stays fast and a command whose optional
dependencies are missing (for example `llm` without transformers) does not break the others.
"""

from __future__ import annotations

import importlib
import sys

from clipdro.errors import UsageError

# command name -> (module exposing main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("clipdro.train", "train CLIP with TempNets under the DRO loss (torchrun / srun ready)"),
    "info": ("clipdro.info", "versions, devices and FAISS GPUs of this environment"),
    "data": ("clipdro.data.cli", "build shards, manifests and evaluation sets"),
    "eval": ("clipdro.eval.cli", "retrieval / zero-shot benchmarks and result tables"),
    "export": ("clipdro.export", "a training run -> an open_clip-loadable checkpoint"),
    "report": ("clipdro.report", "markdown + plots of a run's learned temperatures"),
    "llm": ("clipdro.llm.cli", "LLM TempNet: train, generate, evaluate perplexity"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: clipdro <command> [args ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"clipdro: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UsageError as error:
        print(f"clipdro {name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
