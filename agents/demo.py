"""`mesh demo`: a small factory on one machine, end to end, on the embedded defaults.

Creates a data dir with a fresh LocalLedger, gives four agents (CNC mill, vibration
sensor, quality lab, robot cell) identity keys and a copy of their shipped profile
under one fresh random site (`demo-<8 hex>`, so demos side by side on one host or LAN
never see each other), funds the robot cell from the faucet (and each provider with a
few sats for anchoring fees), mines a block every 2 s, and starts each agent as its
own `mesh run` process. They find each other by mDNS on loopback, authenticate, and
the robot cell leases spindle time, subscribes to the vibration feed and orders
inspections, paying through channels. A live view shows peers, services and satoshis
flowing. At the end the buyer stops (providers finish what is paid), every channel
closes cooperatively, a block is mined, and on-ledger balances are reconciled with
every meter to the satoshi. Every agent's records are anchored and mined, and the
readings the robot cell bought are provable from its own data dir too (`mesh proof
--agent SENSOR …`), through the sensor's receipts.

The verdict never hides a failure: every want of every agent is listed with its state,
and the demo succeeds only when every want is done and every channel, settled with
its real payer, matches its meter and the ledger. It must never change the shipped
profiles: the site goes into each agent's own copy.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
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
from agents.profile import ProfileError, WantSpec, load_profile
from mesh.anchoring import AnchorStore
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script, parse_exact
from mesh.chain.wallet import Wallet
from mesh.channel.state import Role
from mesh.channel.store import ChannelStore, StoredChannel
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
PROVIDERS = tuple(name for name in AGENTS if name != BUYER)
FUNDS = 1_000_000
BUYER_COINS = 4  # one coin per channel it opens at once, so none waits for change
FLOAT = 5_000  # each provider's coins for anchoring fees
BLOCK_SECONDS = 2.0  # a block this often while the factory runs


def new_site() -> str:
    """A fresh random site id for one demo run: its agents see no other demo's."""
    return f"demo-{secrets.token_hex(4)}"


def with_site(path: Path, text: str, site: str) -> str:
    """The profile `text` (read from `path`) with `[agent] site` set to `site`."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() == "[agent]":
            # json.dumps quotes printable ASCII exactly as a TOML basic string does.
            lines.insert(i + 1, f"site = {json.dumps(site)}\n")
            return "".join(lines)
    raise ProfileError(path, "agent", "the demo needs an [agent] table to set the site in")


class Demo:
    """The demo's processes and files."""

    def __init__(
        self,
        root: Path,
        profiles: Path,
        log_level: str,
        site: str,
        agents: tuple[str, ...] = AGENTS,
    ) -> None:
        self.root = root
        self.profiles = profiles
        self.ledger = root / "ledger.db"
        self.log_level = log_level
        self.site = site
        self.agents = agents
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ids: dict[str, str] = {}
        self.wanted: dict[str, tuple[WantSpec, ...]] = {}
        """Each agent's wants, as its profile states them: the verdict lists every one."""

    def profile(self, name: str) -> Path:
        """The agent's own copy of its shipped profile, under the demo's site."""
        return self.root / name / "profile.toml"

    def prepare(self) -> None:
        """Profiles, ledger, keys, and the buyer's coins."""
        LocalLedger.create(self.ledger).close()
        for name in self.agents:
            shipped = self.profiles / f"{name}.toml"
            self.profile(name).parent.mkdir(parents=True, exist_ok=True)
            self.profile(name).write_text(with_site(shipped, shipped.read_text(), self.site))
            profile = load_profile(self.profile(name))
            if profile.site != self.site:
                raise ProfileError(shipped, "agent.site", f"is {profile.site!r} in the copy")
            self.wanted[name] = profile.wants
            identity = Identity.generate()
            save_identity(identity, self.root / name / "identity.key")
            self.ids[name] = identity.peer_id
        with LocalLedger.open(self.ledger) as ledger:
            for name in self.agents:
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
        for name in self.agents:
            log = open(self.root / name / "agent.log", "wb")  # noqa: SIM115 - owned by the child
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agents.cli",
                    "--log-level",
                    self.log_level,
                    "run",
                    str(self.profile(name)),
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

    def wants(self, statuses: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
        """Every want of every agent, as its profile states it, with how it went by the
        agents' `statuses` ("unknown" when an agent did not say)."""
        rows = []
        for name, wants in self.wanted.items():
            reported = (statuses.get(name) or {}).get("wants", [])
            for i, want in enumerate(wants):
                # The runtime reports the profile's wants first and in order.
                said = reported[i] if i < len(reported) else {}
                if said.get("service") != want.service:
                    said = {}
                rows.append(
                    {
                        "agent": name,
                        "service": want.service,
                        "state": said.get("state", "unknown"),
                        "delivered": said.get("delivered", 0),
                        "units": want.units,
                        "paid": said.get("paid", 0),
                    }
                )
        return rows

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


def _line(demo: Demo, statuses: dict[str, dict[str, Any] | None], started: float) -> list[str]:
    lines = [f"m2mesh demo ({demo.site}) — {time.monotonic() - started:5.1f} s"]
    for name in demo.agents:
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


def unmet(wants: list[dict[str, Any]]) -> list[str]:
    """One line per want that is not done, naming the agent and the want."""
    return [
        f"{w['agent']} wants {w['service']}: delivered {w['delivered']}/{w['units']} ({w['state']})"
        for w in wants
        if w["state"] != "done"
    ]


def run_demo(
    seconds: float,
    keep: bool,
    as_json: bool,
    data_dir: Path | None,
    log_level: str,
    without: tuple[str, ...] = (),
) -> int:
    """The whole demo; returns the exit code."""
    root = data_dir or Path(tempfile.mkdtemp(prefix="m2mesh-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    agents = tuple(name for name in AGENTS if name not in without)
    demo = Demo(root, PROFILES, log_level, new_site(), agents)
    say = (lambda *a: print(*a, file=sys.stderr)) if as_json else print
    tty = sys.stdout.isatty() and not as_json
    try:
        demo.prepare()
        left_out = f" (without {', '.join(without)})" if without else ""
        say(f"data dir {root}; site {demo.site}; starting {len(agents)} agents{left_out}…")
        demo.start()
        started = time.monotonic()
        deadline = started + seconds
        last_print = 0.0
        statuses: dict[str, dict[str, Any] | None] = {}
        with demo.mining(BLOCK_SECONDS):  # anchors and channels confirm as they go
            while time.monotonic() < deadline:
                demo.check_alive()
                statuses = {name: demo.status(name) for name in agents}
                wants = demo.wants(statuses)
                if wants and all(w["state"] == "done" for w in wants):
                    break
                now = time.monotonic()
                if tty:
                    print("\x1b[2J\x1b[H" + "\n".join(_line(demo, statuses, started)), flush=True)
                elif now - last_print >= 2.0:
                    say(" | ".join(_line(demo, statuses, started)[1:][:4]))
                    last_print = now
                time.sleep(0.5)
        say("stopping: the buyers settle, then every channel closes…")
        met = {
            name: sorted(p["peer_id"] for p in (st or {}).get("peers", []))
            for name, st in statuses.items()
        }
        buyers = [name for name in agents if demo.wanted[name]]
        final: dict[str, dict[str, Any] | None] = {}
        with demo.mining():  # anchors broadcast at shutdown get mined meanwhile
            for name in buyers:  # how its wants went, as it stops buying
                final[name] = demo.status(name) or statuses.get(name)
                demo.stop(name)
            for name in agents:  # providers' meters, once every buyer settled
                if name not in buyers:
                    final[name] = demo.status(name)
            for name in agents:
                if name not in buyers:
                    demo.stop(name)
        summary = reconcile(demo, final)
        for agent in summary["agents"]:
            agent["met"] = met.get(agent["name"], [])
    finally:
        demo.kill_all()
    if as_json:
        print(json.dumps(summary, indent=1))
        for line in summary["unmet"]:
            say(f"UNMET: {line}")
    else:
        print_summary(summary)
    if not keep and data_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    elif not as_json:
        print(f"kept the data dir: {root}")
    return 0 if summary["reconciled"] else 1


Holder = tuple[str, StoredChannel]
"""One end of a channel: the demo agent that stores it, and its stored record."""


def reconcile(demo: Demo, final: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Mine a block and check every want, channel and meter against the ledger.

    A channel's two ends are the demo agents that store it as payer and as payee; one
    whose other end is no agent of this demo (another demo's, say) never reconciles.
    """
    ends: dict[bytes, dict[Role, Holder]] = {}
    for name in demo.agents:
        with Store(demo.root / name / "agent.db") as store:
            for item in ChannelStore(store).load(include_final=True):
                record = item.record
                ends.setdefault(record.terms.channel_id, {})[record.role] = (name, item)
    with LocalLedger.open(demo.ledger) as ledger:
        ledger.mine()
        channels = [
            _channel(demo, ledger, sides.get(Role.PAYER), sides.get(Role.PAYEE))
            for sides in ends.values()
        ]
        balance = ledger.balance()
    meters: list[dict[str, Any]] = []
    for c in channels:
        if c["provider"] is not None:
            status = final.get(c["provider"]) or {"meters": []}
            meter = next((m for m in status["meters"] if m["channel_id"] == c["channel_id"]), None)
            if meter is not None:
                c["delivered_value"] = meter["delivered_units"] * meter["price"]
                meters.append({"provider": c["provider"], "service": c["service"], **meter})
    streams: list[dict[str, Any]] = []
    for name in demo.agents:
        with Store(demo.root / name / "agent.db") as store:
            for summary_row in AnchorStore(store).streams():
                streams.append({**summary_row.to_json(), "holder": name})
    channels_ok = bool(channels) and all(
        c["payer_agent"] is not None
        and c["provider"] is not None
        and c["state"] == "closed"
        and c["close_mined"]
        and c["payee_on_ledger"] == c["total"]
        and c["delivered_value"] == c["total"]
        for c in channels
    )
    wants = demo.wants(final)
    return {
        "site": demo.site,
        "data_dir": str(demo.root),
        "ledger": str(demo.ledger),
        "agents": [
            {"name": name, "peer_id": demo.ids[name], "data_dir": str(demo.root / name)}
            for name in demo.agents
        ],
        "wants": wants,
        "unmet": unmet(wants),
        "channels": channels,
        "meters": meters,
        "channels_reconcile": channels_ok,
        "ledger_balanced": balance.balanced,
        "records": streams,
        # Every agent's own records are anchored and mined; copies a buyer keeps of a
        # producer's readings ("kept") are provable from the producer's batches.
        "all_records_anchored": bool(streams)
        and all(s["unanchored"] == 0 for s in streams if s["origin"] == "own"),
        # The demo's verdict: every want met, and what was paid is what was delivered
        # and what the ledger holds.
        "reconciled": not unmet(wants) and channels_ok and balance.balanced,
    }


def _channel(
    demo: Demo, ledger: LocalLedger, payer: Holder | None, payee: Holder | None
) -> dict[str, Any]:
    """One channel as its payee settled it (as its payer did when no demo agent is the
    payee), with both ends' agents; `delivered_value` is the payee's meter's, later."""
    end = payee or payer
    assert end is not None
    item = end[1]
    record = item.record
    close = ledger.status(record.close_txid) if record.close_txid else None
    return {
        "channel_id": record.terms.channel_id.hex(),
        "payer": demo.ids[payer[0]] if payer else record.peer_id,
        "payer_agent": payer[0] if payer else None,
        "payee": demo.ids[payee[0]] if payee else record.peer_id,
        "provider": payee[0] if payee else None,
        "service": item.service,
        "state": record.state.value,
        "total": record.total,
        "close_txid": record.close_txid,
        "close_mined": bool(close and close.state.value == "mined"),
        # What the close transaction paid the payee (the coin may be spent since, e.g.
        # on anchoring fees, so look at the transaction, not the UTXO set).
        "payee_on_ledger": _paid_to(ledger, record.close_txid, record.terms.payee_payout),
        "delivered_value": None,
    }


def _paid_to(ledger: LocalLedger, txid: str, script: bytes) -> int:
    raw = ledger.raw_tx(txid) if txid else None
    if raw is None:
        return 0
    tx = parse_exact(raw)
    return sum(o.satoshis for o in tx.outputs if o.locking_script.serialize() == script)


def print_summary(summary: dict[str, Any]) -> None:
    """The human-readable end of the demo."""
    print(f"\nsite {summary['site']}\n\nagent              wants          delivered   paid  state")
    for w in summary["wants"]:
        print(
            f"{w['agent']:<18} {w['service']:<13} {w['delivered']:>5}/{w['units']:<5}"
            f" {w['paid']:>5}  {w['state']}"
        )
    print("\nchannel            service        paid  delivered  on ledger  closed")
    for c in summary["channels"]:
        stray = "payer" if c["payer_agent"] is None else "payee" if c["provider"] is None else ""
        print(
            f"{c['channel_id'][:16]}  {c['service']:<13} {c['total']:>5}"
            f"  {c['delivered_value']!s:>9}  {c['payee_on_ledger']:>9}  {c['close_mined']}"
            + (f"  (its {stray} is no agent of this demo)" if stray else "")
        )
    print()
    for line in summary["unmet"]:
        print(f"UNMET: {line}")
    balanced = f"ledger balanced: {summary['ledger_balanced']}"
    if summary["unmet"]:
        settled = "match" if summary["channels_reconcile"] else "DO NOT match"
        print(
            f"not reconciled: {len(summary['unmet'])} want(s) unmet (the channels that opened"
            f" {settled} their meters on the ledger); {balanced}"
        )
    else:
        verdict = "reconcile exactly" if summary["reconciled"] else "DO NOT reconcile"
        print(f"on-ledger balances and meters {verdict}; {balanced}")
    print("\nsigned records, anchored on the ledger (prove any with `mesh proof`):")
    for row in summary["records"]:
        print(
            f"  {row['holder']:<17} {row['origin']:<4} {row['stream']:<19} {row['records']:>5}"
            f" records, anchored {row['anchored']}, unanchored {row['unanchored']}"
        )


DEMO_DESCRIPTION = """\
A small factory on this machine, on the embedded defaults: a fresh LocalLedger in a
new data dir and four agents (CNC mill, vibration sensor, quality lab, robot cell),
each its own `mesh run` process under one fresh random site (`demo-<8 hex>`), so
demos running side by side never see each other. They find each other by mDNS on
loopback, authenticate, and the robot cell buys spindle time, a vibration feed and
inspections through payment channels while a live view shows peers, sessions and
satoshis. Then the buyer stops, every channel closes cooperatively, a block is mined,
every want is listed with its state and the on-ledger balances are reconciled with
every meter to the satoshi.

exit status: 0 when every want is done and balances, meters and the ledger
reconcile; 1 otherwise (an unmet want is named on an `UNMET:` line)."""


def cmd_demo(args: argparse.Namespace) -> int:
    """Entry point of `mesh demo`."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    without = tuple(args.without or ())
    return run_demo(args.seconds, args.keep, args.json, args.data_dir, args.log_level, without)


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
        help="run at most this long (default 30); it ends earlier once every want is done",
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the data dir afterwards (printed at the start)"
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary (site, data dir, agents, wants, channels, meters) on "
        "stdout; progress goes to stderr",
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        help="put the ledger and the agents' data in this new directory (kept afterwards)",
    )
    demo.add_argument(
        "--without",
        action="append",
        choices=PROVIDERS,
        metavar="AGENT",
        help="run the factory without this machine (repeatable; one of "
        f"{', '.join(PROVIDERS)}): the others still trade and settle, the robot cell's "
        "want of it goes unmet and the demo says so and exits 1",
    )
    demo.set_defaults(func=cmd_demo)
