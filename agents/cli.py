"""The `mesh` command line.

Each subcommand is a small function taking parsed arguments and returning an
exit code. Expected failures (a bad key file, a missing passphrase) are printed
as one clear line on stderr with exit code 1; only bugs give a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from agents.agent_cli import add_agent_commands
from agents.demo import add_demo_command
from agents.ledger_cli import add_ledger_commands
from agents.proof_cli import add_proof_commands
from mesh.errors import MeshError
from mesh.identity import Identity, load_identity, save_identity
from mesh.logbudget import LogBudget

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
    save_identity(identity, args.out, _passphrase(args.passphrase_env), overwrite=args.force)
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
    add_ledger_commands(sub)
    add_agent_commands(sub)
    add_proof_commands(sub)
    if importlib.util.find_spec("bench") is not None:  # bench/ is in the source tree, not the wheel
        from bench.cli import add_bench_command

        add_bench_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mesh` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    budgets = [(handler, LogBudget()) for handler in logging.getLogger().handlers]
    for handler, budget in budgets:
        handler.addFilter(budget)  # a peer must not fill the disk with our warnings
    func: Command = args.func
    try:
        return func(args)
    except MeshError as exc:
        print(f"mesh {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for handler, budget in budgets:
            budget.flush()
            handler.removeFilter(budget)  # main() may run again in this process (tests)


if __name__ == "__main__":
    sys.exit(main())
