"""``python -m mesh.discovery``: run discovery alone and print the peer table's events.

One JSON object per line on stdout, flushed at once, each with ``event`` and the
wall-clock ``time``:

* ``ready``   -- registered: ``peer_id``, ``instance``, ``interfaces``, ``mailbox``,
  ``browsing_at`` (wall time at which zeroconf was up and browsing)
* ``added`` / ``updated`` / ``removed`` -- a table event: ``peer_id``, ``name``,
  ``mailbox``, ``addresses``, ``services``, ``confirmed`` (+ ``reason`` for removed)
* ``stats``   -- on SIGUSR1: the `DiscoveryStatistics` fields
* ``closed``  -- after SIGTERM/SIGINT, once the goodbyes are sent: final ``stats``

SIGTERM and SIGINT cancel discovery, which unregisters (goodbyes go out) before
the process exits with status 0. A setup problem (bad interface, unreadable key)
is one line on stderr and exit status 1. It is a diagnostic tool and the process
the integration tests and the benchmark start; the agent runtime embeds
`open_discovery` instead. (docs/ARCHITECTURE.md §8)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from mesh.discovery.records import Announcement
from mesh.discovery.service import DEFAULT_TTL, LOOPBACK_INTERFACES, Discovery, open_discovery
from mesh.discovery.table import (
    Peer,
    PeerAdded,
    PeerEvent,
    PeerRemoved,
    PeerTable,
    parse_static,
)
from mesh.errors import MeshError
from mesh.identity import Identity, load_identity
from mesh.session import DEFAULT_SITE


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event line and flush it."""
    print(json.dumps({"event": event, "time": time.time(), **fields}), flush=True)


def _peer_fields(peer: Peer) -> dict[str, Any]:
    return {
        "peer_id": peer.peer_id,
        "name": peer.name,
        "mailbox": peer.mailbox,
        "addresses": list(peer.addresses),
        "services": peer.services,
        "confirmed": peer.confirmed,
    }


def _stats(discovery: Discovery) -> dict[str, Any]:
    return dataclasses.asdict(discovery.statistics())


async def _print_events(events: trio.MemoryReceiveChannel[PeerEvent]) -> None:
    async with events:
        async for event in events:
            if isinstance(event, PeerAdded):
                emit("added", **_peer_fields(event.peer))
            elif isinstance(event, PeerRemoved):
                emit("removed", reason=event.reason.value, **_peer_fields(event.peer))
            else:
                emit("updated", **_peer_fields(event.peer))


async def run(args: argparse.Namespace, identity: Identity) -> None:
    """Run discovery until SIGTERM/SIGINT, printing events."""
    table = PeerTable(own_peer_id=identity.peer_id)
    for mailbox, peer_id in args.static:
        table.add_static(mailbox, peer_id)
    events = table.subscribe(buffer=4096)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_print_events, events)
            async with open_discovery(
                identity,
                interfaces=args.interface or list(LOOPBACK_INTERFACES),
                mailbox=args.mailbox,
                name=args.name,
                services=args.svc,
                ttl=args.ttl,
                rebrowse=args.rebrowse,
                table=table,
                site=args.site,
                network=args.network,
            ) as discovery:
                announcement: Announcement = discovery.announcement
                since = discovery.browsing_since or trio.current_time()
                emit(
                    "ready",
                    browsing_at=time.time() - (trio.current_time() - since),
                    peer_id=identity.peer_id,
                    instance=discovery.instance,
                    interfaces=list(discovery.interfaces),
                    mailbox=announcement.mailbox,
                )
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        emit("stats", **_stats(discovery))
                        continue
                    break
            emit("closed", stats=_stats(discovery))
            nursery.cancel_scope.cancel()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m mesh.discovery``."""
    parser = argparse.ArgumentParser(
        prog="python -m mesh.discovery",
        description="Advertise an agent by mDNS, browse for others, print JSON events.",
    )
    parser.add_argument(
        "--interface",
        action="append",
        metavar="ADDR",
        help="IPv4 address of an interface to use (repeat; default 127.0.0.1 only)",
    )
    parser.add_argument("--mailbox", required=True, help="mailbox URL to advertise")
    parser.add_argument("--key", type=Path, help="identity key file (default: a fresh key)")
    parser.add_argument("--name", default="", help="human name to advertise")
    parser.add_argument("--svc", default="", help="service summary, e.g. 'spindle-time=5/s'")
    parser.add_argument("--site", default=DEFAULT_SITE, help="site to announce and accept")
    parser.add_argument(
        "--network", default="", help="network id (genesis block hash) to announce and accept"
    )
    parser.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL,
        help=f"least record TTL in seconds; large sites raise it ({DEFAULT_TTL})",
    )
    parser.add_argument(
        "--rebrowse",
        type=float,
        metavar="SECONDS",
        help="also send a known-answer PTR query this often (default: never)",
    )
    parser.add_argument(
        "--static",
        action="append",
        default=[],
        type=_static,
        metavar="[ID@]URL",
        help="static peer mailbox (tcp://host:port), optionally pinned to its peer id",
    )
    return parser


def _static(text: str) -> tuple[str, str | None]:
    try:
        return parse_static(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    failures: list[BaseException] = []
    try:
        identity = load_identity(args.key) if args.key else Identity.generate()
        trio.run(run, args, identity)
    except* (MeshError, ValueError) as group:
        failures.extend(_leaves(group))
    for exc in failures:
        print(f"mesh.discovery: {exc}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
