"""kill -9 at every step of an escrowed work order, for each of its three parties.

One site per victim role (buyer, machine, inspector) makes two parts -- one the
inspector passes, one it fails -- while the victim kills itself (`tests.workflow.killer`)
at one named step, is restarted from its data dir armed for the next step, and so on
down its chain; the other two keep running, as in a factory. Then every escrow must
end where its verdict says -- the machine's payout on PASS, the buyer's on FAIL or with
no verdict -- in the wallet of its rightful owner, with no coin of the buyer left
reserved and the ledger balanced. Each chain prints the steps that fired.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mesh.chain.base import OutputState
from mesh.chain.ledger import LocalLedger
from mesh.chain.wallet import Wallet
from mesh.store import Store
from tests.discovery.agents import RunningAgent
from tests.workflow.three import FEE, PAYMENT, Three, escrow_flows, parts, three_agents

CHAINS: dict[str, list[str]] = {
    "buyer": [
        "save:buyer:offered:before",  # the funding built, its coins reserved, no row yet
        "save:buyer:offered:after",  # the offer saved, not yet sent: abandoned at restart
        "save:buyer:accepted:after",  # the refund signature kept, the funding not out
        "broadcast:1:after",  # the funding out, not yet marked funded
        "save:buyer:funded:after",  # funded, machine and inspector not yet told
        "save:buyer:passed:after",  # a PASS in hand, the release not yet seen
        "save:buyer:failed:after",  # a FAIL in hand, the return not yet out
        "broadcast:1:after",  # the return out, not yet seen settled
    ],
    "machine": [
        "save:machine:accepted:after",  # the refund signed and saved, never sent
        "save:machine:funded:after",  # the funding seen
        "save:machine:passed:after",  # a PASS and its release saved, not broadcast
    ],
    "inspector": [
        "save:inspector:funded:after",  # the escrow known
        "save:inspector:decided:after",  # measured and decided, no record logged
        "save:inspector:passed:before",  # the verdict record logged, not saved or sent
        "save:inspector:failed:after",  # the FAIL saved, not sent
    ],
}
QUICK = {"buyer": CHAINS["buyer"]}
"""What CI runs (-m "not slow": the buyer's, whose coins are at stake at every step);
the machine's and the inspector's chains run with -m slow (~50 s and ~25 s)."""
KILLER = "tests.workflow.killer"


def _program(point: str | None) -> tuple[str, ...]:
    return (KILLER, point, "--") if point else ("agents.cli",)


def _orders(agent: RunningAgent) -> list[dict[str, Any]]:
    if agent.proc.poll() is not None:
        return []
    status = agent.status()
    orders = (status or {}).get("work_orders") or {"orders": []}
    return [o for o in orders["orders"] if o["role"] == "buyer"]


def _run_chain(tmp_path: Path, role: str, chain: list[str]) -> tuple[Three, list[str]]:
    """Make two parts with `role` killed down `chain`; what fired, in order."""
    good, bad = parts(1, 1)
    fired: list[str] = []
    points = list(chain)
    first = {role: _program(points[0] if points else None)}
    with three_agents(
        tmp_path, [good, bad], refund_blocks=60, block_seconds=0.5, programs=first
    ) as site:
        victim: RunningAgent = getattr(site, role)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if victim.proc.poll() is not None:  # it killed itself: up again, next step armed
                killed = victim.log_lines(r"^KILLING ")
                assert victim.proc.returncode == -9 and killed, victim.log_lines(".")[-20:]
                fired.append(points.pop(0))
                victim.log.write(b"--- restarted ---\n")
                victim.start(_program(points[0] if points else None))
            orders = _orders(site.buyer)
            if len([o for o in orders if o["proven"]]) == 2:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"{role}: not settled after {fired}: {_orders(site.buyer)}")
        print(f"\nMEASURE work-order kill -9 of the {role}: fired {fired}, not reached {points}")
        _check(site, good, bad)
        return site, fired


def _check(site: Three, good: str, bad: str) -> None:
    """Every escrow went where its verdict says, into its owner's wallet."""
    orders = {o["part"]: o for o in _orders(site.buyer) if o["state"] != "abandoned"}
    assert set(orders) == {good, bad}, orders
    assert orders[good]["state"] == "released" and orders[good]["verdict"] == "PASS"
    assert orders[bad]["state"] in ("returned", "refunded"), orders[bad]
    flows = {f["part"]: f for f in escrow_flows(site.ledger, list(orders.values()))}
    owners = {good: ("machine", orders[good]["machine_payout"]),
              bad: ("buyer", orders[bad]["buyer_payout"])}  # fmt: skip
    for agent in (site.buyer, site.machine):  # their wallets, read after they stopped
        agent.stop()
    for part, (owner, payout) in owners.items():
        flow = flows[part]
        assert flow["held"] == PAYMENT and flow["paid"] == PAYMENT - FEE, flow
        assert flow["to"].hex() == payout, (part, owner)
        agent: RunningAgent = getattr(site, owner)
        with Store(agent.data / "agent.db") as store:
            wallet = Wallet(store, site.ids[owner])
            # The payout's key is the owner's (its wallet takes the coin at its next sync).
            assert store.query("SELECT 1 FROM wallet_keys WHERE script = ?", (flow["to"],)), (
                f"{part}: the {owner}'s wallet does not hold its payout key"
            )
            if owner == "buyer":
                assert wallet.balance().reserved == 0  # nothing of the buyer stuck
    with LocalLedger.open(site.ledger) as ledger:
        assert ledger.balance().balanced
        for order in orders.values():
            assert ledger.output(order["funding_txid"], 0).state is OutputState.SPENT


@pytest.mark.parametrize("role", sorted(QUICK))
def test_a_kill_at_each_escrow_step_loses_no_satoshi(tmp_path: Path, role: str) -> None:
    _, fired = _run_chain(tmp_path, role, QUICK[role])
    assert fired, "no step fired"


@pytest.mark.slow
@pytest.mark.parametrize("role", sorted(CHAINS))
def test_the_whole_kill_matrix_of_the_escrow(tmp_path: Path, role: str) -> None:
    _, fired = _run_chain(tmp_path, role, CHAINS[role])
    assert len(fired) >= len(CHAINS[role]) - 1, fired


FAILS = {
    "buyer": "fail:buyer:accepted:2,fail:buyer:funded:2,fail:buyer:passed:1,fail:buyer:failed:1",
    "machine": "fail:machine:accepted:1,fail:machine:funded:1,fail:machine:passed:2",
    "inspector": "fail:inspector:funded:1,fail:inspector:decided:2,fail:inspector:passed:1",
}

FAILS_QUICK = {
    "buyer": "fail:buyer:accepted:1,fail:buyer:funded:1,fail:buyer:failed:1",
    "machine": "fail:machine:passed:2",  # the retried save, then the release
}


@pytest.mark.parametrize("whole", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_failed_writes_at_each_escrow_step_stop_nothing_and_lose_nothing(
    tmp_path: Path, whole: bool
) -> None:
    """Every party's saves fail (as on a full disk) at several steps: each stays up, goes
    no further than what is saved -- a funding whose acceptance could not be saved is
    never broadcast -- and every escrow still ends with its rightful owner. (CI: a few
    of the buyer's and the machine's; -m slow: `FAILS`, every party's.)"""
    good, bad = parts(1, 1)
    fails = FAILS if whole else FAILS_QUICK
    programs = {role: (KILLER, points, "--") for role, points in fails.items()}
    with three_agents(
        tmp_path, [good, bad], refund_blocks=60, block_seconds=0.5, programs=programs
    ) as site:
        site.buyer.wait(
            lambda s: len([o for o in s["work_orders"]["orders"]
                           if o["role"] == "buyer" and o["proven"]]) == 2,
            120, "both parts settled and proven",
        )  # fmt: skip
        every = _orders(site.buyer)
        for role in fails:
            agent: RunningAgent = getattr(site, role)
            assert agent.proc.poll() is None, role  # up all along
            assert agent.log_lines("^FAILING "), role
            assert not agent.log_lines("Traceback"), agent.log_lines(".")[-30:]
        abandoned = [o for o in every if o["state"] == "abandoned"]
        assert abandoned  # the offers whose acceptance could not be saved
        with LocalLedger.open(site.ledger) as ledger:
            for order in abandoned:  # ... were never funded
                assert ledger.status(order["funding_txid"]).state.value == "unknown", order
        print(f"\nMEASURE work orders under failed writes: {len(abandoned)} offer(s) abandoned")
        _check(site, good, bad)
