"""The one exception type that means "the user's input is wrong".

Every `clipdro` command catches :class:`UsageError`, prints one line naming the problem
and exits with status 2 (no traceback). Library code raises it for bad configuration,
missing paths and violated start-up checks (for example rho >= log(B - 1)).
"""

import argparse
from typing import NoReturn


class UsageError(ValueError):
    """Invalid user input: a bad config key or value, a missing path, a violated start-up check."""


class UsageArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise :class:`UsageError`: the `clipdro` dispatcher then prints one
    line and exits with status 2, like every other input error. Every command's parser is one."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)
