"""`mesh up PROFILE…` on the command line: its options, their checks and its entry point.

`mesh up` and `mesh demo` share `add_site_options`; `cmd_up` loads and checks the
profiles (`agents.site.load_agents`) and runs them as one site (`agents.site.run_site`,
which says what a run does). (docs/ARCHITECTURE.md §6.2)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agents.site import BLOCK_SECONDS, FLOAT, FUNDS, SECONDS, RunOptions, load_agents, run_site
from mesh.session import site_problem

UP_DESCRIPTION = f"""\
Run the agents of the given profiles as one site on this machine, the way `mesh
demo` runs the shipped ones: a fresh LocalLedger, a new identity key and a copy
of its profile for each agent under one site (a fresh random `up-<8 hex>` unless
--site; your profiles are never changed), and each agent its own `mesh run`
process. Every agent that buys gets --funds sat from the ledger's faucet (one
coin per want and one more, for anchoring fees); every other agent {FLOAT} sat for
its anchoring fees. A block is mined every {BLOCK_SECONDS:g} s and a live view shows peers,
channels and satoshis. The run ends once every want is done, after --seconds,
when an agent exits, or on Ctrl-C; then the buyers stop, every channel closes,
and every want, channel and meter is reconciled with the ledger, with what each
agent earned and spent.

An agent's name on the site is its profile's file name (robot.toml: robot).
Every profile is checked before anything starts: a bad one, or two profiles with
the same file name or the same [agent] name, is one line on stderr, exit 1.

exit status: 0 when every want is done and balances, meters and the ledger
reconcile; 1 otherwise (an unmet want is named on an `UNMET:` line)."""


def add_site_options(parser: argparse.ArgumentParser) -> None:
    """The options `mesh up` and `mesh demo` share."""
    parser.add_argument(
        "--seconds",
        type=float,
        default=SECONDS,
        help=f"run at most this long (default {SECONDS:g}); it ends earlier once every "
        "want is done",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the data dir afterwards (printed at the start)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary (site, data dir, agents, wants, channels, meters) on "
        "stdout; progress goes to stderr",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="put the ledger and the agents' data in this new (or empty) directory, kept "
        "afterwards (default: a temporary one, removed at the end unless --keep)",
    )


def _site_arg(text: str) -> str:
    problem = site_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def _sats(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of sat") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
    return value


def cmd_up(args: argparse.Namespace) -> int:
    """Entry point of `mesh up`."""
    agents = load_agents(args.profiles)
    options = RunOptions(
        seconds=args.seconds,
        keep=args.keep,
        as_json=args.json,
        data_dir=args.data_dir,
        log_level=args.log_level,
        log_format=args.log_format,
        site=args.site,
        funds=args.funds,
    )
    return run_site(agents, options)


def add_up_command(sub: Any) -> None:
    """Register `mesh up`."""
    up = sub.add_parser(
        "up",
        help="run your profiles as one site on this machine",
        description=UP_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument(
        "profiles", nargs="+", type=Path, metavar="PROFILE", help="an agent's profile (TOML)"
    )
    add_site_options(up)
    up.add_argument(
        "--site", type=_site_arg, help="the site's name (default: a fresh random up-<8 hex>)"
    )
    up.add_argument(
        "--funds",
        type=_sats,
        default=FUNDS,
        metavar="SAT",
        help=f"what each agent that buys is given (default {FUNDS})",
    )
    up.set_defaults(func=cmd_up)
