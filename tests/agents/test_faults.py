"""The operator's faults through the real `mesh`: one line on stderr, never a traceback.

Every fault is made with real files in a temporary directory -- key files with the
wrong mode or cut short, ledgers cut short or full of noise, a ledger another process
holds locked, profiles an operator could write -- and walked through `mesh` in its
own process, all of them at once (the agents' startup is most of the time).

Tests run as root, for whom no directory is read-only: the read-only data dir is
made as a file standing where the directory should be, which fails for root too.
What is not an operator's fault -- a bug -- keeps its traceback, also when it comes
out of a nursery next to an expected error.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents import agent_cli
from agents.cli import main
from agents.control import ControlError, request
from agents.profile import load_profile
from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity, save_identity

ROOT = Path(__file__).resolve().parents[2]
MESH = [sys.executable, "-m", "agents.cli"]


@dataclass(frozen=True)
class Fault:
    """One fault: the `mesh` arguments that meet it and what its line must name."""

    name: str
    argv: tuple[str, ...]
    names: str
    quiet: bool = True
    """Run with ``--log-level error`` (only the error line on stderr)."""


def profile(path: Path, *, name: str = "probe", agent: str = "", rest: str = "") -> Path:
    path.write_text(
        f'[agent]\nname = "{name}"\nmailbox = "tcp://127.0.0.1:0"\n{agent}'
        f'[discovery]\ninterfaces = ["127.0.0.1"]\n{rest}'
    )
    return path


def agent_dir(path: Path, key: Path) -> Path:
    path.mkdir()
    (path / "identity.key").write_bytes(key.read_bytes())
    (path / "identity.key").chmod(0o600)
    return path


def run_mesh(fault: Fault) -> subprocess.CompletedProcess[str]:
    level = ["--log-level", "error"] if fault.quiet else []
    argv = [*MESH, *level, *fault.argv]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=40, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:  # e.g. an agent that took the fault and runs
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(argv, 0, "", stderr + "\n(still running after 40 s)")


@contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Another process's view of `db`: its write lock taken and held."""
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def buy_from_an_agent_that_dies(data: Path, ledger: Path) -> subprocess.CompletedProcess[str]:
    """`mesh buy` waiting on a real agent that is killed (SIGKILL) before it answers."""
    prof = profile(data.with_suffix(".toml"))
    argv = ["run", str(prof), "--data-dir", str(data), "--ledger", str(ledger)]
    agent = subprocess.Popen(
        [*MESH, "--log-level", "error", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    buy: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: _asked(data, want=None), agent)
        argv = [
            "buy",
            "nobody-sells-this",
            "--units",
            "1",
            "--kind",
            "call",
            "--data-dir",
            str(data),
        ]
        buy = subprocess.Popen(
            [*MESH, "--log-level", "error", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        wait_until(lambda: _asked(data, want="nobody-sells-this"), agent)
        agent.kill()
        stdout, stderr = buy.communicate(timeout=30)
        return subprocess.CompletedProcess(buy.args, buy.returncode, stdout, stderr)
    finally:
        for proc in (agent, buy):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _asked(data: Path, want: str | None) -> bool:
    """Whether the agent answers status (and, with `want`, is buying it)."""
    try:
        status = request(data / "control.sock", {"cmd": "status"}, timeout=5)
    except (ControlError, OSError):
        return False
    return want is None or any(w["service"] == want for w in status["wants"])


def wait_until(condition: Callable[[], bool], agent: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert agent.poll() is None, "the agent stopped early"
        assert time.monotonic() < deadline, "the agent did not get there in 30 s"
        time.sleep(0.1)


def problems(fault: Fault, result: subprocess.CompletedProcess[str]) -> list[str]:
    """What is wrong with how `mesh` reported `fault` (empty: one clear line)."""
    found: list[str] = []
    command = fault.argv[0]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"mesh {command}: error: ")]
    if result.returncode == 0:
        found.append("exit code 0 (or still running)")
    if "Traceback" in result.stdout + result.stderr:
        found.append("a traceback")
    if not fault.quiet:  # the wait is said once, then the error line
        waits = [line for line in lines if "waiting up to" in line and "another process" in line]
        if len(waits) != 1:
            found.append(f"{len(waits)} lines saying it waits")
        lines = [line for line in lines if line not in waits]
    if len(lines) != 1 or len(errors) != 1:
        found.append(f"{len(lines)} lines on stderr, not one `mesh {command}: error:` line")
    elif fault.names not in errors[0]:
        found.append(f"the line does not name {fault.names!r}")
    if not found:
        return []
    return [f"{fault.name}: {', '.join(found)}\n    stderr: {result.stderr[-1500:]!r}"]


TYPO = """
[[services]]
id = "x"
kind = "call"
unit = "call"
prcie = 5
handler = "builtin:inspection"
"""


def test_every_operator_fault_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    good_key = tmp_path / "good.key"
    save_identity(Identity.generate(), good_key)
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    base = profile(tmp_path / "base.toml")
    faults: list[Fault] = []

    def fault(name: str, names: str, *argv: str, quiet: bool = True) -> None:
        faults.append(Fault(name, argv, names, quiet))

    def run(data: Path, prof: Path = base, db: Path = ledger) -> tuple[str, ...]:
        return ("run", str(prof), "--data-dir", str(data), "--ledger", str(db))

    def agent(tag: str, db: Path = ledger) -> tuple[str, ...]:
        return run(agent_dir(tmp_path / tag, good_key), db=db)

    def edited(tag: str, old: str, new: str, **kwargs: str) -> tuple[str, ...]:
        path = profile(tmp_path / f"{tag}.toml", **kwargs)
        path.write_text(path.read_text().replace(old, new))
        return run(agent_dir(tmp_path / tag, good_key), path)

    # Key files: open to others, cut short, empty, a directory.
    d = agent_dir(tmp_path / "key-0644", good_key)
    (d / "identity.key").chmod(0o644)
    fault("key file mode 0644", f"chmod 600 {d / 'identity.key'}", *run(d))
    d = agent_dir(tmp_path / "key-truncated", good_key)
    (d / "identity.key").write_bytes(good_key.read_bytes()[:60])
    fault("truncated key file", "identity.key is corrupted", *run(d))
    d = agent_dir(tmp_path / "key-empty", good_key)
    (d / "identity.key").write_bytes(b"")
    fault("empty key file", "identity.key is corrupted", *run(d))
    d = tmp_path / "key-dir"
    (d / "identity.key").mkdir(parents=True, mode=0o700)
    fault("key file is a directory", f"{d / 'identity.key'}: Is a directory", *run(d))

    # Ledgers: cut in half, noise, locked by another process (held below).
    with LocalLedger.create(tmp_path / "full.db") as full:
        for _ in range(20):
            full.mine()
    raw = (tmp_path / "full.db").read_bytes()
    half = tmp_path / "half.db"
    half.write_bytes(raw[: len(raw) // 2])
    fault("truncated ledger", f"{half}: cannot open", *agent("ledger-half", half))
    noise = tmp_path / "noise.db"
    noise.write_bytes(bytes(range(256)) * 64)
    fault("garbage ledger", f"{noise}: cannot open", *agent("ledger-noise", noise))
    locked = tmp_path / "locked.db"
    LocalLedger.create(locked).close()
    busy = f"{locked}: the ledger is locked by another process"
    fault("locked ledger (run)", busy, *agent("ledger-locked", locked))
    fault("locked ledger (ledger show)", busy, "ledger", "show", "--db", str(locked))
    fault("locked, said once", busy, "ledger", "show", "--db", str(locked), quiet=False)

    # The data dir where no one can write, root included: a file stands in its place.
    not_a_dir = tmp_path / "data-is-a-file"
    not_a_dir.write_text("")
    fault("read-only data dir", f"{not_a_dir} is not a directory", *run(not_a_dir))

    # Profiles.
    mailbox = "tcp://127.0.0.1:0"
    fault("bad mailbox", "agent.mailbox", *edited("mb", mailbox, "tcp://999.1.1.1:99999"))
    not_ours = "cannot listen on tcp://8.8.8.8:5555"
    fault("mailbox not ours", not_ours, *edited("mb-8", mailbox, "tcp://8.8.8.8:5555"))
    lo = '["127.0.0.1"]'
    not_here = "8.8.8.8 is not an address of this host"
    fault("interface not ours", not_here, *edited("if-8", lo, '["8.8.8.8"]'))
    no_if = "'no-such-if0' is neither an IPv4 address nor an interface"
    fault("unknown interface name", no_if, *edited("if-x", lo, '["no-such-if0"]'))
    huge = edited("name-huge", "", "", name="m" * 10_000_000)
    fault("10 MB agent name", "agent.name: is 10000000 bytes long", *huge)
    nul = edited("name-nul", "", "", name="mill\\u0000 3")
    fault("NUL in agent name", "agent.name: contains a control character (U+0000", *nul)
    rtl = edited("name-rtl", "", "", name="mill \\u202e3")
    fault("RTL override in agent name", "agent.name: contains a bidi control (U+202E", *rtl)
    typo = "services[0].prcie: unknown key (did you mean 'price'?)"
    fault("typo in a required key", typo, *edited("typo", "", "", rest=TYPO))

    # keygen: a file stands where the directory of --out is to be made.
    out = str(not_a_dir / "keys" / "identity.key")
    fault("keygen into a file's place", f"{not_a_dir} is not a directory", "keygen", "--out", out)

    buy = Fault("buy when its agent dies", ("buy",), "closed the connection without answering")
    with write_locked(locked), ThreadPoolExecutor(max_workers=8) as pool:
        buyer = agent_dir(tmp_path / "buyer", good_key)
        dies = pool.submit(buy_from_an_agent_that_dies, buyer, ledger)
        results = list(pool.map(run_mesh, faults))
        outcomes = [*zip(faults, results, strict=True), (buy, dies.result())]
    wrong = [line for f, result in outcomes for line in problems(f, result)]
    assert not wrong, "\n".join(wrong)

    # An interface may be named: "lo" is this host's loopback address.
    named = profile(tmp_path / "lo.toml")
    named.write_text(named.read_text().replace(lo, '["lo"]'))
    assert load_profile(named).interfaces == ("127.0.0.1",)


def test_a_bug_inside_a_nursery_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expected error wrapped in nested exception groups is one line; a group that
    holds anything else (a bug) is raised as it is."""

    def locked(args: object) -> int:
        inner = ExceptionGroup("agent", [sqlite3.OperationalError("database is locked")])
        raise ExceptionGroup("nursery", [inner])

    def bug(args: object) -> int:
        raise ExceptionGroup("nursery", [OSError("disk"), ValueError("a bug")])

    argv = ["status", "--data-dir", "nowhere"]
    monkeypatch.setattr(agent_cli, "cmd_status", locked)
    assert main(argv) == 1
    said = "mesh status: error: a database is locked by another process (database is locked)"
    assert capsys.readouterr().err == said + "\n"
    monkeypatch.setattr(agent_cli, "cmd_status", bug)
    with pytest.raises(ExceptionGroup) as raised:
        main(argv)
    assert raised.group_contains(ValueError, match="a bug")
