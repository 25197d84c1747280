"""The anchor output: what a batch puts on chain, as an ``OP_FALSE OP_RETURN`` script.

An anchor transaction carries one or more batches of one agent, each in a data output
whose script is exactly

    OP_FALSE OP_RETURN <tag> <version> <agent> <stream> <first_seq> <last_seq> <root>

each ``<…>`` a minimal push (`mesh.chain.tx.push`):

- tag: the 13 bytes ``m2mesh-anchor`` (`ANCHOR_TAG`);
- version: one byte, 1 (`ANCHOR_VERSION`);
- agent: the 33-byte identity key that signed the records;
- stream: the stream name, ASCII (1-100 bytes);
- first_seq, last_seq: 8-byte big-endian unsigned integers, ``first_seq <= last_seq``;
- root: the 32-byte batch Merkle root (`mesh.anchoring.batch`), internal byte order.

With a 10-character stream the script is 114 bytes; the whole anchor transaction (one
P2PKH input, the data output, change) is about 315 bytes, i.e. 0.3 byte per record in
a batch of 1 000. An agent anchors the batches of all its streams due at once in one
transaction (one output each): one funding, one fee, one set of writes.

Who paid for the anchor does not matter to a verifier: the records' signatures prove
authorship, the anchor only proves the batch existed by the block's time. A record's
anchor is the one output of its agent and stream whose seq range holds its seq; a
transaction with no such output, or more than one, proves nothing for it.

This module owns the script format; it does no I/O. (docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

from dataclasses import dataclass

from bsv.transaction import Transaction

from mesh.anchoring.errors import RecordError
from mesh.anchoring.record import MAX_INT, check_stream, is_agent_key
from mesh.chain.tx import OP_FALSE, OP_RETURN, push
from mesh.identity import PEER_ID_BYTES

ANCHOR_TAG = b"m2mesh-anchor"
ANCHOR_VERSION = 1
_PREFIX = bytes([OP_FALSE, OP_RETURN]) + push(ANCHOR_TAG)


class AnchorFormatError(ValueError):
    """A script or transaction is not (exactly) an m2mesh anchor."""


@dataclass(frozen=True)
class AnchorPayload:
    """What an anchor commits to: whose records, which stream, which seqs, which root."""

    agent: bytes
    stream: str
    first_seq: int
    last_seq: int
    root: bytes

    def __post_init__(self) -> None:
        if len(self.agent) != PEER_ID_BYTES or not is_agent_key(self.agent):
            raise AnchorFormatError("agent is not a compressed public key")
        try:
            check_stream(self.stream)
        except RecordError as exc:
            raise AnchorFormatError(str(exc)) from None
        if not 0 <= self.first_seq <= self.last_seq <= MAX_INT:
            raise AnchorFormatError(f"seq range {self.first_seq}..{self.last_seq} is invalid")
        if len(self.root) != 32:
            raise AnchorFormatError("the root is 32 bytes")

    @property
    def count(self) -> int:
        """How many records the batch holds."""
        return self.last_seq - self.first_seq + 1

    def script(self) -> bytes:
        """The data output's locking script."""
        return (
            _PREFIX
            + push(bytes([ANCHOR_VERSION]))
            + push(self.agent)
            + push(self.stream.encode("ascii"))
            + push(self.first_seq.to_bytes(8, "big"))
            + push(self.last_seq.to_bytes(8, "big"))
            + push(self.root)
        )


def is_anchor_script(script: bytes) -> bool:
    """True when `script` starts like an m2mesh anchor (it may still be malformed)."""
    return script.startswith(_PREFIX)


def _pushes(script: bytes) -> list[bytes]:
    """The data of a run of push opcodes; raises AnchorFormatError on anything else."""
    out: list[bytes] = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if 1 <= op < 0x4C:
            size = op
        elif op == 0x4C and i + 1 <= len(script):
            size, i = script[i], i + 1
        elif op == 0x4D and i + 2 <= len(script):
            size, i = int.from_bytes(script[i : i + 2], "little"), i + 2
        else:
            raise AnchorFormatError(f"opcode 0x{op:02x} at byte {i - 1} is not a data push")
        if i + size > len(script):
            raise AnchorFormatError("a push runs past the end of the script")
        out.append(script[i : i + size])
        i += size
    return out


def parse_anchor_script(script: bytes) -> AnchorPayload:
    """Parse an anchor output script exactly (minimal pushes, nothing extra)."""
    if not is_anchor_script(script):
        raise AnchorFormatError("not an m2mesh anchor script")
    fields = _pushes(script[len(_PREFIX) :])
    if len(fields) != 6:
        raise AnchorFormatError(f"expected 6 fields after the tag, found {len(fields)}")
    version, agent, stream, first, last, root = fields
    if version != bytes([ANCHOR_VERSION]):
        raise AnchorFormatError(f"unknown anchor version {version.hex()}")
    if len(first) != 8 or len(last) != 8:
        raise AnchorFormatError("seqs are 8-byte big-endian integers")
    try:
        name = stream.decode("ascii")
    except UnicodeDecodeError:
        raise AnchorFormatError("the stream name is not ASCII") from None
    payload = AnchorPayload(
        agent, name, int.from_bytes(first, "big"), int.from_bytes(last, "big"), root
    )
    if payload.script() != script:
        raise AnchorFormatError("not the canonical encoding (non-minimal pushes)")
    return payload


def anchors_in(tx: Transaction) -> list[tuple[int, AnchorPayload]]:
    """Every anchor output of `tx` (output index, payload), in output order; raises
    `AnchorFormatError` for an output that carries the tag but is not a valid anchor."""
    return [
        (index, parse_anchor_script(script))
        for index, script in (
            (i, bytes(out.locking_script.serialize())) for i, out in enumerate(tx.outputs)
        )
        if is_anchor_script(script)
    ]


def find_anchor(
    tx: Transaction, agent: bytes | None = None, stream: str | None = None, seq: int | None = None
) -> tuple[int, AnchorPayload]:
    """The output index and payload of the one anchor output of `tx` for `agent`,
    `stream` and `seq` (each None: any); `AnchorFormatError` when none or several match."""
    found = [
        (index, anchor)
        for index, anchor in anchors_in(tx)
        if (agent is None or anchor.agent == agent)
        and (stream is None or anchor.stream == stream)
        and (seq is None or anchor.first_seq <= seq <= anchor.last_seq)
    ]
    if len(found) != 1:
        wanted = " for" + "".join(
            part
            for part, value in (
                (f" agent {agent.hex()[:16] if agent else ''}…", agent),
                (f" stream {stream!r}", stream),
                (f" seq {seq}", seq),
            )
            if value is not None
        )
        raise AnchorFormatError(
            f"expected one m2mesh anchor output{wanted if wanted != ' for' else ''},"
            f" found {len(found)}"
        )
    return found[0]
