"""Start test nodes as real processes and read their JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


class Proc:
    """A child process that speaks one JSON object per stdout line."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(HERE / "peer_proc.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self) -> dict[str, Any]:
        assert self.popen.stdout is not None
        text = self.popen.stdout.readline()
        if not text:
            raise AssertionError(f"process ended: {self.stderr()}")
        result: dict[str, Any] = json.loads(text)
        return result

    def stderr(self) -> str:
        self.popen.kill()
        _, err = self.popen.communicate(timeout=10)
        return err

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.communicate(timeout=10)


def hostile(mailbox: str, rounds: int) -> subprocess.Popen[str]:
    """Start the hostile neighbour against `mailbox`."""
    return subprocess.Popen(
        [sys.executable, str(HERE / "hostile_proc.py"), mailbox, "--rounds", str(rounds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
