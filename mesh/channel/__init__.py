"""Spilman payment channels: the conversation (`protocol`, with `opening`, `settle`,
`book`), state machines, transactions and keys -- none of them does I/O -- and the
channel store and payment journal (`store`, `journal`). Re-exported here: the pure parts.

(docs/ARCHITECTURE.md §4)
"""

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
