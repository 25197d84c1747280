"""Extended Format (BRC-30) for ARC: which spent outputs a transaction still needs, and
the EF bytes once it has them. Pure code: parents arrive as bytes, nothing is fetched.

EF is the raw transaction with the 6-byte marker ``0000000000EF`` after the version and,
after each input's sequence number, the amount (8 bytes LE) and locking script (VarInt
length + bytes) of the output it spends. ARC validates fees and scripts from those
fields, so it needs no parent lookup of its own; sent raw, it answers 460 where it does
not extend transactions itself.

bsv-sdk 2.4.0's `Transaction.to_ef` needs a linked ``source_transaction`` on every input
(it raises `ValueError` otherwise) and reads the amount and script from
``source_transaction.outputs[source_output_index]``; its `ARC` broadcaster quietly sends
the raw format whenever one input is not linked. Channel and wallet transactions often
carry only the spent amount and script on the input (``inp.satoshis``,
``inp.locking_script``), or nothing when parsed back from bytes, so we build EF here
from whichever the input has, and from fetched parents for the rest:

1. a linked parent (whose txid must be the one the input names),
2. the amount and script set on the input (they are signed over: a wrong one fails
   ARC's script check, it cannot pass a bad transaction),
3. the parent's bytes, fetched by the caller (`parents_needed`), checked by hash.

(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bsv.transaction import Transaction
from bsv.utils import Reader

from mesh.chain.errors import ChainError, ChainUnavailable, TxRejected
from mesh.chain.rules import Prevout
from mesh.chain.tx import is_null_outpoint, parse_exact, txid_of, varint

EF_MARKER = bytes.fromhex("0000000000ef")


def is_extended(data: bytes) -> bool:
    """Whether `data` carries the EF marker after the version."""
    return data[4:10] == EF_MARKER


def known_prevouts(tx: Transaction) -> list[Prevout | None]:
    """The spent output of each input that `tx` itself carries (None where it does not).

    Raises `ChainError` for a linked parent that is not the transaction the input names
    (bsv-sdk keeps whatever object it was given).
    """
    found: list[Prevout | None] = []
    for index, inp in enumerate(tx.inputs):
        vout = int(inp.source_output_index)
        parent = inp.source_transaction
        if parent is not None:
            raw: bytes = parent.serialize()
            if txid_of(raw) != inp.source_txid:
                raise ChainError(f"input {index} names {inp.source_txid} but links {txid_of(raw)}")
            found.append(_output_of(parent, str(inp.source_txid), vout))
        elif inp.satoshis is not None and inp.locking_script is not None:
            found.append(Prevout(int(inp.satoshis), bytes(inp.locking_script.serialize())))
        else:
            found.append(None)
    return found


def parents_needed(tx: Transaction, known: Sequence[Prevout | None]) -> list[str]:
    """The txids (first-use order, no repeats) whose bytes must be fetched."""
    needed: list[str] = []
    for inp, prevout in zip(tx.inputs, known, strict=True):
        txid = str(inp.source_txid)
        if prevout is None and txid not in needed:
            if is_null_outpoint(txid, int(inp.source_output_index)):
                raise TxRejected("missing-input", "a null (coinbase-style) input spends nothing")
            needed.append(txid)
    return needed


def parent_output(raw: bytes, txid: str, vout: int) -> Prevout:
    """Output `vout` of the parent `txid`, from bytes fetched from elsewhere.

    Bytes whose hash is not `txid` are `ChainUnavailable` (the source answered
    nonsense); an index the parent does not have is `TxRejected("missing-input")`.
    """
    if txid_of(raw) != txid:
        raise ChainUnavailable(f"asked for parent {txid}, got {txid_of(raw)}")
    try:
        parent = parse_exact(raw)
    except TxRejected as exc:
        raise ChainUnavailable(f"parent {txid} does not parse: {exc.detail}") from None
    return _output_of(parent, txid, vout)


def fill_prevouts(
    tx: Transaction, known: Sequence[Prevout | None], parents: Mapping[str, bytes]
) -> list[Prevout]:
    """Every input's spent output: `known` where set, else from the fetched `parents`."""
    filled: list[Prevout] = []
    for inp, prevout in zip(tx.inputs, known, strict=True):
        if prevout is None:
            txid = str(inp.source_txid)
            prevout = parent_output(parents[txid], txid, int(inp.source_output_index))
        filled.append(prevout)
    return filled


def to_extended(raw: bytes, prevouts: Sequence[Prevout]) -> bytes:
    """The EF bytes of the serialised transaction `raw`, given each input's spent output."""
    tx = parse_exact(raw)
    if len(prevouts) != len(tx.inputs):
        raise ValueError(f"{len(tx.inputs)} inputs but {len(prevouts)} spent outputs")
    parts = [raw[:4], EF_MARKER, varint(len(tx.inputs))]
    for inp, prevout in zip(tx.inputs, prevouts, strict=True):
        unlocking: bytes = inp.unlocking_script.serialize() if inp.unlocking_script else b""
        parts += [
            bytes.fromhex(str(inp.source_txid))[::-1],
            int(inp.source_output_index).to_bytes(4, "little"),
            varint(len(unlocking)),
            unlocking,
            int(inp.sequence).to_bytes(4, "little"),
            prevout.satoshis.to_bytes(8, "little"),
            varint(len(prevout.locking_script)),
            prevout.locking_script,
        ]
    parts.append(varint(len(tx.outputs)))
    parts += [bytes(out.serialize()) for out in tx.outputs]
    parts.append(int(tx.locktime).to_bytes(4, "little"))
    return b"".join(parts)


def from_extended(ef: bytes) -> tuple[bytes, list[Prevout]]:
    """The raw transaction and the spent outputs inside EF bytes (inverse of `to_extended`).

    Raises `ValueError` for bytes that are not exactly one EF transaction.
    """
    if not is_extended(ef):
        raise ValueError("no extended-format marker")
    reader = Reader(ef)
    version = reader.read(4)
    reader.read(len(EF_MARKER))
    count = _count(reader)
    raw = [version, varint(count)]
    prevouts: list[Prevout] = []
    for _ in range(count):
        outpoint = _take(reader, 36)
        script = _take(reader, _count(reader))
        sequence = _take(reader, 4)
        satoshis = int.from_bytes(_take(reader, 8), "little")
        prevouts.append(Prevout(satoshis, _take(reader, _count(reader))))
        raw += [outpoint, varint(len(script)), script, sequence]
    rest: bytes = reader.read() or b""
    tx_bytes = b"".join(raw) + rest
    try:
        parse_exact(tx_bytes)
    except TxRejected as exc:
        raise ValueError(f"not one extended-format transaction: {exc.detail}") from None
    return tx_bytes, prevouts


def _output_of(parent: Transaction, txid: str, vout: int) -> Prevout:
    if not 0 <= vout < len(parent.outputs):
        raise TxRejected("missing-input", f"{txid} has no output {vout}")
    out = parent.outputs[vout]
    return Prevout(int(out.satoshis), bytes(out.locking_script.serialize()))


def _count(reader: Reader) -> int:
    value = reader.read_var_int_num()
    if value is None:
        raise ValueError("truncated extended-format transaction")
    return int(value)


def _take(reader: Reader, size: int) -> bytes:
    if size == 0:
        return b""  # bsv-sdk's Reader answers None for an empty read
    data = reader.read(size)
    if data is None or len(data) != size:
        raise ValueError("truncated extended-format transaction")
    return bytes(data)
