"""Run a module on one CPU: ``python -m bench.pinned CPU MODULE [ARG ...]``.

The payments benchmark puts the payer and the payee each on a core of its own,
as two agents on two machines would be, instead of letting the scheduler move
both processes (and their nng threads) across the same two cores at every
message, where each wake-up starts on caches the other process just used.
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    cpu, module, *args = sys.argv[1:]
    os.sched_setaffinity(0, {int(cpu)})
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
