"""`mesh run`, `mesh status`, `mesh buy`, `mesh channels`: run an agent and talk to it
(a stopped one: `mesh status` and `mesh channels` read its store, `agents.offline`).
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import pynng
import trio

from agents.buy_command import (
    BUY_DESCRIPTION,
    MAX_REQUEST_BYTES,
    STOP_GRACE,
    add_buy_arguments,
    complete,
    delivery_lines,
    json_document,
    request_field,
    summary_line,
)
from agents.chain_choice import CHAINS, default_chain, is_local
from agents.commands import at_expiry, channel_prefix
from agents.control import ControlError, NotRunning, request
from agents.ledger_cli import wait_until_unlocked
from agents.logs import console_line
from agents.offline import stored_state
from agents.profile import Profile, load_profile
from agents.runtime import Agent
from agents.web.config import exposure_problem, parse_listen
from mesh.errors import MeshError


class AgentCliError(MeshError):
    """A usage problem with an agent command."""


def default_ledger(data_dir: Path) -> Path:
    """Where an agent looks for the LocalLedger file when none is given."""
    return Path(os.environ.get("M2MESH_LEDGER", data_dir / "ledger.db"))


def _check_data_dir(data_dir: Path) -> None:
    """Refuse a data dir the agent could not keep its stores and socket in."""
    if data_dir.exists() and not data_dir.is_dir():
        raise AgentCliError(f"--data-dir {data_dir} is not a directory")
    if data_dir.is_dir() and not os.access(data_dir, os.W_OK | os.X_OK):
        raise AgentCliError(
            f"--data-dir {data_dir} is not writable (a read-only directory or file system);"
            " the agent keeps its stores and control socket there"
        )


def _run_agent(args: argparse.Namespace, profile: Profile, data_dir: Path) -> None:
    """`mesh run` once the data dir is ours: check the ledger and options, run."""
    try:
        chain = args.chain or default_chain()
    except ValueError as exc:
        raise AgentCliError(f"$M2MESH_CHAIN: {exc}") from None
    ledger = args.ledger or default_ledger(data_dir)
    if is_local(chain):
        if not ledger.exists():
            raise AgentCliError(
                f"no ledger at {ledger}: create one with `mesh ledger init --db {ledger}`"
            )
        wait_until_unlocked(ledger, "ledger")
    wait_until_unlocked(data_dir / "agent.db", "agent's store")
    passphrase = None
    if profile.passphrase_env:
        value = os.environ.get(profile.passphrase_env)
        if value is None:
            raise AgentCliError(f"the profile wants the passphrase in ${profile.passphrase_env}")
        passphrase = value.encode()
    dashboard = None
    if args.dashboard is not None:  # the profile's [dashboard] token stays
        host, port = parse_listen(args.dashboard)
        dashboard = replace(profile.dashboard, host=host, port=port)
        problem = exposure_problem(dashboard)
        if problem:
            raise AgentCliError(f"--dashboard: {problem}")
    agent = Agent(
        profile, data_dir, ledger, passphrase=passphrase, dashboard=dashboard, chain=chain
    )
    try:
        trio.run(_run_until_signal, agent, getattr(args, "log_format", "plain"))
    except* pynng.NNGException as failed:
        # Only the mailbox's listener lets an nng error out of the agent.
        raise _mailbox_error(profile, _first(failed)) from None


def _hold_data_dir(data_dir: Path) -> int:
    """Take ``DATA_DIR/agent.lock`` for the rest of this process's life (the kernel lets
    go when it exits, kill -9 included): two agents on one data dir would share its
    channels and steal each other's control socket. Returns the lock's descriptor."""
    path = data_dir / "agent.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AgentCliError(
            f"another agent (pid {holder}) is running with --data-dir {data_dir};"
            " one agent per data dir (stop it first, or use another data dir)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def cmd_run(args: argparse.Namespace) -> int:
    """Run an agent from a profile until SIGINT/SIGTERM."""
    data_dir: Path = args.data_dir
    _check_data_dir(data_dir)
    profile = load_profile(args.profile, data_dir=data_dir)
    lock = _hold_data_dir(data_dir)
    try:
        _run_agent(args, profile, data_dir)
    finally:
        os.close(lock)
    return 0


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _mailbox_error(profile: Profile, exc: BaseException) -> AgentCliError:
    return AgentCliError(
        f"{profile.path}: agent.mailbox: cannot listen on {profile.mailbox}: {exc}"
        " (is the host one of this machine's addresses, and the port free?)"
    )


async def _run_until_signal(agent: Agent, log_format: str = "plain") -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            peer_id = agent.identity.peer_id if agent.identity else "?"
            mailbox = agent.node.address if agent.node else "?"
            view = f", dashboard {agent.dashboard_url}" if agent.dashboard_url else ""
            line = f"{agent.profile.name}: running as {peer_id} at {mailbox}{view} (Ctrl-C to stop)"
            print(console_line(line, log_format), file=sys.stderr, flush=True)

            async def stop_on_signal() -> None:
                async for signum in signals:
                    said = f"{agent.profile.name}: {signal.Signals(signum).name}, stopping"
                    print(console_line(said, log_format), file=sys.stderr, flush=True)
                    agent.request_stop()
                    return

            nursery.start_soon(stop_on_signal)


def cmd_address(args: argparse.Namespace) -> int:
    """Print a receive address of the agent's wallet (to fund it)."""
    from mesh.chain.tx import network_address
    from mesh.chain.wallet import Wallet
    from mesh.identity import load_identity
    from mesh.store import Store

    key = args.key or args.data_dir / "identity.key"
    identity = load_identity(key)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with Store(args.data_dir / "agent.db") as store:
        address = Wallet(store, identity).new_address()
    print(network_address(address, args.network) if args.network else address)
    return 0


def _ask(data_dir: Path, command: dict[str, Any]) -> dict[str, Any]:
    return request(data_dir / "control.sock", command)


def _stored(args: argparse.Namespace, not_running: NotRunning) -> dict[str, Any]:
    """The stored state of the stopped agent of ``--data-dir`` (`agents.offline`), or
    `not_running` said again when it has no store either."""
    if not (args.data_dir / "agent.db").is_file():
        raise ControlError(
            f"{not_running}; nor is there a stored state to show"
            f" ({args.data_dir / 'agent.db'} does not exist)"
        )
    return stored_state(args.data_dir, args.ledger or default_ledger(args.data_dir))


def _print_stored_header(
    stored: dict[str, Any], data_dir: Path, file: TextIO | None = None
) -> None:
    print(
        f"the agent of {data_dir} is not running: this is its stored state"
        f" ({stored['store']}, read-only)",
        file=file,
    )
    if stored["height"] is None:
        print(
            f"ledger: height unknown ({stored['ledger_error']}; give --ledger FILE)",
            file=file,
        )
    else:
        print(f"ledger {stored['ledger']}: height {stored['height']}", file=file)


def _print_channels(channels: list[dict[str, Any]], height: int | None, width: int) -> None:
    """One line per channel (its id cut to `width` hex digits), and under it what its
    expiry means."""
    print(f"channels ({len(channels)}):")
    for ch in channels:
        cid = ch["channel_id"][:width]
        print(f"  {cid} {ch['role']:<5} {ch['service']:<16} {channel_line(ch)}")
        print(f"      {at_expiry(ch, height)}")


def cmd_status(args: argparse.Namespace) -> int:
    """Show a running agent's peers, sessions, channels, meters and wallet; of a
    stopped one (nothing answers on its control socket), its stored channels."""
    try:
        status = _ask(args.data_dir, {"cmd": "status"})
    except NotRunning as exc:
        if args.json:  # the live status only: scripts wait on it for the agent to be up
            raise ControlError(
                f"{exc}; its stored state: `mesh status` without --json, or `mesh channels --json`"
            ) from None
        stored = _stored(args, exc)
        _print_stored_header(stored, args.data_dir)
        _print_channels(stored["channels"], stored["height"], 16)
        return 0
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"{status['agent']}  {status['peer_id']}  {status['mailbox']}")
    if status.get("dashboard"):
        print(f"dashboard: {status['dashboard']}")
    network = status.get("network") or ""
    ignored = (status.get("discovery") or {}).get("ignored_foreign", 0)
    print(
        f"site {status.get('site')!r}, network {network[:16]}…"
        f" ({ignored} announcement(s) of other deployments ignored)"
    )
    wallet = status.get("wallet", {})
    print(
        f"wallet: {wallet.get('available', 0)} sat available, {wallet.get('reserved', 0)} reserved"
    )
    storage = status.get("storage")
    if storage and not storage["healthy"]:
        since = time.strftime("%H:%M:%S", time.localtime(storage["since"] or time.time()))
        print(
            f"storage: FAULT since {since} ({storage['faults']} failed writes so far):"
            f" {storage['reason']} -- no new channels or orders until a write succeeds"
        )
    print(f"peers ({len(status['peers'])}):")
    for peer in status["peers"]:
        live = "session" if peer["peer_id"] in status["sessions"] else "-"
        print(f"  {peer['name'] or '?':<20} {peer['peer_id'][:16]}  {live:<7} {peer['services']}")
    _print_channels(status["channels"], status.get("height"), 16)
    for service in status.get("services", []):
        print(
            f"  sells {service['id']} ({service['kind']}):"
            f" {service['price']} sat per {service['unit']}"
        )
    for meter in status.get("meters", []):
        print(
            f"  meter {meter['channel_id'][:16]} {meter['service']} to {meter['buyer'][:16]}:"
            f" {meter['delivered_units']} unit(s) delivered, {meter['paid']} sat paid"
            + (" (frozen)" if meter["frozen"] else "")
        )
    for want in status["wants"]:
        print(
            f"  want {want['service']}: {want['state']}, "
            f"{want['delivered']}/{want['units']} units, paid {want['paid']}"
        )
    work = status.get("work_orders") or {}
    for order in work.get("orders", []):
        verdict = f", {order['verdict']}" if order.get("verdict") else ""
        print(f"  work order {order['order_id'][:8]} ({order['role']}) part {order['part']}:"
              f" {order['state']}{verdict}, with {order['peer'][:16]}")  # fmt: skip
    for workflow, why in work.get("waiting", {}).items():
        print(f"  workflow {workflow} waits: {why}")
    bridges = status.get("bridges") or {}
    for service, said in bridges.get("sources", {}).items():
        print(f"  source of {service}: {said}")
    if bridges.get("opcua_server"):
        print(f"  OPC UA server: {bridges['opcua_server']} (read-only)")
    if bridges.get("sparkplug"):
        print(f"  Sparkplug B: {bridges['sparkplug']}")
    return 0


def channel_line(ch: dict[str, Any]) -> str:
    """A channel's state and money as `mesh status` prints it: what was signed against
    what the chain paid once settled, and how long a payer's coins stay locked."""
    state, signed = ch["state"], ch.get("signed_total", ch["total"])
    if state in ("closed", "refunded"):
        paid = ch.get("paid_on_chain")
        if paid is None:
            return f"{state}: chain payment not known, {signed} signed"
        return f"{state}: chain paid {paid} of {signed} signed"
    money = f"{signed} signed" if state == "closing" else f"paid {signed}/{ch['capacity']}"
    if ch.get("refused"):
        money = f"the payee refused the funding ({ch['refused']})"
    if ch.get("locked_until") is not None:
        blocks = int(ch["blocks_left"])
        left = f"{blocks} block" if blocks == 1 else f"{blocks} blocks"
        return f"{state}: locked until height {ch['locked_until']} ({left}), {money}"
    if ch.get("refund_due"):
        return f"{state}: {money}, refund due (expiry {ch['expiry_height']} reached)"
    return f"{state}: {money}"


def cmd_buy(args: argparse.Namespace) -> int:
    """Ask a running agent to buy units of a service; show what was delivered."""
    if args.units < 1:
        raise AgentCliError(f"--units {args.units}: buy at least 1 unit")
    if args.timeout <= 0:
        raise AgentCliError(f"--timeout {args.timeout:g}: give a number of seconds above 0")
    command: dict[str, Any] = {
        "cmd": "buy",
        "service": args.service,
        "units": args.units,
        "kind": args.kind,
        "tick": args.tick,
        "timeout": args.timeout,
        "deliveries": True,
    }
    if args.request is not None:
        command.update(request_field(_request_payload(args.request)))
    if args.peer:
        command["peer"] = args.peer
    if args.max_price:
        command["max_price"] = args.max_price
    with ExitStack() as stack:
        out = stack.enter_context(_open_out(args.out)) if args.out else sys.stdout
        if logging.getLogger().isEnabledFor(logging.WARNING):  # --log-level error: errors only
            print(f"buying {args.units} unit(s) of {args.service}…", file=sys.stderr)
        wait = args.timeout + STOP_GRACE + 10  # the agent answers within timeout + grace
        reply = request(args.data_dir / "control.sock", command, timeout=wait)
        if args.out:
            out.truncate(0)
        if args.json:
            print(json_document(reply), file=out)
        else:
            for line in delivery_lines(reply):
                print(line, file=out)
    summary = summary_line(reply, str(args.out) if args.out else None)
    if not complete(reply):
        raise AgentCliError(summary)
    if not args.json or args.out:
        print(summary, file=sys.stderr)
    return 0


def _request_payload(given: str) -> bytes:
    """`--request TEXT` as UTF-8, or `--request @FILE`'s bytes."""
    if given.startswith("@"):
        path = Path(given[1:])
        try:
            payload = path.read_bytes()
        except OSError as exc:
            raise AgentCliError(
                f"--request {given}: cannot read {path}: {exc.strerror or exc}"
            ) from None
    else:
        payload = given.encode()
    if len(payload) > MAX_REQUEST_BYTES:
        raise AgentCliError(
            f"--request: {len(payload)} bytes; a request is at most {MAX_REQUEST_BYTES}"
        )
    return payload


def _open_out(path: Path) -> TextIO:
    """`--out FILE`, opened before anything is bought (a path that cannot be written
    costs nothing) without emptying it: `cmd_buy` empties it when it writes."""
    try:
        return path.open("a", encoding="utf-8")
    except OSError as exc:
        raise AgentCliError(f"--out {path}: cannot write it: {exc.strerror or exc}") from None


def cmd_channels(args: argparse.Namespace) -> int:
    """List an agent's channels (a stopped one's from its store), or close one."""
    if args.action == "close":
        if not args.channel_id:
            raise AgentCliError("channels close needs a CHANNEL_ID")
        prefix = channel_prefix(args.channel_id)  # (a bad one is refused before asking)
        try:
            reply = _ask(args.data_dir, {"cmd": "close", "channel_id": prefix})
        except NotRunning as exc:
            raise ControlError(
                f"{exc}: only a running agent closes a channel (start it with `mesh run`;"
                " `mesh channels` shows its stored ones)"
            ) from None
        print(json.dumps(reply))
        return 0
    try:
        status = _ask(args.data_dir, {"cmd": "status"})
    except NotRunning as exc:
        status = _stored(args, exc)
        # With --json the note goes to stderr: stdout stays one JSON document.
        _print_stored_header(status, args.data_dir, sys.stderr if args.json else None)
    channels, height = status["channels"], status.get("height")
    if args.json:
        for ch in channels:
            ch["blocks_to_expiry"] = None if height is None else ch["expiry_height"] - height
            ch["at_expiry"] = at_expiry(ch, height)
        print(json.dumps(channels, indent=1))
    else:
        _print_channels(channels, height, 64)
    return 0


DATA_DIR_HELP = "the agent's data directory"
RUNNING_HELP = "the data directory of the running agent to ask"
STOPPED_LEDGER_HELP = (
    "of a stopped agent: the LocalLedger file whose height counts the blocks left"
    " (read-only; default $M2MESH_LEDGER or DATA_DIR/ledger.db)"
)


def add_agent_commands(sub: Any) -> None:
    """Register run/address/status/buy/channels on the `mesh` parser."""
    run = sub.add_parser(
        "run",
        help="run an agent from a profile (until Ctrl-C / SIGTERM)",
        description="Run an agent from its profile until Ctrl-C or SIGTERM. It listens "
        "for sessions, announces itself and finds peers by mDNS, sells the services its "
        "profile offers, buys what the profile wants through payment channels, anchors "
        "its records, and answers `mesh status`, `mesh buy` and `mesh channels` on "
        "DATA_DIR/control.sock. On Ctrl-C or SIGTERM it settles first: it closes its "
        "channels and says goodbye on mDNS (within ~10 s).",
    )
    run.add_argument("profile", type=Path, help="the agent's profile (TOML; see profiles/)")
    run.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="the agent's data directory (identity.key, agent.db, control.sock)",
    )
    run.add_argument(
        "--ledger",
        type=Path,
        help="LocalLedger file (default: $M2MESH_LEDGER or DATA_DIR/ledger.db)",
    )
    run.add_argument(
        "--chain",
        choices=CHAINS,
        help="where the money is: `local` (the LocalLedger file, the default) or the BSV"
        " network through ARC, `arc:test` or `arc:main` (ARC and WhatsOnChain from"
        " $M2MESH_ARC_URL, $M2MESH_ARC_API_KEY, $M2MESH_WOC_URL, $M2MESH_WOC_API_KEY;"
        " default $M2MESH_CHAIN or local; see docs/TESTNET.md)",
    )
    run.add_argument(
        "--dashboard",
        metavar="HOST:PORT|off",
        type=_listen,
        help="serve the read-only dashboard, /metrics and proofs here (default: the"
        " profile's [dashboard] listen, else 127.0.0.1 on a free port; `mesh status`"
        " prints the URL); an address other machines reach needs the profile's"
        " dashboard.token_file; off: serve nothing",
    )
    run.set_defaults(func=cmd_run)

    address = sub.add_parser(
        "address",
        help="print a receive address of an agent's wallet",
        description="Print a new receive address of an agent's wallet, to fund it: "
        'mesh ledger fund "$(mesh address --data-dir DIR)" 100000 --mine',
    )
    address.add_argument("--data-dir", type=Path, required=True, help=DATA_DIR_HELP)
    address.add_argument("--key", type=Path, help="identity key (default DATA_DIR/identity.key)")
    address.add_argument(
        "--network",
        choices=("main", "test"),
        help="write it as that network's address (testnet: m…/n…, to fund an agent that"
        " runs with --chain arc:test); default: the form the local ledger takes",
    )
    address.set_defaults(func=cmd_address)

    status = sub.add_parser(
        "status",
        help="show an agent's state (a stopped one's stored channels)",
        description="Show a running agent's peers, sessions, channels, orders and wallet "
        "(asked over DATA_DIR/control.sock); under each channel, its expiry height, the "
        "blocks left to it and what happens then. Of a stopped agent, its stored "
        "channels, read from DATA_DIR/agent.db without writing anything.",
    )
    status.add_argument("--data-dir", type=Path, required=True, help=DATA_DIR_HELP)
    status.add_argument(
        "--json",
        action="store_true",
        help="all of it as JSON, with the node's counters (a running agent only)",
    )
    status.add_argument("--ledger", type=Path, help=STOPPED_LEDGER_HELP)
    status.set_defaults(func=cmd_status)

    buy = sub.add_parser(
        "buy",
        help="ask a running agent to buy a service and show what was delivered",
        description=BUY_DESCRIPTION,
    )
    add_buy_arguments(buy)
    buy.add_argument("--data-dir", type=Path, required=True, help=RUNNING_HELP)
    buy.set_defaults(func=cmd_buy)

    channels = sub.add_parser(
        "channels",
        help="list an agent's channels, or close one",
        description="List an agent's channels -- each with its expiry height, the blocks "
        "left to it and what happens then; a stopped agent's from its store, read-only -- "
        "or ask a running agent to close one: a payer asks the payee to co-sign the "
        "latest payment (or a release) and broadcast it; a payee co-signs and broadcasts "
        "alone. A close the payee does not answer says when the refund comes instead.",
    )
    channels.add_argument(
        "action", nargs="?", choices=["list", "close"], default="list", help="(default list)"
    )
    channels.add_argument(
        "channel_id",
        nargs="?",
        help="the channel to close: its id or a unique prefix of at least 8 hex digits",
    )
    channels.add_argument("--data-dir", type=Path, required=True, help=DATA_DIR_HELP)
    channels.add_argument("--json", action="store_true", help="list the channels as JSON")
    channels.add_argument("--ledger", type=Path, help=STOPPED_LEDGER_HELP)
    channels.set_defaults(func=cmd_channels)
