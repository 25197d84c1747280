"""Channel records on disk: what is saved is what a fresh process loads, on every path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mesh.channel import Record, State
from mesh.channel.store import ChannelStore
from mesh.store import Store, StoreError

from .helpers import make_pair


def reloaded(path: Path) -> list[tuple[Record, str]]:
    with Store(path) as store:
        return [(s.record, s.service) for s in ChannelStore(store).load(include_final=True)]


def test_payments_acks_and_state_changes_all_reach_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    _, payee, _, _ = make_pair()  # another channel (one end of each: ids are shared)
    with Store(path) as store:
        channels = ChannelStore(store)
        channels.save([(payer.record(), "tool-time"), (payee.record(), "tool-time")])
        for _ in range(3):  # payments only: the narrow update
            payer.pay(7)
            channels.save([(payer.record(), "tool-time")])
            assert reloaded(path)[0] == (payer.record(), "tool-time")
        record = payer.record()
        payer.accept_ack(record.seq, record.total)  # an ack only: narrow too
        channels.save([(payer.record(), "tool-time")])
        assert reloaded(path)[0] == (payer.record(), "tool-time")
        payer.event("close")  # a state change: the whole row
        channels.save([(payer.record(), "tool-time"), (payee.record(), "other")])
    assert payer.state is State.CLOSING
    assert reloaded(path) == [(payer.record(), "tool-time"), (payee.record(), "other")]


def test_after_a_failed_commit_the_next_save_writes_the_whole_row(tmp_path: Path) -> None:
    """A rolled-back commit must not leave the store believing its row is on disk:
    the next save, a payment, would then write only the payment columns and lose the
    state change that never got there."""
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    funded = replace(payer.record(), state=State.FUNDED)
    opened = replace(funded, state=State.OPEN)
    with Store(path, busy_timeout=0.05) as store:
        channels = ChannelStore(store)
        channels.save([(funded, "svc")])
        # Someone else holds the write lock: our commit fails.
        with Store(path) as other, other.write(), pytest.raises(StoreError, match="busy"):
            channels.save([(opened, "svc")])
        assert reloaded(path) == [(funded, "svc")]
        paid = opened.with_payment(1, 10, b"\x30" * 70)
        channels.save([(paid, "svc")])
    assert reloaded(path) == [(paid, "svc")]
