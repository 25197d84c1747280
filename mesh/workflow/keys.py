"""Escrow keys: one per party and work order, derivable by anyone, held by one (no I/O).

Each party's key in an order's 2-of-3 is the BRC-42 child of its identity key for the
counterparty *anyone*, protocol ``[2, "m2mesh escrow"]``, key id the order id in hex.
So every party computes all three public keys from the three identity keys alone --
the machine checks the inspector's key in the script the buyer built, and nobody can
slip its own key in for another's -- and only the owner of an identity key can sign
with its child. A fresh order id gives fresh keys: no key signs for two escrows.
(docs/ARCHITECTURE.md §4, §4.1)
"""

from __future__ import annotations

from bsv.keys import PrivateKey, PublicKey
from bsv.wallet.key_deriver import Counterparty, CounterpartyType, KeyDeriver, Protocol

from mesh.certs.certificate import ANYONE

ESCROW_PROTOCOL = Protocol(2, "m2mesh escrow")


def escrow_public_key(identity_key: bytes, order_id: bytes) -> bytes:
    """The escrow key of the party whose identity key is `identity_key` (compressed)."""
    counterparty = Counterparty(CounterpartyType.OTHER, PublicKey(identity_key))
    key = KeyDeriver(ANYONE).derive_public_key(
        ESCROW_PROTOCOL, order_id.hex(), counterparty, for_self=False
    )
    public: bytes = key.serialize()
    return public


def escrow_private_key(identity: PrivateKey, order_id: bytes) -> PrivateKey:
    """Our own escrow key for the order `order_id`."""
    key: PrivateKey = KeyDeriver(identity).derive_private_key(
        ESCROW_PROTOCOL, order_id.hex(), Counterparty(CounterpartyType.ANYONE)
    )
    return key


__all__ = ["ESCROW_PROTOCOL", "escrow_private_key", "escrow_public_key"]
