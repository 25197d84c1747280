"""Where the benchmark's child processes run from, and how they are started.

Workers are started as ``python -m bench.<worker>`` (and ``tests.channel...``)
from the source checkout, whatever the caller's working directory: the suite
lives beside the tests, not in the installed package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The source checkout: the working directory of every child process."""


def module_cmd(module: str, *args: str) -> list[str]:
    """The command line running `module` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def two_cpus() -> tuple[int, int] | None:
    """Two CPUs this process may use, for a pair of pinned workers (None if fewer)."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def pinned_cmd(cpu: int | None, module: str, *args: str) -> list[str]:
    """`module_cmd`, run on CPU `cpu` only (anywhere when None)."""
    if cpu is None:
        return module_cmd(module, *args)
    return module_cmd("bench.pinned", str(cpu), module, *args)
