"""Where the benchmark's child processes run from, and how they are started.

Workers are started as ``python -m bench.<worker>`` (and ``tests.channel...``)
from the source checkout, whatever the caller's working directory: the suite
lives beside the tests, not in the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The source checkout: the working directory of every child process."""


def module_cmd(module: str, *args: str) -> list[str]:
    """The command line running `module` with this interpreter."""
    return [sys.executable, "-m", module, *args]
