"""`--log-format json`: the formatter, the context it reads, and real agents' logs."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from agents.cli import build_parser
from agents.logbudget import LogBudget
from agents.logs import PLAIN, JsonFormatter, configure, console_line, log_context
from mesh.chain.ledger import LocalLedger
from tests.agents.test_up import site_profiles
from tests.discovery.agents import FEED, RunningAgent

ROOT = Path(__file__).resolve().parents[2]
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [\w.]+ (DEBUG|INFO|WARNING|ERROR) ")
CONSOLE = re.compile(
    r"^.+: (running as \S+ at \S+(, dashboard \S+)? \(Ctrl-C to stop\)|SIG\w+, stopping)$"
)
"""`mesh run`'s own lines on stderr, printed, not logged (`agents.agent_cli`)."""
CHANNEL = re.compile(r"^[0-9a-f]{64}$")


class Lines:
    """A logger whose records are formatted by `JsonFormatter` and kept, parsed."""

    def __init__(self) -> None:
        self.out = io.StringIO()
        handler = logging.StreamHandler(self.out)
        handler.setFormatter(JsonFormatter())
        self.log = logging.getLogger("tests.logs")
        self.log.handlers[:] = [handler]
        self.log.propagate = False
        self.log.setLevel(logging.DEBUG)

    def parsed(self) -> list[dict[str, Any]]:
        """Every line written so far, as JSON; each must be one."""
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


@pytest.fixture
def lines() -> Iterator[Lines]:
    kept = Lines()
    yield kept
    kept.log.handlers.clear()
    kept.log.propagate = True


def test_a_line_has_time_level_logger_and_message_and_no_unknown_context(lines: Lines) -> None:
    lines.log.warning("paid %d sat to %s", 5, "robot")
    (line,) = lines.parsed()
    assert TIME.match(line.pop("time"))
    assert line == {"level": "WARNING", "logger": "tests.logs", "message": "paid 5 sat to robot"}


def test_the_context_fields_and_their_reset(lines: Lines) -> None:
    with log_context(peer="02ab", channel="c0ffee", service="vibration"):
        lines.log.info("inside")
        with log_context(service="spindle-time"):  # only what is given changes
            lines.log.info("nested")
    lines.log.info("outside")
    inside, nested, outside = lines.parsed()
    assert (inside["peer"], inside["channel"], inside["service"]) == ("02ab", "c0ffee", "vibration")
    assert (nested["peer"], nested["service"]) == ("02ab", "spindle-time")
    assert not {"peer", "channel", "service"} & outside.keys()


async def test_trio_tasks_inherit_the_context_at_spawn_and_keep_their_own(lines: Lines) -> None:
    async def child(name: str, started: trio.Event) -> None:
        with log_context(channel=name):
            started.set()
            await trio.sleep(0.01)  # the siblings run meanwhile, in their own contexts
            lines.log.info(name)

    async with trio.open_nursery() as outer:  # like the agent's nursery: opened earlier
        with log_context(peer="02ab", service="vibration"):
            async with trio.open_nursery() as inner:
                for name in ("one", "two"):
                    started = trio.Event()
                    inner.start_soon(child, name, started)
                    await started.wait()
                lines.log.info("parent")  # the children's channels are theirs alone
            outer.start_soon(child, "late", trio.Event())  # spawned inside, runs after
        lines.log.info("after")
    by_message = {line["message"]: line for line in lines.parsed()}
    for name in ("one", "two", "late"):
        line = by_message[name]
        assert (line["peer"], line["channel"], line["service"]) == ("02ab", name, "vibration")
    assert "channel" not in by_message["parent"] and by_message["parent"]["peer"] == "02ab"
    assert "peer" not in by_message["after"]


def test_what_the_call_names_wins_over_the_context(lines: Lines) -> None:
    with log_context(peer="from-context", service="vibration"):
        lines.log.info("x", extra={"peer": "from-call", "channel": b"\x01\xff"})
    (line,) = lines.parsed()
    assert (line["peer"], line["channel"], line["service"]) == ("from-call", "01ff", "vibration")


def test_odd_values_never_break_a_line(lines: Lines) -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    lines.log.info("%r and %s", Odd(), {1, 2}, extra={"peer": 7, "service": Odd()})
    (line,) = lines.parsed()
    assert line["message"] == "<odd> and {1, 2}"
    assert (line["peer"], line["service"]) == ("7", "<odd>")


def test_the_exception_text_goes_under_exc(lines: Lines) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        lines.log.exception("handler failed")
    (line,) = lines.parsed()
    assert line["message"] == "handler failed" and line["level"] == "ERROR"
    assert line["exc"].startswith("Traceback") and line["exc"].endswith("ValueError: boom")


def test_a_message_with_newlines_and_non_ascii_stays_one_line(lines: Lines) -> None:
    message = "naïve Grüße → 東京\nsecond line\r\nthird\u2028fourth\x85fifth\x00"
    lines.log.info(message)
    text = lines.out.getvalue()
    assert len(text.splitlines()) == 1 and text.isascii()  # splitlines: also \u2028, \x85
    (line,) = lines.parsed()
    assert line["message"] == message


def test_a_console_line_is_json_only_in_the_json_format() -> None:
    text = "mesh run: error: the disk is full"
    assert console_line(text, "plain", logging.ERROR) == text
    line = json.loads(console_line(text, "json", logging.ERROR))
    assert (line["level"], line["logger"], line["message"]) == ("ERROR", "mesh", text)


@contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's handlers, as in a `mesh` process; restored after.
    (Not a fixture: pytest adds its handlers for the test's call, after the fixtures.)"""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_configure_installs_one_stderr_handler_with_its_budget(fmt: str) -> None:
    with bare_root() as root:
        budgets = configure("info", fmt)
        (handler,) = root.handlers
        level = root.level
    ((budgeted, budget),) = budgets
    assert budgeted is handler and isinstance(budget, LogBudget) and handler.filters == [budget]
    assert level == logging.INFO
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    if fmt == "plain":  # what `mesh` always wrote
        assert type(handler.formatter) is logging.Formatter and handler.formatter._fmt == PLAIN
    else:
        assert isinstance(handler.formatter, JsonFormatter)


def test_configure_leaves_existing_handlers_their_format() -> None:
    theirs = logging.NullHandler()
    with bare_root() as root:
        root.addHandler(theirs)
        budgets = configure("debug", "json")
        assert root.handlers == [theirs] and theirs.formatter is None
    assert [handler for handler, _ in budgets] == [theirs]
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure("info", "xml")


def test_the_option_is_plain_by_default_and_refuses_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["id"]).log_format == "plain"
    assert parser.parse_args(["--log-format", "json", "id"]).log_format == "json"
    with pytest.raises(SystemExit):
        parser.parse_args(["--log-format", "xml", "id"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err


# ---------------------------------------------------------------- real processes


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of an agent's log, parsed; only `mesh run`'s printed lines may be
    anything but a JSON log line."""
    parsed = []
    for text in path.read_text().splitlines():
        if CONSOLE.match(text):
            continue
        line = json.loads(text)
        assert TIME.match(line["time"]), text
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR"), text
        assert line["logger"] and isinstance(line["message"], str), text
        parsed.append(line)
    return parsed


def test_mesh_up_passes_json_logs_on_to_its_agents(tmp_path: Path) -> None:
    """A seller and a buyer run by `mesh up --log-format json`: each agent's log is
    JSON lines, and the lines about the trade name the peer, channel and service."""
    sensor, logger = site_profiles(tmp_path, units=5)
    data = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "agents.cli", "--log-level", "info", "--log-format", "json",
         "up", str(sensor), str(logger), "--seconds", "40", "--data-dir", str(data), "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ids = {agent["name"]: agent["peer_id"] for agent in json.loads(run.stdout)["agents"]}
    seller_lines = json_lines(data / "line-sensor" / "agent.log")
    buyer_lines = json_lines(data / "logger" / "agent.log")
    assert any(line["message"].startswith("Line Sensor 1 up:") for line in seller_lines)
    for lines, other in ((seller_lines, ids["logger"]), (buyer_lines, ids["line-sensor"])):
        about = [line for line in lines if line.get("peer") == other]
        assert about, lines  # e.g. the order (seller), the channel opened (buyer)
        traded = [line for line in about if line.get("service") == "vibration"]
        assert traded and all(CHANNEL.match(line["channel"]) for line in traded), about


def test_the_plain_format_is_the_default_and_unchanged(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    agent = RunningAgent(tmp_path, ledger, "a", "127.0.0.1", "tcp://127.0.0.1:0", FEED)
    try:
        agent.wait(bool, 30, "control socket")
    finally:
        agent.stop()
    text = agent.log_path.read_text()
    logged = [line for line in text.splitlines() if not CONSOLE.match(line)]
    assert logged and all(PLAIN_LINE.match(line) for line in logged), text
    assert any(re.search(r" agents\.runtime INFO a up: ", line) for line in logged), text
