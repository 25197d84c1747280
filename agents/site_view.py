"""What a local site (`mesh up`, `mesh demo`) shows, and how its run is judged.

Owns the live view, the reconciliation of every want, channel and meter with the
ledger, and the summary: every line is folded to the width of where it goes (80
columns unless that is a terminal). It reads the agents' stores, their status
answers and the ledger; it must never start, stop or fund an agent (agents/site.py
does that), so a run can always be judged from what it left behind.
(docs/ARCHITECTURE.md §6.2)
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agents.profile import WantSpec
from agents.site_work import print_work, unmet_work, work_orders
from mesh.anchoring import AnchorStore
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import parse_exact
from mesh.channel.state import Role
from mesh.channel.store import ChannelStore, StoredChannel
from mesh.store import Store

PIPE_WIDTH = 80
"""Columns of every line written anywhere but to a terminal (a log, a CI job)."""

Statuses = Mapping[str, dict[str, Any] | None]
"""Each agent's `status` answer, None while it did not answer."""

Say = Callable[..., None]
"""Where a summary's lines go (`Out.line`)."""


@dataclass(frozen=True)
class Roster:
    """Who is on the site and where its files are: all the view and the verdict read."""

    site: str
    root: Path
    ledger: Path
    names: tuple[str, ...]
    """Each agent's name on the site (its profile's file name), in starting order."""
    ids: Mapping[str, str]
    """Each agent's peer id."""
    wanted: Mapping[str, tuple[WantSpec, ...]]
    """Each agent's wants, as its profile states them: the verdict lists every one."""
    funded: Mapping[str, int]
    """The satoshis each agent was given at the start."""

    def data_dir(self, name: str) -> Path:
        """The agent's data dir (its store, key, log and control socket)."""
        return self.root / name

    def wants(self, statuses: Statuses) -> list[dict[str, Any]]:
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


class Out:
    """One output stream; every line written is folded to fit its width."""

    def __init__(self, stream: TextIO, width: int | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        terminal = shutil.get_terminal_size().columns if self.tty else PIPE_WIDTH
        self.width = width or terminal

    def line(self, text: str = "") -> None:
        """Write `text`; a line too long goes on, indented, on the next ones."""
        for line in text.split("\n"):
            for part in fold(line.rstrip(), self.width):
                print(part, file=self.stream, flush=True)

    def screen(self, lines: list[str]) -> None:
        """Redraw a terminal with `lines`, each cut to its width (the live view)."""
        shown = [cut(line, self.width) for line in lines]
        print("\x1b[2J\x1b[H" + "\n".join(shown), file=self.stream, flush=True)


def fold(text: str, width: int) -> list[str]:
    """`text` as lines of at most `width` columns (a word longer than that, such as a
    long path, is broken)."""
    if len(text) <= width:
        return [text]
    indent = " " * (len(text) - len(text.lstrip()) + 4)
    return textwrap.wrap(
        text, width, subsequent_indent=indent, break_on_hyphens=False, break_long_words=True
    )


def cut(text: str, width: int) -> str:
    """`text`, shortened with an ellipsis to at most `width` columns."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _column(values: list[str], most: int) -> int:
    return min(max((len(v) for v in values), default=0), most)


# ------------------------------------------------------------------ the live view


def live_lines(label: str, roster: Roster, statuses: Statuses, started: float) -> list[str]:
    """The terminal's live view: each agent's peers, channels and satoshis, its wants."""
    lines = [f"m2mesh {label} ({roster.site}) — {time.monotonic() - started:5.1f} s"]
    width = _column(list(roster.names), 24)
    for name in roster.names:
        st = statuses.get(name)
        shown = cut(name, width)
        if st is None:
            lines.append(f"  {shown:<{width}}  starting…")
            continue
        earned, spent = _flows(st["channels"])
        lines.append(
            f"  {shown:<{width}}  peers {len(st['peers'])}  sessions {len(st['sessions'])}"
            f"  channels {len(st['channels'])}  earned {earned:>6}  spent {spent:>6}"
        )
        for want in st["wants"]:
            lines.append(
                f"      buys {want['service']:<13} {want['delivered']:>4}/{want['units']:<4}"
                f" paid {want['paid']:>5} ({want['state']})"
            )
    return lines


def progress_line(roster: Roster, statuses: Statuses, started: float) -> str:
    """The live view in one line for a log: the site as a whole, under 80 columns."""
    up = [st for st in statuses.values() if st is not None]
    sessions = {frozenset((st["peer_id"], peer)) for st in up for peer in st["sessions"]}
    channels = {ch["channel_id"] for st in up for ch in st["channels"]}
    paid = sum(_flows(st["channels"])[1] for st in up)
    wants = roster.wants(statuses)
    done = sum(w["state"] == "done" for w in wants)
    return (
        f"{time.monotonic() - started:5.1f} s  agents up {len(up)}/{len(roster.names)}"
        f"  sessions {len(sessions)}  channels {len(channels)}  paid {paid} sat"
        f"  wants done {done}/{len(wants)}"
    )


def _flows(channels: list[dict[str, Any]]) -> tuple[int, int]:
    """What an agent's channels paid it, and what it paid through them."""
    earned = sum(ch["total"] for ch in channels if ch["role"] == Role.PAYEE.value)
    spent = sum(ch["total"] for ch in channels if ch["role"] == Role.PAYER.value)
    return earned, spent


# ------------------------------------------------------------------ the verdict


def unmet(wants: list[dict[str, Any]]) -> list[str]:
    """One line per want that is not done, naming the agent and the want."""
    return [
        f"{w['agent']} wants {w['service']}: delivered {w['delivered']}/{w['units']} ({w['state']})"
        for w in wants
        if w["state"] != "done"
    ]


Holder = tuple[str, StoredChannel]
"""One end of a channel: the site's agent that stores it, and its stored record."""


def reconcile(roster: Roster, final: Statuses) -> dict[str, Any]:
    """Mine a block and check every want, channel and meter against the ledger.

    A channel's two ends are the site's agents that store it as payer and as payee; one
    whose other end is no agent of this site (another site's, say) never reconciles.
    """
    ends: dict[bytes, dict[Role, Holder]] = {}
    for name in roster.names:
        with Store(roster.data_dir(name) / "agent.db") as store:
            for item in ChannelStore(store).load(include_final=True):
                record = item.record
                ends.setdefault(record.terms.channel_id, {})[record.role] = (name, item)
    with LocalLedger.open(roster.ledger) as ledger:
        ledger.mine()
        channels = [
            _channel(roster, ledger, sides.get(Role.PAYER), sides.get(Role.PAYEE))
            for sides in ends.values()
        ]
        balance = ledger.balance()
        orders = work_orders(roster.names, roster.data_dir, ledger)
    meters: list[dict[str, Any]] = []
    for c in channels:
        if c["provider"] is not None:
            status = final.get(c["provider"]) or {"meters": []}
            meter = next((m for m in status["meters"] if m["channel_id"] == c["channel_id"]), None)
            if meter is not None:
                c["delivered_value"] = meter["delivered_units"] * meter["price"]
                meters.append({"provider": c["provider"], "service": c["service"], **meter})
    streams: list[dict[str, Any]] = []
    for name in roster.names:
        with Store(roster.data_dir(name) / "agent.db") as store:
            for summary_row in AnchorStore(store).streams():
                streams.append({**summary_row.to_json(), "holder": name})
    wanted = any(roster.wanted.values())
    # Nothing bought where something was wanted fails; a site that wants nothing has
    # nothing to reconcile but its ledger.
    channels_ok = (bool(channels) or not wanted) and all(
        c["payer_agent"] is not None
        and c["provider"] is not None
        and c["state"] == "closed"
        and c["close_mined"]
        and c["payee_on_ledger"] == c["total"]
        and c["delivered_value"] == c["total"]
        for c in channels
    )
    wants = roster.wants(final)
    missing = unmet(wants) + unmet_work(final)
    why = mismatches(channels, orders)
    if not balance.balanced:
        why.append("the ledger does not balance")
    return {
        "site": roster.site,
        "data_dir": str(roster.root),
        "ledger": str(roster.ledger),
        "agents": [_agent(roster, name, channels) for name in roster.names],
        "wants": wants,
        "unmet": missing,
        "work_orders": orders,
        "channels": channels,
        "meters": meters,
        "channels_reconcile": channels_ok,
        "mismatches": why,
        "ledger_balanced": balance.balanced,
        "records": streams,
        # Every agent's own records are anchored and mined; copies a buyer keeps of a
        # producer's readings ("kept") are provable from the producer's batches.
        "all_records_anchored": bool(streams)
        and all(s["unanchored"] == 0 for s in streams if s["origin"] == "own"),
        # The verdict: every want met, and what was paid is what was delivered and
        # what the ledger holds.
        "reconciled": not missing
        and channels_ok
        and balance.balanced
        and all(o["ledger_ok"] for o in orders),
    }


def mismatches(channels: list[dict[str, Any]], orders: list[dict[str, Any]]) -> list[str]:
    """Why the channels and work orders do not reconcile, one line each (none: they do)."""
    lines: list[str] = []
    for c in channels:
        name = f"channel {c['channel_id'][:16]} ({c['service']}"
        name += f", {c['payer_agent'] or c['payer'][:16]} -> {c['provider'] or c['payee'][:16]})"
        if c["payer_agent"] is None or c["provider"] is None:
            lines.append(f"{name}: one end is no agent of this site")
        elif c["state"] != "closed" or not c["close_mined"]:
            lines.append(f"{name}: {c['state']}, close mined: {c['close_mined']}")
        elif not c["payee_on_ledger"] == c["total"] == c["delivered_value"]:
            lines.append(
                f"{name}: paid {c['total']} sat, the meter says {c['delivered_value']},"
                f" the ledger {c['payee_on_ledger']}"
            )
    for o in orders:
        if not o["ledger_ok"]:
            lines.append(f"work order of part {o['part']}: the ledger does not match its state")
    return lines


def _agent(roster: Roster, name: str, channels: list[dict[str, Any]]) -> dict[str, Any]:
    """One agent in the summary, with what its channels paid it and what it paid."""
    return {
        "name": name,
        "peer_id": roster.ids[name],
        "data_dir": str(roster.data_dir(name)),
        "funded": roster.funded[name],
        "earned": sum(c["total"] for c in channels if c["provider"] == name),
        "spent": sum(c["total"] for c in channels if c["payer_agent"] == name),
    }


def _channel(
    roster: Roster, ledger: LocalLedger, payer: Holder | None, payee: Holder | None
) -> dict[str, Any]:
    """One channel as its payee settled it (as its payer did when no agent of the site
    is the payee), with both ends' agents; `delivered_value` is the payee's meter's,
    later."""
    end = payee or payer
    assert end is not None
    item = end[1]
    record = item.record
    close = ledger.status(record.close_txid) if record.close_txid else None
    return {
        "channel_id": record.terms.channel_id.hex(),
        "payer": roster.ids[payer[0]] if payer else record.peer_id,
        "payer_agent": payer[0] if payer else None,
        "payee": roster.ids[payee[0]] if payee else record.peer_id,
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


def print_summary(summary: dict[str, Any], out: Out | None = None) -> None:
    """The human-readable end of a run: wants, channels, what each agent earned and
    spent, the verdict and the anchored records."""
    say = (out or Out(sys.stdout)).line
    wants, channels = summary["wants"], summary["channels"]
    service = _column([w["service"] for w in wants] + [c["service"] for c in channels], 16)
    service = max(service, len("service"))
    say()
    say(f"site {summary['site']}")
    say()
    _wants(say, wants, service)
    say()
    _channels(say, channels, service)
    say()
    if summary.get("work_orders"):
        print_work(say, summary["work_orders"])
        say()
    say("what each agent earned and spent through its channels (sat):")
    width = _column([a["name"] for a in summary["agents"]], 24)
    for agent in summary["agents"]:
        say(
            f"  {cut(agent['name'], width):<{width}}  earned {agent['earned']:>8}"
            f"  spent {agent['spent']:>8}"
        )
    say()
    for line in summary["unmet"]:
        say(f"UNMET: {line}")
    balanced = f"ledger balanced: {summary['ledger_balanced']}"
    if summary["unmet"]:
        match = "match" if summary["channels_reconcile"] else "DO NOT match"
        settled = f"the channels that opened {match} their meters on the ledger"
        say(
            f"not reconciled: {len(summary['unmet'])} unmet"
            f" ({settled if summary['channels'] else 'no channel opened'}); {balanced}"
        )
    else:
        verdict = "reconcile exactly" if summary["reconciled"] else "DO NOT reconcile"
        say(f"on-ledger balances and meters {verdict}; {balanced}")
    for line in summary["mismatches"]:
        say(f"MISMATCH: {line}")
    say()
    _records(say, summary["records"])


def _wants(say: Say, wants: list[dict[str, Any]], service: int) -> None:
    if not wants:
        say("no agent of this site wants anything (a profile's [[wants]])")
        return
    name = _column([w["agent"] for w in wants] + ["agent"], 24)
    say(f"{'agent':<{name}} {'wants':<{service}}  delivered   paid  state")
    for w in wants:
        say(
            f"{cut(w['agent'], name):<{name}} {cut(w['service'], service):<{service}}"
            f" {w['delivered']:>5}/{w['units']:<5} {w['paid']:>5}  {w['state']}"
        )


def _channels(say: Say, channels: list[dict[str, Any]], service: int) -> None:
    if not channels:
        say("no channel opened")
        return
    say(f"channel       {'service':<{service}}   paid  delivered  on ledger  closed")
    strays = False
    for c in channels:
        stray = c["payer_agent"] is None or c["provider"] is None
        strays = strays or stray
        say(
            f"{c['channel_id'][:12]}  {cut(c['service'], service):<{service}} {c['total']:>6}"
            f"  {c['delivered_value']!s:>9}  {c['payee_on_ledger']:>9}  {c['close_mined']!s:<5}"
            + (" *" if stray else "")
        )
    if strays:
        say("* its payer or its payee is no agent of this site")


def _records(say: Say, records: list[dict[str, Any]]) -> None:
    if not records:
        say("no signed records")
        return
    say("signed records, anchored on the ledger (prove any with `mesh proof`):")
    holder = _column([r["holder"] for r in records] + ["agent"], 20)
    stream = _column([r["stream"] for r in records] + ["stream"], 24)
    say(f"  {'agent':<{holder}} {'':<4} {'stream':<{stream}} records  unanchored  anchored")
    for row in records:
        spans = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in row["anchored"]) or "-"
        say(
            f"  {cut(row['holder'], holder):<{holder}} {row['origin']:<4}"
            f" {cut(row['stream'], stream):<{stream}} {row['records']:>7}"
            f"  {row['unanchored']:>10}  {spans}"
        )
