"""Per-channel keys (BRC-42): never the identity key itself on chain.

Each end derives its own channel private key from its identity key, the other
end's identity public key and an invoice number naming the channel, the role and
the channel's *refund terms*; the other end computes the matching public key from
its own private key (ECDH makes both sides agree). No key material crosses the
wire. No I/O.

Why the terms are in the invoice: the funding output's 2-of-2 script is then bound
to capacity, fees, expiry and the payer's payout. A payee that forgot an unfunded
proposal (it expires unfunded proposals to bound what a stranger can make it keep)
may be offered the same channel id again; under other terms the keys differ, so an
output funded for the old proposal can never match the new one, and the refund the
payee signed for the old terms can never take back coins it served against. Under
identical terms the payee signs the identical refund again, which is harmless.
Channels stored before the binding existed are reloaded with the unbound invoice
(`LEGACY`). (docs/ARCHITECTURE.md §4.1)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from bsv.keys import PrivateKey

from mesh.channel.state import Role
from mesh.channel.txs import Terms
from mesh.errors import LocalProtocolError
from mesh.identity import Identity, derive_public_child

LEGACY = b""
"""The binding of channels opened before keys were bound to their terms."""


def terms_binding(
    capacity: int, close_fee: int, refund_fee: int, expiry_height: int, payer_payout: bytes
) -> bytes:
    """16 bytes naming the terms a channel's keys are bound to (see the module doc)."""
    numbers = struct.pack(">QQQQ", capacity, close_fee, refund_fee, expiry_height)
    return hashlib.sha256(b"m2mesh-channel-terms" + numbers + payer_payout).digest()[:16]


def invoice(channel_id: bytes, role: Role, binding: bytes = LEGACY) -> str:
    """The BRC-42 invoice number of one end's key in one channel."""
    base = f"m2mesh-channel-{role.value}-{channel_id.hex()}"
    return f"{base}-{binding.hex()}" if binding else base


@dataclass(frozen=True)
class ChannelKeys:
    """Our channel private key and both ends' channel public keys."""

    own: PrivateKey
    payer_key: bytes
    payee_key: bytes

    def matches(self, payer_key: bytes, payee_key: bytes) -> bool:
        """Whether these are the keys a stored channel names."""
        return (self.payer_key, self.payee_key) == (payer_key, payee_key)


def derive_channel_keys(
    identity: Identity,
    counterparty: bytes,
    channel_id: bytes,
    role: Role,
    binding: bytes = LEGACY,
) -> ChannelKeys:
    """Derive the channel keys for `role` (our end) with peer `counterparty`, bound to
    the terms named by `binding` (`terms_binding`)."""
    other = Role.PAYEE if role is Role.PAYER else Role.PAYER
    own = identity.derive_child(counterparty, invoice(channel_id, role, binding))
    own_public = bytes(own.public_key().serialize(compressed=True))
    theirs = derive_public_child(counterparty, identity.key, invoice(channel_id, other, binding))
    if role is Role.PAYER:
        return ChannelKeys(own, payer_key=own_public, payee_key=theirs)
    return ChannelKeys(own, payer_key=theirs, payee_key=own_public)


def keys_for(identity: Identity, counterparty: bytes, terms: Terms, role: Role) -> ChannelKeys:
    """Our keys in a channel with agreed `terms`: bound to them, or -- for a channel
    stored before the binding existed -- the legacy ones; `ChannelKeyError` when
    neither derivation gives the keys the terms name (another identity's store)."""
    binding = terms_binding(
        terms.capacity, terms.close_fee, terms.refund_fee, terms.expiry_height, terms.payer_payout
    )
    for candidate in (binding, LEGACY):
        keys = derive_channel_keys(identity, counterparty, terms.channel_id, role, candidate)
        if keys.matches(terms.payer_key, terms.payee_key):
            return keys
    raise ChannelKeyError(f"channel {terms.channel_id.hex()[:16]}: keys are not ours")


class ChannelKeyError(LocalProtocolError):
    """A stored channel names keys this identity cannot derive."""
