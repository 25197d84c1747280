"""The inspector's verdict as a signed record (no I/O).

A verdict is bound to everything it decides: the work order, the part, the buyer and
the machine (identity keys), the escrow it releases or returns (its funding outpoint)
and the values the inspector measured. The inspector logs it as a record of its
``verdicts`` stream (`mesh.anchoring`: signed by its identity, hash-chained, anchored),
and hands the record to both parties with its signature on the way out the verdict
allows. A part passport carries the record and its anchor proof. The body is a
MessagePack array, decoded strictly: anything else is a `VerdictError`.
(docs/ARCHITECTURE.md §4, §7)
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from mesh.anchoring.errors import RecordError
from mesh.anchoring.record import open_record
from mesh.errors import RemoteProtocolError

STREAM = "verdicts"
VERSION = 1
MAX_VALUES = 32


class VerdictError(RemoteProtocolError):
    """A verdict body that is not one."""


@dataclass(frozen=True)
class VerdictBody:
    """What the inspector decided about one part, and on what grounds."""

    order_id: bytes
    part: str
    buyer: str
    machine: str
    passed: bool
    values: tuple[tuple[str, str], ...]
    escrow: str
    """The escrow's funding outpoint, ``"<txid>.<vout>"``."""
    terms: bytes
    """`EscrowTerms.digest` of the escrow: every agreed term, signed with the verdict."""

    def encode(self) -> bytes:
        """The record payload."""
        values = [[name, value] for name, value in self.values]
        body = [VERSION, self.order_id, self.part, self.buyer, self.machine, self.passed,
                values, self.escrow, self.terms]  # fmt: skip
        data: bytes = msgpack.packb(body, use_bin_type=True)
        return data

    @classmethod
    def decode(cls, data: bytes) -> VerdictBody:
        """A verdict body from a record payload (strict)."""
        try:
            body = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise VerdictError("verdict", f"not MessagePack: {exc}") from None
        if not isinstance(body, list) or len(body) != 9 or body[0] != VERSION:
            raise VerdictError("verdict", f"not a version-{VERSION} verdict")
        _, order_id, part, buyer, machine, passed, values, escrow, terms = body
        if not (
            isinstance(order_id, bytes)
            and isinstance(terms, bytes)
            and len(terms) == 32
            and all(isinstance(x, str) for x in (part, buyer, machine, escrow))
            and isinstance(passed, bool)
            and isinstance(values, list)
            and len(values) <= MAX_VALUES
            and all(
                isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
                for v in values
            )
        ):
            raise VerdictError("verdict", "a member of the wrong type")
        pairs = tuple((str(name), str(value)) for name, value in values)
        verdict = cls(order_id, part, buyer, machine, passed, pairs, escrow, terms)
        if verdict.encode() != data:
            raise VerdictError("verdict", "not in canonical form")
        return verdict


def open_verdict(body: bytes, signature: bytes, inspector: str) -> VerdictBody:
    """The verdict in a record the inspector signed (`inspector`: its peer id, hex):
    the record's signature, its agent and stream, then its body; `VerdictError` else."""
    try:
        signed = open_record(body, signature)
    except RecordError as exc:
        raise VerdictError("verdict", f"not the inspector's record: {exc}") from None
    if signed.agent.hex() != inspector or signed.stream != STREAM:
        raise VerdictError("verdict", f"not a record of the inspector's {STREAM} stream")
    return VerdictBody.decode(signed.record.payload)


__all__ = ["STREAM", "VERSION", "VerdictBody", "VerdictError", "open_verdict"]
