"""``mesh controller``: a simulated machine controller served over a real OPC UA server,
to try the OPC UA bridges without a plant (`agents.ot.controller`).
(docs/ARCHITECTURE.md §6.1)"""

from __future__ import annotations

import argparse
import sys
from urllib.parse import urlparse

import trio

from agents.ot import OT_EXTRA, missing
from mesh.errors import MeshError

DEFAULT_CONTROLLER = "opc.tcp://127.0.0.1:4840/m2mesh/controller"


class OtCliError(MeshError):
    """A bad argument of an OT command."""


def cmd_controller(args: argparse.Namespace) -> int:
    """Serve the simulated controller until Ctrl-C."""
    absent = missing("asyncua")
    if absent:
        raise OtCliError(f"needs {', '.join(absent)}: {OT_EXTRA}")
    url = urlparse(args.endpoint)
    if url.scheme != "opc.tcp" or not url.hostname or url.port is None:
        raise OtCliError(f"--endpoint {args.endpoint!r}: expected opc.tcp://HOST:PORT/...")
    if args.rate <= 0 or args.rate > 10_000:
        raise OtCliError(f"--rate {args.rate:g}: changes per second between 0 and 10000")
    trio.run(_serve, url.hostname, url.port, float(args.rate))
    return 0


async def _serve(host: str, port: int, rate: float) -> None:
    from agents.ot.controller import VARIABLES, ControllerServer, node_id
    from agents.ot.portal import AsyncioPortal

    async with AsyncioPortal.open() as portal:
        server = ControllerServer(portal, host, port)
        await server.start()
        try:
            print(f"simulated controller at {server.endpoint}", flush=True)
            for name, (_, unit, _) in VARIABLES.items():
                print(f"  {node_id(name):28} {name}{f' ({unit})' if unit else ''}", flush=True)
            print(f"values move {rate:g} times a second; Ctrl-C stops", file=sys.stderr)
            await server.simulate(rate)
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()


def add_ot_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``controller`` to the `mesh` parser's subcommands."""
    controller = subparsers.add_parser(
        "controller",
        help="serve a simulated machine controller over OPC UA (to try the bridges)",
        description="Serve a simulated mill controller on a real OPC UA server: "
        "Machine.Vibration (mm/s), Machine.SpindleLoad (%%), Machine.Running and "
        "Machine.PartCount in namespace 2, moving --rate times a second, until Ctrl-C. "
        "A profile's [services.opcua] can sell one of them as a feed. Needs the ot extra.",
    )
    controller.add_argument(
        "--endpoint",
        default=DEFAULT_CONTROLLER,
        help=f"where to serve (default {DEFAULT_CONTROLLER})",
    )
    controller.add_argument(
        "--rate", type=float, default=10.0, help="value changes per second (default 10)"
    )
    controller.set_defaults(func=cmd_controller)


__all__ = ["DEFAULT_CONTROLLER", "add_ot_commands", "cmd_controller"]
