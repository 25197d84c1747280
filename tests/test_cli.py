"""The `mesh` CLI as a user runs it: a real process, clear errors, no tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from agents.cli import build_parser
from mesh.identity import load_identity


def mesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1, result
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_commands() -> None:
    result = mesh("--help")
    assert result.returncode == 0
    for command in ("keygen", "id", "demo"):
        assert command in result.stdout


def _commands(
    parser: argparse.ArgumentParser, path: str = "mesh"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def test_every_command_and_argument_explains_itself() -> None:
    """`--help` of every (sub)command says what it does, and every argument what it is."""
    commands = dict(_commands(build_parser()))
    assert {"mesh demo", "mesh run", "mesh buy", "mesh ledger fund", "mesh verify"} <= set(commands)
    missing = [f"{path}: description" for path, p in commands.items() if not p.description]
    for path, parser in commands.items():
        for action in parser._actions:
            # A command list's entries carry the help; the list itself needs none.
            entries = getattr(action, "_choices_actions", [action])
            missing += [f"{path}: {a.dest}" for a in entries if not a.help and a.dest != "help"]
    assert not missing, "\n".join(missing)


def test_demo_help_says_what_it_does() -> None:
    result = mesh("demo", "--help")
    assert result.returncode == 0
    for words in ("four agents", "mDNS", "reconcile", "exit status"):
        assert words in result.stdout, words


def test_keygen_prints_peer_id_and_id_reads_it(tmp_path: Path) -> None:
    key = tmp_path / "k" / "id.key"
    result = mesh("keygen", "--out", str(key))
    assert result.returncode == 0, result.stderr
    peer_id = result.stdout.strip()
    assert load_identity(key).peer_id == peer_id
    assert mesh("id", "--key", str(key)).stdout.strip() == peer_id


def test_keygen_with_passphrase(tmp_path: Path) -> None:
    key = tmp_path / "id.key"
    env = {"MESH_PW": "s3cret"}
    result = mesh("keygen", "--out", str(key), "--passphrase-env", "MESH_PW", env=env)
    assert result.returncode == 0, result.stderr
    peer_id = result.stdout.strip()
    assert mesh("id", "--key", str(key), "--passphrase-env", "MESH_PW", env=env).stdout.strip() == (
        peer_id
    )
    wrong = mesh("id", "--key", str(key), "--passphrase-env", "MESH_PW", env={"MESH_PW": "nope"})
    assert_clean_error(wrong, "wrong passphrase")
    assert_clean_error(mesh("id", "--key", str(key)), "passphrase is needed")


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    key = tmp_path / "id.key"
    assert mesh("keygen", "--out", str(key)).returncode == 0
    assert_clean_error(mesh("keygen", "--out", str(key)), "already exists")
    key.chmod(0o644)
    assert_clean_error(mesh("id", "--key", str(key)), "chmod 600")
    key.chmod(0o600)
    document = json.loads(key.read_text())
    key.write_text(json.dumps({**document, "secret": "00"}))
    assert_clean_error(mesh("id", "--key", str(key)), "corrupted")
    assert_clean_error(mesh("id", "--key", str(tmp_path / "missing.key")), "no such key file")
    unset = mesh("keygen", "--out", str(tmp_path / "x.key"), "--passphrase-env", "NOT_SET_X")
    assert_clean_error(unset, "NOT_SET_X is not set")
