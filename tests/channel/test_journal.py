"""The payment journal: what was appended is what a fresh process reads, whatever
happened to the file's tail, and the table and journal merge without going back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mesh.channel import Record, State
from mesh.channel.journal import RECORD_SIZE, SIG_MAX, Hot, Journal, encode_record, read
from mesh.channel.store import ChannelStore, journal_path
from mesh.store import Store, StoreError

from .helpers import make_pair

CID = b"\x01" * 32
OTHER = b"\x02" * 32


def hot(seq: int, acked: int = 0) -> Hot:
    return Hot(seq, seq * 10, bytes([seq % 256]) * 71, acked, acked * 10)


def test_the_last_record_of_each_channel_wins(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = Journal(path, sync=False)
    journal.append([(CID, hot(1)), (OTHER, hot(5))])
    journal.append([(CID, hot(2, acked=1))])
    assert journal.size() == 3 * RECORD_SIZE == path.stat().st_size
    journal.close()
    assert read(path) == {CID: hot(2, acked=1), OTHER: hot(5)}
    assert read(tmp_path / "absent") == {}


@pytest.mark.parametrize("cut", [1, RECORD_SIZE // 2, RECORD_SIZE - 1])
def test_a_torn_tail_is_ignored_then_cut_before_the_next_append(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "j"
    path.write_bytes(encode_record(CID, hot(1)) + encode_record(CID, hot(2))[:cut])
    assert read(path) == {CID: hot(1)}
    journal = Journal(path, sync=True)
    journal.append([(CID, hot(3))])  # aligned after the last whole record
    journal.close()
    assert path.stat().st_size == 2 * RECORD_SIZE
    assert read(path) == {CID: hot(3)}


def test_reading_stops_at_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "j"
    good, bad, later = (encode_record(CID, hot(n)) for n in (1, 2, 3))
    flipped = bytes([bad[40] ^ 1])
    path.write_bytes(good + bad[:40] + flipped + bad[41:] + later)
    assert read(path) == {CID: hot(1)}  # nothing after the first bad record counts


def test_values_no_record_can_hold_are_refused() -> None:
    assert hot(1).fits()
    assert not replace(hot(1), payer_sig=b"\x30" * (SIG_MAX + 1)).fits()
    assert not replace(hot(1), total=2**64).fits()


def test_merging_takes_only_what_is_newer() -> None:
    payer, _, _, _ = make_pair()
    record = replace(payer.record(), seq=5, total=50, payer_sig=b"s5", acked_seq=4, acked_total=40)
    assert Hot(3, 30, b"s3", 2, 20).merged_into(record) == record  # older: a replay
    newer_pay = Hot(6, 60, b"s6", 1, 10).merged_into(record)
    assert (newer_pay.seq, newer_pay.total, newer_pay.payer_sig) == (6, 60, b"s6")
    assert (newer_pay.acked_seq, newer_pay.acked_total) == (4, 40)
    newer_ack = Hot(5, 50, b"s5", 5, 50).merged_into(record)
    assert newer_ack == replace(record, acked_seq=5, acked_total=50)


def stored(path: Path) -> list[Record]:
    with Store(path) as store:
        return [s.record for s in ChannelStore(store).load(include_final=True)]


def table_only(path: Path) -> list[Record]:
    """What the table alone holds (the journal set aside)."""
    journal = journal_path(path)
    if not journal.exists():
        return stored(path)
    aside = journal.with_suffix(".aside")
    journal.rename(aside)
    try:
        return stored(path)
    finally:
        aside.rename(journal)


def test_payments_go_to_the_journal_and_a_reload_sees_them(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store)
        channels.save([(payer.record(), "svc")])
        opened = payer.record()
        for _ in range(5):
            payer.pay(3)
            channels.save([(payer.record(), "svc")])
        assert stored(path) == [payer.record()]  # table and journal, merged
        assert table_only(path) == [opened]  # the payments are in the journal only
        assert read(journal_path(path))[opened.terms.channel_id].total == 15
        payer.event("close")  # a state change goes to the table, whole
        channels.save([(payer.record(), "svc")])
        channels.close()
    assert table_only(path) == [payer.record()] == stored(path)
    assert payer.state is State.CLOSING


def test_a_checkpoint_folds_the_journal_into_the_table(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    _, payee, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store, checkpoint_bytes=3 * RECORD_SIZE)
        channels.save([(payer.record(), "a"), (payee.record(), "b")])
        for _ in range(3):  # three journal records: the next save checkpoints
            payer.pay(1)
            channels.save([(payer.record(), "a")])
        assert journal_path(path).stat().st_size == 3 * RECORD_SIZE
        payer.pay(1)
        channels.save([(payer.record(), "a")])
        assert journal_path(path).stat().st_size == 0
        assert table_only(path) == [payer.record(), payee.record()]
        payer.pay(1)  # and the journal takes the next payments again
        channels.save([(payer.record(), "a")])
        channels.close()
    assert journal_path(path).stat().st_size == RECORD_SIZE
    assert stored(path) == [payer.record(), payee.record()]


def test_a_journal_already_folded_in_changes_nothing(tmp_path: Path) -> None:
    """A crash between a checkpoint's commit and the journal's truncation leaves old
    records behind; replaying them must not take a channel back."""
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store, checkpoint_bytes=2 * RECORD_SIZE)
        channels.save([(payer.record(), "a")])
        for _ in range(2):
            payer.pay(1)
            channels.save([(payer.record(), "a")])
        stale = journal_path(path).read_bytes()
        payer.pay(1)
        channels.save([(payer.record(), "a")])  # the checkpoint
        channels.close()
    journal_path(path).write_bytes(stale)
    assert stored(path) == [payer.record()]


def test_a_signature_too_long_for_the_journal_goes_to_the_table(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store)
        channels.save([(payer.record(), "a")])
        odd = payer.record().with_payment(1, 1, b"\x30" * (SIG_MAX + 2))
        channels.save([(odd, "a")])
        channels.close()
    assert not journal_path(path).exists()
    assert stored(path) == [odd]


def test_a_journal_that_cannot_be_written_fails_the_save(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    payer, _, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store)
        channels.save([(payer.record(), "a")])
        journal_path(path).mkdir()  # where the file should go: open() fails
        payer.pay(1)
        with pytest.raises(StoreError, match="cannot append"):
            channels.save([(payer.record(), "a")])
        journal_path(path).rmdir()
        channels.save([(payer.record(), "a")])  # nothing was taken as written
        channels.close()
    assert stored(path) == [payer.record()]


def test_a_checkpoint_folds_in_what_an_earlier_run_left_in_the_journal(tmp_path: Path) -> None:
    """A run that stopped before its checkpoint leaves payments in the journal only; the
    next run's checkpoint must fold them in before it empties the file, even for a
    channel that run never writes (an idle payee's channel, say)."""
    path = tmp_path / "agent.db"
    idle, _, _, _ = make_pair()
    busy, _, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store, checkpoint_bytes=3 * RECORD_SIZE)
        channels.save([(idle.record(), "a"), (busy.record(), "b")])
        for _ in range(2):
            idle.pay(5)
            channels.save([(idle.record(), "a")])
        channels.close()
    with Store(path) as store:
        channels = ChannelStore(store, checkpoint_bytes=3 * RECORD_SIZE)
        for _ in range(3):  # the second of these checkpoints
            busy.pay(1)
            channels.save([(busy.record(), "b")])
        channels.close()
    assert table_only(path) == stored(path) == [idle.record(), busy.record()]
    assert idle.record().total == 10


def test_a_checkpoint_folds_in_a_forgotten_channels_journaled_payments(tmp_path: Path) -> None:
    """A channel the store was told to forget (a final channel the manager released)
    whose latest payment or ack went to the journal: the next checkpoint folds it in."""
    path = tmp_path / "agent.db"
    gone, _, _, _ = make_pair()
    busy, _, _, _ = make_pair()
    with Store(path) as store:
        channels = ChannelStore(store, checkpoint_bytes=3 * RECORD_SIZE)
        channels.save([(gone.record(), "a"), (busy.record(), "b")])
        gone.pay(4)
        channels.save([(gone.record(), "a")])  # (journal)
        channels.forget_written(gone.terms.channel_id)
        for _ in range(3):  # the third of these checkpoints
            busy.pay(1)
            channels.save([(busy.record(), "b")])
        channels.close()
    assert journal_path(path).stat().st_size == 0
    assert table_only(path) == [gone.record(), busy.record()]
