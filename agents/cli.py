"""The `mesh` command line.

Each subcommand is a small function taking parsed arguments and returning an
exit code. Expected failures (a bad key file, a missing passphrase, a corrupted or
locked database, a file system that refuses a write, an address that cannot be
bound) are printed as one clear line on stderr with exit code 1, also when they come
out of an agent's nursery wrapped in an exception group; only bugs give a traceback.
(docs/ARCHITECTURE.md §1)
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pynng

from agents.agent_cli import add_agent_commands
from agents.cert_cli import add_cert_commands
from agents.demo import add_demo_command
from agents.ledger_cli import add_ledger_commands
from agents.logs import FORMATS, configure, console_line
from agents.ot_cli import add_ot_commands
from agents.passport_cli import add_passport_command
from agents.proof_cli import add_proof_commands
from agents.site_cli import add_up_command
from mesh.errors import MeshError
from mesh.identity import Identity, load_identity, save_identity

DEFAULT_KEY = Path(os.environ.get("M2MESH_HOME", Path.home() / ".m2mesh")) / "identity.key"

Command = Callable[[argparse.Namespace], int]


class CliError(MeshError):
    """A usage problem the user can fix; printed without a traceback."""


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise CliError(f"--passphrase-env {var}: environment variable {var} is not set")
    if not value:
        raise CliError(f"--passphrase-env {var}: the passphrase is empty")
    return value.encode()


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create a new identity key file and print its peer id."""
    identity = Identity.generate()
    passphrase = _passphrase(args.passphrase_env)
    blocker = next((p for p in args.out.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CliError(f"cannot write {args.out}: {blocker} is not a directory")
    try:
        save_identity(identity, args.out, passphrase, overwrite=args.force)
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {describe_os_error(exc)}") from None
    print(identity.peer_id)
    print(f"wrote {args.out} (mode 0600)", file=sys.stderr)
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    """Load an identity key file and print its peer id."""
    print(load_identity(args.key, _passphrase(args.passphrase_env)).peer_id)
    return 0


DESCRIPTION = """\
m2mesh: machine-to-machine micropayments and messaging over BSV.

Every machine runs one agent (`mesh run PROFILE`). Agents find each other on the LAN
by mDNS, authenticate with their identity keys, talk over encrypted sessions and pay
each other for services (tool time, sensor feeds, calls) through payment channels."""

EPILOG = """\
start here:
  mesh demo                      four agents on this machine, end to end (~30 s)

run agents yourself (see README.md):
  mesh ledger init --db ledger.db
  mesh keygen --out robot/identity.key
  mesh ledger fund --db ledger.db "$(mesh address --data-dir robot)" 1000000 --mine
  mesh run profiles/robot-cell.toml --data-dir robot --ledger ledger.db
  mesh status --data-dir robot

`mesh COMMAND --help` explains each command. Errors are one line on stderr, exit 1."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every `mesh` subcommand."""
    parser = argparse.ArgumentParser(
        prog="mesh",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="how much to log on stderr (default warning)",
    )
    parser.add_argument(
        "--log-format",
        default="plain",
        choices=FORMATS,
        help="how log lines look (default plain); json: one JSON object per line with time, "
        "level, logger, message and the peer, channel and service it concerns",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keygen = sub.add_parser(
        "keygen",
        help="create an identity key and print its peer id",
        description="Create a new secp256k1 identity key and print its peer id (the "
        "compressed public key in hex: an agent is its key). The file is JSON, written "
        "atomically with mode 0600; with --passphrase-env it is sealed (argon2id + "
        "SecretBox). An existing key file is never overwritten without --force.",
    )
    keygen.add_argument(
        "--out", type=Path, default=DEFAULT_KEY, help=f"key file to write (default {DEFAULT_KEY})"
    )
    keygen.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="encrypt the key with the passphrase in environment variable VAR",
    )
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(func=cmd_keygen)

    ident = sub.add_parser(
        "id",
        help="print the peer id of an identity key file",
        description="Print the peer id of an identity key file. A file that others can "
        "read, a wrong passphrase or a corrupted file is refused with one line, exit 1.",
    )
    ident.add_argument(
        "--key", type=Path, default=DEFAULT_KEY, help=f"key file to read (default {DEFAULT_KEY})"
    )
    ident.add_argument(
        "--passphrase-env", metavar="VAR", help="a sealed key's passphrase is in variable VAR"
    )
    ident.set_defaults(func=cmd_id)

    add_demo_command(sub)
    add_up_command(sub)
    add_ledger_commands(sub)
    add_agent_commands(sub)
    add_proof_commands(sub)
    add_passport_command(sub)
    add_ot_commands(sub)
    add_cert_commands(sub)
    return parser


# SQLite's words for the faults an operator can fix, and what to say instead.
_SQLITE_FAULTS = (
    ("locked", "a database is locked by another process"),
    ("readonly", "a database is read-only (check the permissions of the data dir and its files)"),
    ("unable to open", "cannot open a database file (is its directory there and writable?)"),
    ("malformed", "a database file is corrupted"),
    ("not a database", "a database file is corrupted (not an SQLite database)"),
    ("full", "the disk is full"),
    ("disk i/o", "the disk failed a read or write"),
)


def describe_os_error(exc: OSError) -> str:
    """`exc` as `PATH: reason` (the way Unix tools say it), without the errno."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    return f"{exc.filename}: {reason}"


def _expected(exc: BaseException) -> bool:
    # sqlite3 errors only where the database or the disk is at fault: a ProgrammingError
    # or IntegrityError is our bug. pynng errors: an address that cannot be bound.
    if isinstance(exc, sqlite3.DatabaseError):
        return type(exc) in (sqlite3.DatabaseError, sqlite3.OperationalError)
    return isinstance(exc, (MeshError, OSError, pynng.NNGException))


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def expected_error(exc: BaseException) -> BaseException | None:
    """The expected error `exc` stands for: itself, or the first error inside an
    exception group raised out of a nursery; None when anything in it is unexpected
    (a bug), which must keep its traceback."""
    leaves = _leaves(exc)
    if not all(_expected(leaf) for leaf in leaves):
        return None
    return leaves[0]


def one_line(exc: BaseException) -> str:
    """What the user reads about an expected error: one line, no traceback."""
    if isinstance(exc, MeshError):
        text = str(exc)
    elif isinstance(exc, OSError):
        text = describe_os_error(exc)
    elif isinstance(exc, sqlite3.Error):
        detail = str(exc)
        text = next(
            (f"{said} ({detail})" for word, said in _SQLITE_FAULTS if word in detail.lower()),
            f"SQLite: {detail}",
        )
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.splitlines()) or type(exc).__name__


def _error(args: argparse.Namespace, exc: BaseException) -> None:
    text = f"mesh {args.command}: error: {one_line(exc)}"
    print(console_line(text, args.log_format, logging.ERROR), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mesh` console script."""
    args = build_parser().parse_args(argv)
    budgets = configure(args.log_level, args.log_format)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is not None:
            return 130
        expected = expected_error(group)
        if expected is None:
            raise
        _error(args, expected)
        return 1
    except Exception as exc:
        if expected_error(exc) is None:
            raise
        _error(args, exc)
        return 1
    finally:
        for handler, budget in budgets:
            budget.flush()
            handler.removeFilter(budget)  # main() may run again in this process (tests)


if __name__ == "__main__":
    sys.exit(main())
