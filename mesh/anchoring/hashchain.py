"""Hash-chained streams: the writer that extends them and the audit that checks them.

Each (agent, stream) is a hash chain: record `seq` carries the record hash of `seq - 1`
in its ``prev`` field (32 zero bytes for seq 0). `StreamWriter` is the agent's side: it
keeps each stream's head, assigns the next seq, links, timestamps and signs. It never
reads a clock (the caller passes ``timestamp_ms``) and never persists: the caller must
store each record before it lets anyone see it, or a restart would sign a second,
different record at the same seq — which every holder of the first can then show as a
fork.

`audit` is the reader's side. Given the records of a stream in the order they were
received or stored, it names every break:

- ``gap``: a seq never arrived (dropped);
- ``reorder``: a seq arrived after a later one;
- ``duplicate``: the same record (same hash) arrived twice;
- ``fork``: two different signed records claim one seq, or a record links (``prev``) to a
  hash that is not the record before it — the agent said two different histories;
- ``bad-signature``: the signature is not the agent's;
- ``foreign``: the record belongs to another agent than expected.

A fork between two validly signed records is evidence of equivocation, not noise.
This module owns the chaining rules; it does no I/O. (docs/ARCHITECTURE.md §2, §7)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.anchoring.errors import RecordError
from mesh.anchoring.record import (
    GENESIS,
    MAX_INT,
    MAX_PAYLOAD,
    Record,
    SignedRecord,
    check_stream,
    encode_body,
    record_hash,
)
from mesh.identity import Identity

FINDING_KINDS = ("gap", "reorder", "duplicate", "fork", "bad-signature", "foreign")


@dataclass(frozen=True, slots=True)
class Head:
    """The last record of a stream: its seq and record hash."""

    seq: int
    hash: bytes


class StreamWriter:
    """Extends an agent's streams: next seq, link to the head, sign. No I/O, no clock."""

    def __init__(self, identity: Identity, heads: Mapping[str, Head] | None = None) -> None:
        self._identity = identity
        self._agent = identity.public_key
        self._heads: dict[str, Head] = dict(heads or {})
        for stream in self._heads:
            check_stream(stream)

    @property
    def agent(self) -> bytes:
        """The identity key every record is signed by."""
        return self._agent

    def head(self, stream: str) -> Head | None:
        """The last record written to `stream`, or None before its first."""
        return self._heads.get(stream)

    def heads(self) -> dict[str, Head]:
        """A copy of every stream's head."""
        return dict(self._heads)

    def append(self, stream: str, payload: bytes, timestamp_ms: int) -> SignedRecord:
        """Sign the next record of `stream` and advance its head.

        Raises `RecordError` for a bad stream name, payload or timestamp; the head only
        moves when a record was produced.
        """
        head = self._heads.get(stream)
        if head is None:
            check_stream(stream)
            seq, prev = 0, GENESIS
        else:
            seq, prev = head.seq + 1, head.hash
        if type(payload) is not bytes or len(payload) > MAX_PAYLOAD:
            raise RecordError("payload", f"bytes of at most {MAX_PAYLOAD}")
        if type(timestamp_ms) is not int or not 0 <= timestamp_ms <= MAX_INT:
            raise RecordError("timestamp_ms", f"{timestamp_ms!r} is not an integer in 0..2**63-1")
        body = encode_body(self._agent, stream, seq, timestamp_ms, payload, prev)
        digest = record_hash(body)
        signature = self._identity.sign_digest(digest)
        record = Record(self._agent, stream, seq, timestamp_ms, payload, prev)
        self._heads[stream] = Head(seq, digest)
        return SignedRecord(record, body, digest, signature)


@dataclass(frozen=True, slots=True)
class Finding:
    """One break in a stream: its kind (see `FINDING_KINDS`), where, and what."""

    kind: str
    agent: bytes
    stream: str
    seq: int
    detail: str


class _StreamAudit:
    """The state of one (agent, stream) while its records are being audited."""

    def __init__(self, agent: bytes, stream: str, start: Head | None) -> None:
        self.agent = agent
        self.stream = stream
        self.hashes: dict[int, bytes] = {}
        self.prevs: dict[int, bytes] = {}
        self.missing: set[int] = set()
        if start is None:
            self.next = 0
            self.hashes[-1] = GENESIS
        else:
            self.next = start.seq + 1
            self.hashes[start.seq] = start.hash
        self.floor = self.next

    def finding(self, kind: str, seq: int, detail: str) -> Finding:
        return Finding(kind, self.agent, self.stream, seq, detail)

    def feed(self, signed: SignedRecord) -> list[Finding]:
        seq, digest, prev = signed.seq, signed.hash, signed.record.prev
        known = self.hashes.get(seq)
        if known is not None:
            if known == digest:
                return [self.finding("duplicate", seq, "the same record again")]
            return [
                self.finding(
                    "fork",
                    seq,
                    f"two different records claim seq {seq} ({known.hex()[:16]}…"
                    f" and {digest.hex()[:16]}…)",
                )
            ]
        if seq < self.floor:
            return [self.finding("reorder", seq, f"seq {seq} is before the audited range")]
        findings: list[Finding] = []
        if seq >= self.next:
            self.missing.update(range(self.next, seq))
            self.next = seq + 1
        else:
            self.missing.discard(seq)
            findings.append(self.finding("reorder", seq, f"seq {seq} arrived after a later one"))
        self.hashes[seq] = digest
        self.prevs[seq] = prev
        before = self.hashes.get(seq - 1)
        if before is not None and prev != before:
            findings.append(
                self.finding("fork", seq, f"seq {seq} does not link to the record at seq {seq - 1}")
            )
        after_prev = self.prevs.get(seq + 1)
        if after_prev is not None and after_prev != digest:
            findings.append(
                self.finding(
                    "fork", seq + 1, f"seq {seq + 1} does not link to the record at seq {seq}"
                )
            )
        return findings

    def finish(self) -> list[Finding]:
        return [self.finding("gap", seq, f"seq {seq} is missing") for seq in sorted(self.missing)]


def audit(
    records: Iterable[SignedRecord],
    *,
    agent: bytes | None = None,
    start: Mapping[str, Head] | None = None,
    check_signatures: bool = True,
) -> list[Finding]:
    """Every break in the streams of `records`, in the order they were fed.

    Records are grouped by (agent, stream). Each stream is expected to start at seq 0
    unless `start` gives the head the audited range follows. With `agent`, records of
    any other agent are ``foreign``. Gaps are reported last (only the end of the input
    shows that a seq never came).
    """
    audits: dict[tuple[bytes, str], _StreamAudit] = {}
    findings: list[Finding] = []
    starts = start or {}
    for signed in records:
        if agent is not None and signed.agent != agent:
            findings.append(
                Finding("foreign", signed.agent, signed.stream, signed.seq, "another agent")
            )
            continue
        if check_signatures and not signed.signature_valid():
            findings.append(
                Finding("bad-signature", signed.agent, signed.stream, signed.seq, "not signed")
            )
            continue
        key = (signed.agent, signed.stream)
        state = audits.get(key)
        if state is None:
            state = audits[key] = _StreamAudit(signed.agent, signed.stream, starts.get(key[1]))
        findings.extend(state.feed(signed))
    for state in audits.values():
        findings.extend(state.finish())
    return findings
