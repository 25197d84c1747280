"""Transaction bytes in and out, exactly, plus the few script shapes the chain layer uses.

bsv-sdk's `Transaction.from_hex` is lenient (it ignores trailing bytes and accepts a
truncated last output script) and `Transaction.txid()` caches a value that mutation
does not invalidate. Everything here works from bytes: `parse_exact` accepts only bytes
that re-serialise to themselves, and `txid_of` hashes the serialisation it is given.
It never talks to the network or to a database. (docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bsv.script.script import Script
from bsv.script.type import P2PKH
from bsv.transaction import Transaction
from bsv.utils import to_base58_check
from bsv.utils.address import decode_address

from mesh.chain.errors import TxRejected

NULL_TXID = "00" * 32
NULL_INDEX = 0xFFFFFFFF
SEQUENCE_FINAL = 0xFFFFFFFF
OP_FALSE, OP_RETURN = 0x00, 0x6A


@dataclass(frozen=True, order=True)
class Outpoint:
    """A transaction output's address on chain: txid (display hex) and index."""

    txid: str
    vout: int

    def __str__(self) -> str:
        return f"{self.txid}:{self.vout}"


def hash256(data: bytes) -> bytes:
    """Double SHA-256, as Bitcoin uses it for txids, headers and Merkle nodes."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def varint(n: int) -> bytes:
    """Bitcoin's VarInt (CompactSize) of `n`."""
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def txid_of(raw: bytes) -> str:
    """The txid (display hex, byte-reversed) of serialised transaction bytes."""
    return hash256(raw)[::-1].hex()


def tx_id(tx: Transaction) -> str:
    """The txid of `tx` as it is now, ignoring bsv-sdk's possibly stale cache."""
    raw: bytes = tx.serialize()
    return txid_of(raw)


def parse_exact(raw: bytes) -> Transaction:
    """Parse one transaction that must re-serialise to exactly `raw`.

    Raises `TxRejected(rule="parse")` for trailing bytes, truncation, non-canonical
    varints or anything else bsv-sdk would quietly tolerate.
    """
    if not raw:
        raise TxRejected("parse", "no bytes")
    try:
        tx = Transaction.from_hex(raw)
        again: bytes | None = None if tx is None else tx.serialize()
    except (ValueError, TypeError, IndexError, OverflowError, AttributeError) as exc:
        raise TxRejected("parse", f"not a transaction ({exc})") from None
    if tx is None or again is None:
        raise TxRejected("parse", "not a transaction")
    if again != raw:
        if len(again) < len(raw) and raw.startswith(again):
            raise TxRejected("parse", f"{len(raw) - len(again)} trailing bytes")
        raise TxRejected(
            "parse", "bytes do not re-serialise to themselves (truncated or non-canonical)"
        )
    return tx


def is_null_outpoint(txid: str, vout: int) -> bool:
    """True for the coinbase-style input that spends nothing."""
    return txid == NULL_TXID and vout == NULL_INDEX


def is_data_script(script: bytes) -> bool:
    """True for provably unspendable data outputs: ``OP_FALSE OP_RETURN …`` only.

    Post-Genesis a bare ``OP_RETURN …`` is *not* one: OP_RETURN ends execution
    successfully with what is on the stack, so an unlocking script of ``OP_1`` spends it.
    SV Node judges unspendability by exactly this prefix (its ``IsUnspendable`` after
    Genesis), so it alone may carry 0 sat; anything else with 0 sat is dust.
    """
    return script[:2] == bytes([OP_FALSE, OP_RETURN])


def network_address(address: str, network: str) -> str:
    """`address` (a P2PKH address of any network) as ``main`` or ``test`` writes it: the
    same key hash under that network's version byte (WhatsOnChain looks testnet coins up
    by testnet addresses; the wallet's are written the mainnet way)."""
    version = {"main": 0x00, "test": 0x6F}[network]
    return str(to_base58_check(list(address_to_pkh(address)), [version]))


def address_to_pkh(address: str) -> bytes:
    """The 20-byte public-key hash inside a base58check P2PKH address (any network)."""
    try:
        pkh, _network = decode_address(address)
    except ValueError as exc:
        raise ValueError(f"{address!r} is not a P2PKH address ({exc})") from None
    if len(pkh) != 20:
        raise ValueError(f"{address!r} is not a P2PKH address")
    return bytes(pkh)


def p2pkh_script(address: str) -> bytes:
    """The P2PKH locking script paying `address`."""
    script: bytes = P2PKH().lock(address_to_pkh(address)).serialize()
    return script


def script_of(raw: bytes) -> Script:
    """A bsv-sdk `Script` from bytes."""
    return Script(raw)


def push(data: bytes) -> bytes:
    """A minimal script push of `data` (for scripts we build ourselves)."""
    size = len(data)
    if size == 0:
        return b"\x00"
    if size < 0x4C:
        return bytes([size]) + data
    if size <= 0xFF:
        return b"\x4c" + bytes([size]) + data
    if size <= 0xFFFF:
        return b"\x4d" + size.to_bytes(2, "little") + data
    return b"\x4e" + size.to_bytes(4, "little") + data
