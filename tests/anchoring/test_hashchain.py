"""Hash chains: the writer links and signs; the audit names gaps, reorders, duplicates, forks."""

from __future__ import annotations

import itertools

from mesh.anchoring.hashchain import Finding, Head, StreamWriter, audit
from mesh.anchoring.record import GENESIS, Record, SignedRecord, sign_record
from tests.anchoring.helpers import BUYER, PRODUCER

AGENT = PRODUCER.public_key


def _stream(n: int, stream: str = "vibration") -> list[SignedRecord]:
    writer = StreamWriter(PRODUCER)
    return [writer.append(stream, f"reading {i}".encode(), 1_700_000_000_000 + i) for i in range(n)]


def _kinds(findings: list[Finding]) -> list[tuple[str, int]]:
    return [(f.kind, f.seq) for f in findings]


def test_writer_numbers_links_and_signs() -> None:
    records = _stream(4)
    assert [r.seq for r in records] == [0, 1, 2, 3]
    assert records[0].record.prev == GENESIS
    for before, after in itertools.pairwise(records):
        assert after.record.prev == before.hash
    assert all(r.signature_valid() for r in records)
    assert audit(records, agent=AGENT) == []


def test_writer_resumes_from_a_stored_head() -> None:
    first = _stream(3)
    writer = StreamWriter(PRODUCER, {"vibration": Head(2, first[2].hash)})
    more = [writer.append("vibration", b"next", 1) for _ in range(2)]
    assert [r.seq for r in more] == [3, 4]
    assert audit(first + more) == []
    assert writer.head("vibration") == Head(4, more[-1].hash)


def test_streams_are_independent_chains() -> None:
    writer = StreamWriter(PRODUCER)
    a = writer.append("a", b"1", 0)
    b = writer.append("b", b"1", 0)
    a2 = writer.append("a", b"2", 0)
    assert (a.seq, b.seq, a2.seq) == (0, 0, 1)
    assert audit([a, b, a2]) == []


def test_a_dropped_record_is_a_gap() -> None:
    records = _stream(6)
    assert _kinds(audit(records[:2] + records[3:])) == [("gap", 2)]
    assert _kinds(audit(records[1:])) == [("gap", 0)]
    assert _kinds(audit(records[:2] + records[5:])) == [("gap", 2), ("gap", 3), ("gap", 4)]


def test_a_reordered_record_is_named_and_not_a_gap() -> None:
    records = _stream(5)
    swapped = [records[0], records[2], records[1], records[3], records[4]]
    assert _kinds(audit(swapped)) == [("reorder", 1)]
    moved_last = [records[0], records[2], records[3], records[4], records[1]]
    assert _kinds(audit(moved_last)) == [("reorder", 1)]


def test_a_duplicated_record_is_named() -> None:
    records = _stream(4)
    assert _kinds(audit([*records[:3], records[1], records[3]])) == [("duplicate", 1)]


def test_two_records_at_one_seq_are_a_fork() -> None:
    records = _stream(3)
    other = sign_record(
        PRODUCER, Record(AGENT, "vibration", 2, 1, b"a different reading", records[1].hash)
    )
    findings = audit([*records, other])
    assert _kinds(findings) == [("fork", 2)]
    assert "two different records" in findings[0].detail


def test_a_record_linking_elsewhere_is_a_fork() -> None:
    records = _stream(3)
    # A validly signed seq 3 that does not follow the seq 2 we hold: another history.
    stray = sign_record(PRODUCER, Record(AGENT, "vibration", 3, 1, b"x", b"\x07" * 32))
    assert _kinds(audit([*records, stray])) == [("fork", 3)]
    # Seen from the other side: a late record whose successor does not link to it.
    assert _kinds(audit([records[0], records[1], stray, records[2]])) == [
        ("reorder", 2),
        ("fork", 3),
    ]


def test_bad_signatures_and_foreign_records_are_named() -> None:
    records = _stream(3)
    bad = SignedRecord(records[1].record, records[1].body, records[1].hash, records[0].signature)
    theirs = StreamWriter(BUYER).append("vibration", b"x", 0)
    findings = audit([records[0], bad, records[2], theirs], agent=AGENT)
    assert _kinds(findings) == [("bad-signature", 1), ("foreign", 0), ("gap", 1)]


def test_audit_of_a_window_starts_at_a_known_head() -> None:
    records = _stream(6)
    start = {"vibration": Head(2, records[2].hash)}
    assert audit(records[3:], start=start) == []
    assert _kinds(audit(records[2:], start=start)) == [("duplicate", 2)]
    assert _kinds(audit(records[4:], start=start)) == [("gap", 3)]
