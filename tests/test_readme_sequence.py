"""README.md's run-it-yourself sequence, run as written from a fresh directory.

The block after ``<!-- run-it-yourself -->`` is one ```sh block, one command a line
(a ``\\`` at the end of a line continues it), each run with ``bash -c`` in a new
directory that holds a copy of profiles/, with the virtual environment's ``mesh`` first
on PATH and HOME pointing inside that directory. A trailing comment (two spaces, then
``# ``) may say how a line runs:

* ``keeps running`` -- a long-running process (its own terminal in the README): started
  in the background and left running;
* ``repeat until it shows "TEXT"`` / ``repeat until it works`` -- run again, every half
  second for at most `REPEAT_FOR` seconds, until it exits 0 (and prints TEXT);
* every other line must exit 0 the first time.

A comment line with ``Ctrl-C`` stops the background processes, newest first, each with
SIGINT: an agent (``mesh run``) must then settle and exit 0. Every process is started
and stopped by its pid, on loopback only, and the whole sequence has `BUDGET` seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- run-it-yourself -->"
BUDGET = 85.0
"""Seconds for the whole sequence, the stops included."""
REPEAT_FOR = 30.0
"""Seconds a ``repeat until`` line may take."""
STOP_WAIT = 20.0
"""Seconds a process has to exit after Ctrl-C (an agent settles within ~10 s)."""
EXPECTED_STATE = {"mesh buy ": "done", "mesh channels close ": "closed"}
"""A command whose answer is a JSON object with a ``state``: the state it must be in."""


@dataclass(frozen=True)
class Step:
    """One line of the block and how it runs."""

    line: str
    how: str  # "run", "background", "repeat" or "stop"
    shows: str = ""  # what a "repeat" line's output must contain


def readme_steps(readme: str) -> list[Step]:
    """The steps of the run-it-yourself block of `readme`, in order."""
    assert MARKER in readme, f"README.md has no {MARKER} block"
    found = re.match(r"\s*```sh\n(.*?)\n```", readme.split(MARKER, 1)[1], re.DOTALL)
    assert found, f"{MARKER} must be followed by a ```sh block"
    steps: list[Step] = []
    for line in found.group(1).replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            if "Ctrl-C" in line:
                steps.append(Step(line, "stop"))
            continue
        comment = re.search(r"\s{2,}# (.*)$", line)
        note = comment.group(1) if comment else ""
        if "keeps running" in note:
            steps.append(Step(line, "background"))
        elif shows := re.search(r'repeat until it shows "([^"]+)"', note):
            steps.append(Step(line, "repeat", shows.group(1)))
        elif "repeat until it works" in note:
            steps.append(Step(line, "repeat"))
        else:
            steps.append(Step(line, "run"))
    return steps


@dataclass
class Background:
    """A process the README leaves running in a terminal of its own."""

    step: Step
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return f"--- {self.step.line}\n" + self.log.read_text(errors="replace")[-3000:]


class Sequence:
    """Runs the steps in `cwd` with `env`, within `BUDGET` seconds."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env
        self.deadline = time.monotonic() + BUDGET
        self.running: list[Background] = []
        self._logs: list[IO[bytes]] = []

    def left(self, step: Step) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.fail(step, f"the sequence took more than {BUDGET:.0f} s")
        return left

    def fail(self, step: Step, why: str, output: str = "") -> NoReturn:
        logs = "\n".join(b.tail() for b in self.running)
        pytest.fail(f"README step `{step.line}`: {why}\n{output}\n{logs}", pytrace=False)

    def shell(self, step: Step, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["bash", "-c", step.line],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            self.fail(step, f"still running after {timeout:.0f} s", str(exc.stderr or ""))

    def check_running(self, step: Step) -> None:
        for background in self.running:
            if background.process.poll() is not None:
                self.fail(
                    step,
                    f"`{background.step.line}` exited ({background.process.returncode})"
                    " before this step",
                )

    def run(self, step: Step) -> None:
        if step.how == "background":
            self.background(step)
            return
        if step.how == "stop":
            self.stop(step)
            return
        self.check_running(step)
        if step.how == "repeat":
            self.repeat(step)
            return
        done = self.shell(step, self.left(step))
        output = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        if done.returncode != 0:
            self.fail(step, "failed", output)
        for prefix, state in EXPECTED_STATE.items():
            if step.line.startswith(prefix):
                try:
                    answer = json.loads(done.stdout)
                except ValueError:
                    continue  # not a JSON answer: its exit status says it all
                if isinstance(answer, dict) and answer.get("state", state) != state:
                    self.fail(step, f"its state is not {state!r}", output)

    def repeat(self, step: Step) -> None:
        until = min(time.monotonic() + REPEAT_FOR, self.deadline)
        while True:
            done = self.shell(step, max(1.0, self.left(step)))
            if done.returncode == 0 and step.shows in done.stdout:
                return
            if time.monotonic() >= until:
                wanted = f'"{step.shows}" in its output' if step.shows else "exit 0"
                self.fail(
                    step,
                    f"no {wanted} within {REPEAT_FOR:.0f} s",
                    f"last try: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr}",
                )
            time.sleep(0.5)
            self.check_running(step)

    def background(self, step: Step) -> None:
        log = self.cwd / f"background-{len(self.running) + 1}.log"
        out = log.open("wb")
        self._logs.append(out)
        process = subprocess.Popen(
            ["bash", "-c", f"exec {step.line}"],
            cwd=self.cwd,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C at pytest's terminal is not the README's
        )
        self.running.append(Background(step, process, log))

    def stop(self, step: Step) -> None:
        """Ctrl-C each background process, newest first, and wait for it to exit."""
        while self.running:
            background = self.running[-1]
            process = background.process
            agent = background.step.line.startswith("mesh run ")
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=min(STOP_WAIT, self.left(step)))
            except subprocess.TimeoutExpired:
                if agent:
                    self.fail(step, f"`{background.step.line}` did not stop after Ctrl-C")
                # A process started with SIGINT ignored (as a shell's background job
                # would be) is not the README's fault: end it the other way.
                process.terminate()
                process.wait(timeout=10)
            expected = {0} if agent else {0, 130, -signal.SIGINT, -signal.SIGTERM}
            if process.returncode not in expected:
                self.fail(step, f"`{background.step.line}` exited {process.returncode} on Ctrl-C")
            self.running.pop()

    def close(self) -> None:
        """End, by pid, whatever a failed run left behind (SIGTERM, then SIGKILL)."""
        for background in self.running:
            if background.process.poll() is None:
                background.process.terminate()
                try:
                    background.process.wait(timeout=STOP_WAIT)
                except subprocess.TimeoutExpired:
                    background.process.kill()
                    background.process.wait(timeout=10)
        for out in self._logs:
            out.close()


def test_the_readme_sequence_runs_as_written(tmp_path: Path) -> None:
    mesh = Path(sys.executable).parent / "mesh"
    assert mesh.exists(), f"no `mesh` beside {sys.executable}: install the package (-e '.[test]')"
    steps = readme_steps((ROOT / "README.md").read_text())
    hows = [step.how for step in steps]
    assert "background" in hows and "stop" in hows, hows
    assert hows.index("stop") > max(i for i, how in enumerate(hows) if how == "background")

    cwd = tmp_path / "m2mesh"
    shutil.copytree(ROOT / "profiles", cwd / "profiles")
    env = dict(os.environ)
    env.pop("M2MESH_LEDGER", None)
    env.update(
        PATH=f"{mesh.parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp_path / "home"),
        M2MESH_HOME=str(tmp_path / "home" / ".m2mesh"),
    )
    sequence = Sequence(cwd, env)
    started = time.monotonic()
    try:
        for step in steps:
            sequence.run(step)
    finally:
        sequence.close()
    print(f"README sequence: {len(steps)} steps in {time.monotonic() - started:.1f} s")
