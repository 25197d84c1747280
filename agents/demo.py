"""`mesh demo`: a small factory on one machine, end to end, on the embedded defaults.

The demo is `mesh up` (agents/site.py) over the four shipped profiles -- CNC mill,
vibration sensor, quality lab and robot cell -- under one fresh random site
(`demo-<8 hex>`, so demos side by side on one host or LAN never see each other): the
robot cell leases spindle time, subscribes to the vibration feed and orders
inspections, paying through channels, and the run is reconciled with the ledger to
the satoshi. The readings the robot cell bought are provable from its own data dir
too (`mesh proof --agent SENSOR …`), through the sensor's receipts. The robot cell
also has four brackets milled, each paid from an escrow the quality lab's PASS
releases (one fails, and its escrow comes back), and exports one part's passport
(`agents.demo_workorders`). The quality lab
buys a few readings too, but only from a sensor that proves its calibration: a
calibration lab certifies the sensor (`agents.demo_certs`), and the sensor reveals
its calibration date to the quality lab and nothing else.

This module owns only the demo's defaults: which profiles, where they are found
(beside the source tree, or where a non-editable `pip install` put them), and which
may be left out. It must never change the shipped profiles.
(docs/ARCHITECTURE.md §1, §6.2)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from agents import site
from agents.demo_certs import DemoCertificates
from agents.demo_plant import demo_plant
from agents.demo_workorders import DemoWorkOrders
from agents.site import RunOptions, load_agents, run_site, with_site
from agents.site_cli import add_site_options
from agents.site_view import Roster, Statuses

__all__ = ["AGENTS", "PROFILES", "add_demo_command", "cmd_demo", "new_site", "with_site"]


def _profiles_dir() -> Path:
    """The shipped profiles: beside the source tree, or where `pip install` put them
    (pyproject's data-files: `<prefix>/share/m2mesh/profiles`)."""
    beside = Path(__file__).resolve().parent.parent / "profiles"
    installed = Path(sys.prefix) / "share" / "m2mesh" / "profiles"
    return beside if (beside / "robot-cell.toml").exists() else installed


PROFILES = _profiles_dir()
AGENTS = ("cnc-mill", "vibration-sensor", "quality-lab", "robot-cell")
BUYER = "robot-cell"
PROVIDERS = tuple(name for name in AGENTS if name != BUYER)


def new_site() -> str:
    """A fresh random site id for one demo run: its agents see no other demo's."""
    return site.new_site("demo")


DEMO_DESCRIPTION = """\
A small factory on this machine, on the embedded defaults: `mesh up` over the
shipped profiles, four agents (CNC mill, vibration sensor, quality lab, robot
cell). A fresh LocalLedger in a new data dir, and each agent its own `mesh run`
process under one fresh random site (`demo-<8 hex>`), so demos running side by
side never see each other. They find each other by mDNS on loopback,
authenticate, and the robot cell buys spindle time, a vibration feed and
inspections through payment channels while a live view shows peers, sessions and
satoshis. Then the buyer stops, every channel closes cooperatively, a block is
mined, every want is listed with its state, with what each agent earned and
spent, and the on-ledger balances are reconciled with every meter to the
satoshi.

exit status: 0 when every want is done and balances, meters and the ledger
reconcile; 1 otherwise (an unmet want is named on an `UNMET:` line)."""


def cmd_demo(args: argparse.Namespace) -> int:
    """Entry point of `mesh demo`."""
    without = tuple(args.without or ())
    site_name = new_site()
    with (
        demo_plant(PROFILES, site_name, enabled=not args.no_plant) as plant,
        tempfile.TemporaryDirectory(prefix="m2mesh-demo-certs-") as workdir,
    ):
        certs = DemoCertificates(Path(workdir))
        work = DemoWorkOrders()
        paths = [
            plant.profile(name) if plant is not None else PROFILES / f"{name}.toml"
            for name in AGENTS
            if name not in without
        ]
        paths = [certs.quality_lab(p) if p.stem == "quality-lab" else p for p in paths]

        def report(roster: Roster, statuses: Statuses) -> list[str]:
            lines = plant.report(roster) if plant is not None else []
            return lines + certs.report(roster, statuses) + work.report(roster, statuses)

        def before_start(roster: Roster) -> None:
            certs.certify(roster)
            certs.accredit(roster)
            work.setup(roster, certs.lab.peer_id)

        agents = load_agents(paths)
        options = RunOptions(
            seconds=args.seconds,
            keep=args.keep,
            as_json=args.json,
            data_dir=args.data_dir,
            log_level=args.log_level,
            log_format=args.log_format,
            site=site_name,
            label="demo",
            note=f" (without {', '.join(without)})" if without else "",
            report=report,
            before_start=before_start,
        )
        return run_site(agents, options)


def add_demo_command(sub: Any) -> None:
    """Register `mesh demo`."""
    demo = sub.add_parser(
        "demo",
        help="run a small factory of agents on this machine",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_site_options(demo)
    demo.add_argument(
        "--without",
        action="append",
        choices=PROVIDERS,
        metavar="AGENT",
        help="run the factory without this machine (repeatable; one of "
        f"{', '.join(PROVIDERS)}): the others still trade and settle, the robot cell's "
        "want of it goes unmet and the demo says so and exits 1",
    )
    demo.add_argument(
        "--no-plant",
        action="store_true",
        help="leave out the plant path (the simulated OPC UA controller, the sensor's "
        "OPC UA-sourced feed, the robot cell's OPC UA server and Sparkplug publishing)",
    )
    demo.set_defaults(func=cmd_demo)
