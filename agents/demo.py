"""`mesh demo`: a small factory on one machine, end to end, on the embedded defaults.

Creates a data dir with a fresh LocalLedger, gives four agents (CNC mill, vibration
sensor, quality lab, robot cell) identity keys, funds the robot cell from the faucet
(and each provider with a few sats for anchoring fees), mines a block every 2 s, and
starts each agent as its own `mesh run` process. They find each other by mDNS on
loopback, authenticate, and the robot cell leases spindle time, subscribes to the
vibration feed and orders inspections, paying through channels. A live view shows
peers, services and satoshis flowing. At the end the buyer stops (providers finish
what is paid), every channel closes cooperatively, a block is mined, and on-ledger
balances are reconciled with every meter to the satoshi. Every agent's records are
anchored and mined, and the readings the robot cell bought are provable from its own
data dir too (`mesh proof --agent SENSOR …`), through the sensor's receipts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agents.control import ControlError, request
from mesh.anchoring import AnchorStore
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script, parse_exact
from mesh.chain.wallet import Wallet
from mesh.channel.store import ChannelStore
from mesh.identity import Identity, load_identity, save_identity
from mesh.store import Store


def _profiles_dir() -> Path:
    """The shipped profiles: beside the source tree, or where `pip install` put them."""
    beside = Path(__file__).resolve().parent.parent / "profiles"
    installed = Path(sys.prefix) / "share" / "m2mesh" / "profiles"
    return beside if (beside / "robot-cell.toml").exists() else installed


PROFILES = _profiles_dir()
AGENTS = ("cnc-mill", "vibration-sensor", "quality-lab", "robot-cell")
BUYER = "robot-cell"
FUNDS = 1_000_000
BUYER_COINS = 4  # one coin per channel it opens at once, so none waits for change
FLOAT = 5_000  # each provider's coins for anchoring fees
BLOCK_SECONDS = 2.0  # a block this often while the factory runs


class Demo:
    """The demo's processes and files."""

    def __init__(self, root: Path, profiles: Path, log_level: str) -> None:
        self.root = root
        self.profiles = profiles
        self.ledger = root / "ledger.db"
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ids: dict[str, str] = {}

    def prepare(self) -> None:
        """Ledger, keys, and the buyer's coins."""
        LocalLedger.create(self.ledger).close()
        for name in AGENTS:
            identity = Identity.generate()
            save_identity(identity, self.root / name / "identity.key")
            self.ids[name] = identity.peer_id
        with LocalLedger.open(self.ledger) as ledger:
            for name in AGENTS:
                with Store(self.root / name / "agent.db") as store:
                    wallet = Wallet(store, load_identity(self.root / name / "identity.key"))
                    script = p2pkh_script(wallet.new_address())
                if name == BUYER:
                    for _ in range(BUYER_COINS):
                        ledger.faucet(script, FUNDS // BUYER_COINS)
                else:
                    ledger.faucet(script, FLOAT)
            ledger.mine()

    def start(self) -> None:
        """One `mesh run` process per agent (providers first)."""
        for name in AGENTS:
            log = open(self.root / name / "agent.log", "wb")  # noqa: SIM115 - owned by the child
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agents.cli",
                    "--log-level",
                    self.log_level,
                    "run",
                    str(self.profiles / f"{name}.toml"),
                    "--data-dir",
                    str(self.root / name),
                    "--ledger",
                    str(self.ledger),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def status(self, name: str) -> dict[str, Any] | None:
        """An agent's status, or None while it is starting."""
        try:
            return request(self.root / name / "control.sock", {"cmd": "status"}, timeout=5)
        except (ControlError, OSError, ValueError):
            return None

    def check_alive(self) -> None:
        """Raise if an agent process died."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / name / "agent.log").read_text()[-2000:]
                raise RuntimeError(f"agent {name} exited with {proc.returncode}:\n{tail}")

    def stop(self, name: str, timeout: float = 12.0) -> int | None:
        """SIGTERM one agent and wait for it."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    @contextmanager
    def mining(self, interval: float = 0.3) -> Iterator[None]:
        """Mine a block every `interval` seconds while the block runs."""
        done = threading.Event()

        def miner() -> None:
            with LocalLedger.open(self.ledger) as ledger:
                while not done.wait(interval):
                    ledger.mine()

        thread = threading.Thread(target=miner, name="demo-miner", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def kill_all(self) -> None:
        """Make sure nothing is left running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _line(statuses: dict[str, dict[str, Any] | None], started: float) -> list[str]:
    lines = [f"m2mesh demo — {time.monotonic() - started:5.1f} s"]
    for name in AGENTS:
        st = statuses.get(name)
        if st is None:
            lines.append(f"  {name:<17} starting…")
            continue
        flows = sum(ch["total"] for ch in st["channels"])
        lines.append(
            f"  {st['agent']:<19} peers {len(st['peers'])}  sessions {len(st['sessions'])}"
            f"  channels {len(st['channels'])}  sat {flows:>6}"
        )
        for want in st["wants"]:
            lines.append(
                f"      buys {want['service']:<13} {want['delivered']:>4}/{want['units']:<4}"
                f" paid {want['paid']:>5} ({want['state']})"
            )
    return lines


def run_demo(
    seconds: float, keep: bool, as_json: bool, data_dir: Path | None, log_level: str
) -> int:
    """The whole demo; returns the exit code."""
    root = data_dir or Path(tempfile.mkdtemp(prefix="m2mesh-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root, PROFILES, log_level)
    say = (lambda *a: print(*a, file=sys.stderr)) if as_json else print
    tty = sys.stdout.isatty() and not as_json
    try:
        demo.prepare()
        say(f"data dir {root}; starting {len(AGENTS)} agents…")
        demo.start()
        started = time.monotonic()
        deadline = started + seconds
        last_print = 0.0
        statuses: dict[str, dict[str, Any] | None] = {}
        with demo.mining(BLOCK_SECONDS):  # anchors and channels confirm as they go
            while time.monotonic() < deadline:
                demo.check_alive()
                statuses = {name: demo.status(name) for name in AGENTS}
                buyer = statuses.get(BUYER)
                if buyer and buyer["wants"] and all(w["state"] == "done" for w in buyer["wants"]):
                    break
                now = time.monotonic()
                if tty:
                    print("\x1b[2J\x1b[H" + "\n".join(_line(statuses, started)), flush=True)
                elif now - last_print >= 2.0:
                    say(" | ".join(_line(statuses, started)[1:][:4]))
                    last_print = now
                time.sleep(0.5)
        say("stopping: the buyer settles, then every channel closes…")
        met = {
            name: sorted(p["peer_id"] for p in (st or {}).get("peers", []))
            for name, st in statuses.items()
        }
        with demo.mining():  # anchors broadcast at shutdown get mined meanwhile
            demo.stop(BUYER)
            provider_status = {name: demo.status(name) for name in AGENTS if name != BUYER}
            for name in AGENTS:
                if name != BUYER:
                    demo.stop(name)
        summary = reconcile(demo, provider_status)
        for agent in summary["agents"]:
            agent["met"] = met.get(agent["name"], [])
    finally:
        demo.kill_all()
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        print_summary(summary)
    if not keep and data_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    elif not as_json:
        print(f"kept the data dir: {root}")
    return 0 if summary["reconciled"] else 1


def reconcile(demo: Demo, provider_status: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Mine a block and check every channel and meter against the ledger."""
    channels: list[dict[str, Any]] = []
    meters: list[dict[str, Any]] = []
    with LocalLedger.open(demo.ledger) as ledger:
        ledger.mine()
        for name in AGENTS:
            if name == BUYER:
                continue
            with Store(demo.root / name / "agent.db") as store:
                stored = ChannelStore(store).load(include_final=True)
            status = provider_status.get(name) or {"meters": []}
            meter_by_channel = {m["channel_id"]: m for m in status["meters"]}
            for item in stored:
                record = item.record
                cid = record.terms.channel_id.hex()
                close = ledger.status(record.close_txid) if record.close_txid else None
                # What the close transaction paid the payee (the coin may be spent since,
                # e.g. on anchoring fees, so look at the transaction, not the UTXO set).
                on_ledger = _paid_to(ledger, record.close_txid, record.terms.payee_payout)
                meter = meter_by_channel.get(cid)
                delivered_value = (
                    meter["delivered_units"] * meter["price"] if meter is not None else None
                )
                channels.append(
                    {
                        "channel_id": cid,
                        "payer": demo.ids[BUYER],
                        "payee": demo.ids[name],
                        "provider": name,
                        "service": item.service,
                        "state": record.state.value,
                        "total": record.total,
                        "close_txid": record.close_txid,
                        "close_mined": bool(close and close.state.value == "mined"),
                        "payee_on_ledger": on_ledger,
                        "delivered_value": delivered_value,
                    }
                )
                if meter is not None:
                    meters.append({"provider": name, "service": item.service, **meter})
        balance = ledger.balance()
    streams: list[dict[str, Any]] = []
    for name in AGENTS:
        with Store(demo.root / name / "agent.db") as store:
            for summary_row in AnchorStore(store).streams():
                streams.append({**summary_row.to_json(), "holder": name})
    ok = bool(channels) and all(
        c["state"] == "closed"
        and c["close_mined"]
        and c["payee_on_ledger"] == c["total"]
        and c["delivered_value"] == c["total"]
        for c in channels
    )
    return {
        "data_dir": str(demo.root),
        "ledger": str(demo.ledger),
        "agents": [
            {"name": name, "peer_id": demo.ids[name], "data_dir": str(demo.root / name)}
            for name in AGENTS
        ],
        "channels": channels,
        "meters": meters,
        "ledger_balanced": balance.balanced,
        "records": streams,
        # Every agent's own records are anchored and mined; copies a buyer keeps of a
        # producer's readings ("kept") are provable from the producer's batches.
        "all_records_anchored": bool(streams)
        and all(s["unanchored"] == 0 for s in streams if s["origin"] == "own"),
        "reconciled": ok and balance.balanced,
    }


def _paid_to(ledger: LocalLedger, txid: str, script: bytes) -> int:
    raw = ledger.raw_tx(txid) if txid else None
    if raw is None:
        return 0
    tx = parse_exact(raw)
    return sum(o.satoshis for o in tx.outputs if o.locking_script.serialize() == script)


def print_summary(summary: dict[str, Any]) -> None:
    """The human-readable end of the demo."""
    print("\nchannel            service        paid  delivered  on ledger  closed")
    for c in summary["channels"]:
        print(
            f"{c['channel_id'][:16]}  {c['service']:<13} {c['total']:>5}"
            f"  {c['delivered_value']!s:>9}  {c['payee_on_ledger']:>9}  {c['close_mined']}"
        )
    verdict = "reconcile exactly" if summary["reconciled"] else "DO NOT reconcile"
    print(
        f"\non-ledger balances and meters {verdict}; ledger balanced: {summary['ledger_balanced']}"
    )
    print("\nsigned records, anchored on the ledger (prove any with `mesh proof`):")
    for row in summary["records"]:
        print(
            f"  {row['holder']:<17} {row['origin']:<4} {row['stream']:<19} {row['records']:>5}"
            f" records, anchored {row['anchored']}, unanchored {row['unanchored']}"
        )


DEMO_DESCRIPTION = """\
A small factory on this machine, on the embedded defaults: a fresh LocalLedger in a
new data dir and four agents (CNC mill, vibration sensor, quality lab, robot cell),
each its own `mesh run` process. They find each other by mDNS on loopback,
authenticate, and the robot cell buys spindle time, a vibration feed and inspections
through payment channels while a live view shows peers, sessions and satoshis.
Then the buyer stops, every channel closes cooperatively, a block is mined, and the
on-ledger balances are reconciled with every meter to the satoshi.

exit status: 0 when balances, meters and the ledger reconcile; 1 otherwise."""


def cmd_demo(args: argparse.Namespace) -> int:
    """Entry point of `mesh demo`."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_demo(args.seconds, args.keep, args.json, args.data_dir, args.log_level)


def add_demo_command(sub: Any) -> None:
    """Register `mesh demo`."""
    demo = sub.add_parser(
        "demo",
        help="run a small factory of agents on this machine",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="run at most this long (default 30); it ends earlier once the robot cell "
        "has everything it wants",
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the data dir afterwards (printed at the start)"
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary (data dir, agents, channels, meters) on stdout; "
        "progress goes to stderr",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        help="put the ledger and the agents' data in this new directory (kept afterwards)",
    )
    demo.set_defaults(func=cmd_demo)
