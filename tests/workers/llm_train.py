"""`clipdro llm train ARGS...` as a torchrun worker: every rank runs the CLI entry point."""

import sys

from clipdro.cli import main

if __name__ == "__main__":
    sys.exit(main(["llm", "train", *sys.argv[1:]]))
