"""Channel records on disk: what is saved is what a fresh process loads, on every path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mesh.channel import Payer, Record, State
from mesh.channel.store import _COLUMNS, CHANNEL_SCHEMA, ChannelStore, _row
from mesh.store import Schema, Store, StoreError

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


def test_what_the_chain_paid_is_kept_beside_what_was_signed(tmp_path: Path) -> None:
    """`paid_on_chain` is a row change (not the payment hot path) and survives a reload;
    payments after it would not lose it."""
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store)
        payer.pay(80)
        channels.save([(payer.record(), "svc")])
        payer.accept_ack(payer.record().seq, payer.record().total)
        channels.save([(payer.record(), "svc")])  # (journal)
        payer.mark_closed("cd" * 32, 2)
        channels.save([(payer.record(), "svc")])
    [(record, _)] = reloaded(path)
    assert record == payer.record()
    assert (record.state, record.total, record.paid_on_chain) == (State.CLOSED, 80, 2)


def test_rows_settled_before_the_column_existed_say_what_is_known(tmp_path: Path) -> None:
    """A payee's close paid its total and a refund nothing; a payer's close may have
    paid less than it signed, so that stays unknown."""
    path = tmp_path / "agent.db"
    payer, payee, _, _ = make_pair()
    payer.pay(30)
    payee.accept_payment(*_latest(payer.record()))
    old = {
        "payee": _as(payee.record(), 1, State.CLOSED),
        "payer": _as(payer.record(), 2, State.CLOSED),
    }
    refunded = _as(payer.record(), 3, State.REFUNDED)
    with Store(path) as store:
        store.register(Schema("channels", CHANNEL_SCHEMA.migrations[:2]))
        columns = _COLUMNS.removesuffix(", paid_on_chain, refused")
        marks = ", ".join("?" * len(columns.split(",")))
        with store.write() as db:
            for record in (*old.values(), refunded):
                db.execute(
                    f"INSERT INTO channels ({columns}) VALUES ({marks})", _row(record, "s")[:-2]
                )
    paid = {r.terms.channel_id: r.paid_on_chain for r, _ in reloaded(path)}
    assert paid[old["payee"].terms.channel_id] == 30
    assert paid[old["payer"].terms.channel_id] is None
    assert paid[refunded.terms.channel_id] == 0


def test_a_refused_funding_and_its_reason_survive_a_reload(tmp_path: Path) -> None:
    """`refused` is a row change; rows stored before the column existed have none."""
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    before = _as(payer.record(), 1, State.FUNDED)
    with Store(path) as store:
        store.register(Schema("channels", CHANNEL_SCHEMA.migrations[:3]))
        columns = _COLUMNS.removesuffix(", refused")
        marks = ", ".join("?" * len(columns.split(",")))
        with store.write() as db:
            db.execute(f"INSERT INTO channels ({columns}) VALUES ({marks})", _row(before, "s")[:-1])
    [(record, _)] = reloaded(path)
    assert record == before and record.refused == ""
    funded = Payer(record, payer._key)
    with Store(path) as store:
        channels = ChannelStore(store)
        channels.save([(funded.refuse_funding("funding: rule=missing-input"), "s")])
        channels.close()
    [(record, _)] = reloaded(path)
    assert record == funded.record()
    assert (record.state, record.refused) == (State.REFUSED, "funding: rule=missing-input")


def _latest(record: Record) -> tuple[int, int, bytes]:
    return record.seq, record.total, record.payer_sig


def _as(record: Record, n: int, state: State) -> Record:
    """`record` as channel number `n` (one store holds one end of each id) in `state`."""
    terms = replace(record.terms, channel_id=n.to_bytes(32, "big"))
    return replace(record, terms=terms, state=state, close_txid="aa" * 32)
