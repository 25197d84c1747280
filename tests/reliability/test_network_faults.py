"""Network faults between two hosts (network namespaces on a bridge) during payments.

The provider runs in host 1, buyers in host 2 (169.254.77.x, built and torn down by
the test with the discovery tests' `NetnsLan`); both use one ledger file, which is
how a site's chain backend stays reachable while the two machines cannot see each
other. Faults are made by taking host 2's switch port down.

* A cut mid-stream, longer than the silence that ends a session, then restored:
  both sides drop the session, the buyer redials, the channel manager resends the
  latest payment, and the *same* channel carries on from the last acknowledged seq
  to the end -- every payment paid once, the close paying exactly what was signed.
* A partition that outlasts the channels' expiry: the payee's watcher closes the
  channel that paid it (with the latest state it holds, at least everything it
  acknowledged) before the expiry; the payer's refund of that channel is refused
  as a double spend and the payer records it closed; a channel that never paid is
  refunded to the payer after the expiry.

Skipped unless root with `ip` (like the discovery namespace tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agents.channels import ChannelConfig
from mesh.chain.ledger import LocalLedger
from mesh.channel import State
from tests.discovery.helpers import (
    AgentProcess,
    NetnsLan,
    agents_running,
    netns_lan,
    netns_unavailable,
)
from tests.reliability.invariants import acked_of, check_channel, check_ledger, stored_records
from tests.reliability.procs import command, event, events, new_ledger, stop

_why_not = netns_unavailable()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")

PORT = 7740
FAST = ("--heartbeat", 0.3, "--dead-after", 1.5, "--open-timeout", 10, "--timeout", 60)
MARGIN = ChannelConfig().close_margin_blocks


@pytest.fixture
def lan() -> Iterator[NetnsLan]:
    """Two hosts and a switch, removed whatever happens."""
    with netns_lan(2, prefix=f"m2r{os.getpid()}") as lan:
        yield lan


def mailbox(lan: NetnsLan, host: int, port: int = PORT) -> str:
    return f"tcp://{lan.address(host)}:{port}"


async def cut_and_restore(
    tmp_path: Path, lan: NetnsLan, *, payments: int, rate: float, cut: float
) -> dict[str, object]:
    """Stream, cut host 2's cable for `cut` seconds mid-stream, restore; check all."""
    ledger = new_ledger(tmp_path / "ledger.db")
    s_dir, b_dir = tmp_path / "payee", tmp_path / "payer"
    async with agents_running() as start:
        provider = await start(
            "provider",
            command("provider", "--data", s_dir, "--ledger", ledger, "--listen",
                    mailbox(lan, 1), *FAST),
            netns=lan.hosts[0],
        )  # fmt: skip
        hello = await event(provider, "ready")
        buyer = await start(
            "buyer",
            command("buyer", "--data", b_dir, "--ledger", ledger, "--listen",
                    mailbox(lan, 2, 0), "--connect", mailbox(lan, 1), "--peer",
                    hello["peer_id"], *FAST, "--payments", payments, "--rate", rate,
                    "--amount", 2, "--close"),
            netns=lan.hosts[1],
        )  # fmt: skip
        await event(buyer, "opened", 60)
        await buyer.wait_for(lambda b: len(events(b, "progress")) >= 2, 60)
        before = events(buyer, "progress")[-1]
        lan.set_link(2, up=False)
        await trio.sleep(cut)
        during = events(buyer, "progress")[-1]
        lan.set_link(2, up=True)
        closed = await event(buyer, "closed", payments / rate + 90)
        acked = events(buyer, "acked")[0]
        report = await stop(provider, "stats")
    changes = [e["change"] for e in events(buyer, "session")]
    progress = [(e["seq"], e["acked_seq"]) for e in events(buyer, "progress")]
    # The session really went down and came back during the stream.
    assert changes.count("down") >= 1 and changes.count("up") >= 2, changes
    assert report["node"]["handshakes_completed"] >= 2
    assert before["acked"] > 0 and during["seq"] < payments
    # One channel, continued: seqs and acks only grow, and end at the last payment.
    assert progress == sorted(progress)
    assert acked["seq"] == acked["acked_seq"] == payments
    assert acked["total"] == acked["acked_total"] == 2 * payments
    payer, payee = stored_records(b_dir), stored_records(s_dir)
    assert len(payer) == len(payee) == 1
    [cid] = payer
    assert payee[cid].seq == payments
    # Nobody charged twice: the close pays exactly the signed total, once.
    assert closed["state"] == "closed" and closed["total"] == 2 * payments
    assert report["paid"][cid.hex()] == 2 * payments
    with LocalLedger.open(ledger) as chain:
        chain.mine()
    facts = check_ledger(ledger)
    settled = check_channel(facts, payer[cid], payee[cid], acked_bounds=acked_of(payer[cid]))
    assert settled.outcome == "closed" and settled.payee_total == 2 * payments
    return {
        "cut_seconds": cut,
        "sessions": changes,
        "acked_before_cut": before["acked"],
        "payments": payments,
        "p99_ms": acked.get("p99_ms"),
        "max_ms": acked.get("max_ms"),
    }


async def test_cut_cable_mid_stream_then_restore(tmp_path: Path, lan: NetnsLan) -> None:
    """A 3 s cut (sessions die after 1.5 s of silence) in a 2 400-payment stream: the
    session re-establishes and the same channel finishes, each payment paid once."""
    print(await cut_and_restore(tmp_path, lan, payments=2_400, rate=400, cut=3.0))


@pytest.mark.slow
async def test_repeated_cuts_slow(tmp_path: Path, lan: NetnsLan) -> None:
    """Slow: a longer stream, cut for 8 s (sessions and redials time out repeatedly)."""
    print(await cut_and_restore(tmp_path, lan, payments=12_000, rate=400, cut=8.0))


async def test_partition_beyond_expiry_settles_by_watcher_and_refund(
    tmp_path: Path, lan: NetnsLan
) -> None:
    """Partition mid-stream until past the expiry: the payee's watcher closes the paying
    channel in time (>= everything acknowledged, <= everything signed), the payer's
    refund of it is refused and it records the close; the channel that never paid is
    refunded; the ledger balances."""
    ledger = new_ledger(tmp_path / "ledger.db")
    s_dir = tmp_path / "payee"
    buyers = {"paying": tmp_path / "paying", "idle": tmp_path / "idle"}
    async with agents_running() as start:
        provider = await start(
            "provider",
            command("provider", "--data", s_dir, "--ledger", ledger, "--listen",
                    mailbox(lan, 1), *FAST),
            netns=lan.hosts[0],
        )  # fmt: skip
        hello = await event(provider, "ready")
        procs: dict[str, AgentProcess] = {}
        for name, data in buyers.items():
            count = 100_000 if name == "paying" else 0
            procs[name] = await start(
                name,
                command("buyer", "--data", data, "--ledger", ledger, "--listen",
                        mailbox(lan, 2, 0), "--connect", mailbox(lan, 1), "--peer",
                        hello["peer_id"], *FAST, "--payments", count, "--rate", 300,
                        "--lifetime", 8, "--hold"),
                netns=lan.hosts[1],
            )  # fmt: skip
            await event(procs[name], "opened", 60)
        await procs["paying"].wait_for(lambda b: len(events(b, "progress")) >= 2, 60)
        lan.set_link(2, up=False)  # for good
        expiry = max(r.terms.expiry_height for r in stored_records(s_dir).values())
        await mine_to(ledger, expiry - MARGIN)
        await wait_state(s_dir, lambda r: r.total == 0 or r.state is State.CLOSED)
        await mine_to(ledger, expiry + 1)
        for data in buyers.values():
            await wait_state(data, lambda r: r.state in (State.CLOSED, State.REFUNDED))
        finals = {name: await stop(proc, "final") for name, proc in procs.items()}
        await stop(provider, "stats")
    payee = stored_records(s_dir)
    facts = check_ledger(ledger)
    outcomes = {}
    for name, data in buyers.items():
        [(cid, payer)] = stored_records(data).items()
        settled = check_channel(
            facts, payer, payee.get(cid), acked_bounds=acked_of(payer, payee.get(cid))
        )
        outcomes[name] = (settled.outcome, settled.payee_total, payer.total)
    assert outcomes["idle"][0] == "refunded"
    assert outcomes["paying"][0] == "closed"
    total, signed = outcomes["paying"][1], outcomes["paying"][2]
    assert 0 < total <= signed
    print({"outcomes": outcomes, "finals": {k: v["records"] for k, v in finals.items()}})


async def mine_to(ledger: Path, height: int) -> None:
    with LocalLedger.open(ledger) as chain:
        if chain.height() < height:
            chain.mine(height - chain.height())


async def wait_state(data: Path, done: object, timeout: float = 15) -> None:
    """Poll an agent's store until every channel satisfies `done(record)`."""
    with trio.fail_after(timeout):
        while not all(done(r) for r in stored_records(data).values()):  # type: ignore[operator]
            await trio.sleep(0.1)
