"""What `mesh status` says about each channel's money: signed against paid on chain,
and how long a payer's coins stay locked (`channel_summary`, `channel_line`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from agents.agent_cli import channel_line
from agents.profile import load_profile
from agents.runtime import Agent
from mesh.channel import Record, State
from mesh.channel.config import ChannelStatistics
from mesh.channel.settle import channel_summary
from mesh.identity import Identity, save_identity
from tests.channel.helpers import CAPACITY, EXPIRY, make_pair

ROOT = Path(__file__).resolve().parents[2]


def paid(amount: int) -> tuple[Record, Record]:
    """A payer's and a payee's record of an open channel paying `amount`."""
    payer, payee, _, _ = make_pair()
    record = payer.pay(amount)
    payee.accept_payment(record.seq, record.total, record.payer_sig)
    return payer.record(), payee.record()


def line(record: Record, height: int | None) -> str:
    return channel_line(channel_summary(record, "svc", height))


def test_a_payers_coins_are_locked_until_the_expiry_then_the_refund_is_due() -> None:
    payer, payee = paid(80)
    assert line(payer, EXPIRY - 12) == (
        f"open: locked until height {EXPIRY} (12 blocks), paid 80/{CAPACITY}"
    )
    closing = replace(payer, state=State.CLOSING)
    assert (
        line(closing, EXPIRY - 1) == f"closing: locked until height {EXPIRY} (1 block), 80 signed"
    )
    summary = channel_summary(closing, "svc", EXPIRY)
    assert (summary["locked_until"], summary["blocks_left"], summary["refund_due"]) == (
        None,
        None,
        True,
    )
    assert line(closing, EXPIRY) == f"closing: 80 signed, refund due (expiry {EXPIRY} reached)"
    assert line(closing, None) == "closing: 80 signed"  # the chain did not answer
    assert line(payee, EXPIRY - 12) == f"open: paid 80/{CAPACITY}"  # nothing of its own is locked


def test_a_settled_channel_shows_what_the_chain_paid_against_what_was_signed() -> None:
    payer, payee = paid(80)
    short = replace(payer, state=State.CLOSED, paid_on_chain=2)
    summary = channel_summary(short, "svc", 400)
    assert (summary["signed_total"], summary["paid_on_chain"], summary["total"]) == (80, 2, 80)
    assert line(short, 400) == "closed: chain paid 2 of 80 signed"
    assert line(replace(payee, state=State.REFUNDED, paid_on_chain=0), 400) == (
        "refunded: chain paid 0 of 80 signed"
    )
    legacy = replace(payer, state=State.CLOSED)  # settled before the chain's word was kept
    assert line(legacy, 400) == "closed: chain payment not known, 80 signed"


class Manager:
    """What `Agent.control("status")` asks of the channel manager."""

    def __init__(self, records: list[Record]) -> None:
        self._records = records

    async def chain_height(self) -> int | None:
        return EXPIRY - 12

    def summaries(self, height: int | None) -> list[dict[str, Any]]:
        return [channel_summary(r, "svc", height) for r in self._records]

    def statistics(self) -> ChannelStatistics:
        return ChannelStatistics(len(self._records), 0, 0, 0.0, 0, 0, 0, 0, 0)


async def test_agent_status_carries_the_height_and_each_channels_accounting(
    tmp_path: Path,
) -> None:
    save_identity(Identity.generate(), tmp_path / "identity.key")
    profile = load_profile(ROOT / "profiles" / "cnc-mill.toml", data_dir=tmp_path)
    agent = Agent(profile, tmp_path, tmp_path / "ledger.db")
    payer, _ = paid(80)
    agent.manager = Manager([replace(payer, state=State.CLOSING)])  # type: ignore[assignment]
    status = await agent.control({"cmd": "status"})
    assert status["height"] == EXPIRY - 12
    [channel] = status["channels"]
    assert (channel["locked_until"], channel["blocks_left"], channel["signed_total"]) == (
        EXPIRY,
        12,
        80,
    )
    assert agent.status()["channels"][0]["locked_until"] is None  # no height, no lock shown


def test_a_refused_funding_says_so_and_when_the_refund_comes() -> None:
    payer, _ = paid(5)
    refused = replace(payer, state=State.REFUSED, refused="funding: missing-input")
    assert line(refused, EXPIRY - 3) == (
        f"refused: locked until height {EXPIRY} (3 blocks), the payee refused the funding"
        " (funding: missing-input)"
    )
