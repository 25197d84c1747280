"""Spilman payment channels: transaction shapes, state machines, keys (no I/O)."""

from mesh.channel.keys import ChannelKeys, derive_channel_keys
from mesh.channel.state import (
    ChannelStateError,
    Payee,
    Payer,
    PaymentRejected,
    Record,
    Role,
    State,
)
from mesh.channel.txs import PaymentSigner, Terms, payment_tx, refund_tx, release_tx

__all__ = [
    "ChannelKeys",
    "ChannelStateError",
    "Payee",
    "Payer",
    "PaymentRejected",
    "PaymentSigner",
    "Record",
    "Role",
    "State",
    "Terms",
    "derive_channel_keys",
    "payment_tx",
    "refund_tx",
    "release_tx",
]
