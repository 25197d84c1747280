"""Per-channel keys (BRC-42): never the identity key itself on chain.

Each end derives its own channel private key from its identity key, the other
end's identity public key and an invoice number naming the channel and the role;
the other end computes the matching public key from its own private key (ECDH
makes both sides agree). No key material crosses the wire. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from bsv.keys import PrivateKey

from mesh.channel.state import Role
from mesh.identity import Identity, derive_public_child


def invoice(channel_id: bytes, role: Role) -> str:
    """The BRC-42 invoice number of one end's key in one channel."""
    return f"m2mesh-channel-{role.value}-{channel_id.hex()}"


@dataclass(frozen=True)
class ChannelKeys:
    """Our channel private key and both ends' channel public keys."""

    own: PrivateKey
    payer_key: bytes
    payee_key: bytes


def derive_channel_keys(
    identity: Identity, counterparty: bytes, channel_id: bytes, role: Role
) -> ChannelKeys:
    """Derive the channel keys for `role` (our end) with peer `counterparty`."""
    other = Role.PAYEE if role is Role.PAYER else Role.PAYER
    own = identity.derive_child(counterparty, invoice(channel_id, role))
    own_public = bytes(own.public_key().serialize(compressed=True))
    theirs = derive_public_child(counterparty, identity.key, invoice(channel_id, other))
    if role is Role.PAYER:
        return ChannelKeys(own, payer_key=own_public, payee_key=theirs)
    return ChannelKeys(own, payer_key=theirs, payee_key=own_public)
