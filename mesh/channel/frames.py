"""The payment channel's frames (tags 20-29): what payer and payee say to each other
(`mesh.channel.state` holds the rules; `mesh.channel.protocol` the conversation).
Registered in the codec's one table (`mesh.wire`). (docs/ARCHITECTURE.md §3, §4)"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.wire import Frame, frame

# --------------------------------------------------------------------------- channels
# A Spilman channel between a payer and a payee (mesh/channel). Amounts are
# satoshis; `channel_id` is 32 random bytes chosen by the payer.


@frame(20)
@dataclass(frozen=True, slots=True)
class ChannelOpen(Frame):
    """Payer -> payee: proposed terms. Only the funding outpoint is revealed, never
    the signed funding transaction, until the payee's refund signature is back."""

    channel_id: bytes
    service: str
    capacity: int
    close_fee: int
    refund_fee: int
    expiry_height: int
    funding_txid: str
    funding_vout: int
    payer_payout: bytes


@frame(21)
@dataclass(frozen=True, slots=True)
class ChannelRefundSigned(Frame):
    """Payee -> payer: the payee's signature on the time-locked refund, and the
    P2PKH script the payee wants its payments paid to."""

    channel_id: bytes
    signature: bytes
    payee_payout: bytes


@frame(22)
@dataclass(frozen=True, slots=True)
class ChannelFunded(Frame):
    """Payer -> payee: the funding transaction, now broadcast."""

    channel_id: bytes
    funding_tx: bytes


@frame(23)
@dataclass(frozen=True, slots=True)
class ChannelPay(Frame):
    """Payer -> payee: the new total and the payer's signature over that state."""

    channel_id: bytes
    seq: int
    total: int
    signature: bytes


@frame(29)
@dataclass(frozen=True, slots=True)
class ChannelPays(Frame):
    """Payer -> payee: consecutive payments in one frame, payment ``i`` being seq
    ``seq + i`` with ``totals[i]`` and ``signatures[i]``: each exactly a `ChannelPay`,
    without a frame (its decode and dispatch) per payment."""

    channel_id: bytes
    seq: int
    totals: tuple[int, ...]
    signatures: tuple[bytes, ...]


@frame(24)
@dataclass(frozen=True, slots=True)
class ChannelAck(Frame):
    """Payee -> payer: everything up to `seq` (cumulative) is persisted.

    seq 0 means the channel is open: the funding was seen on chain. `signature` is the
    payer's own signature on that state (empty at seq 0): a payer that lost its latest
    states (a power cut) takes them back from it, having checked it is its own.
    """

    channel_id: bytes
    seq: int
    total: int
    signature: bytes


@frame(25)
@dataclass(frozen=True, slots=True)
class ChannelClose(Frame):
    """Either side asks the payee to close with the latest state."""

    channel_id: bytes


@frame(26)
@dataclass(frozen=True, slots=True)
class ChannelClosed(Frame):
    """Payee -> payer: the close transaction was broadcast."""

    channel_id: bytes
    close_txid: str
    total: int


@frame(28)
@dataclass(frozen=True, slots=True)
class ChannelRelease(Frame):
    """Payer -> payee: give up a channel nothing was paid on. `signature` is the payer's
    on the release transaction (mesh/channel/txs.py); the payee co-signs, broadcasts it
    and answers `ChannelClosed` with total 0."""

    channel_id: bytes
    signature: bytes


@frame(27)
@dataclass(frozen=True, slots=True)
class ChannelError(Frame):
    """A channel-level refusal naming its rule (`code`); the channel state is unchanged."""

    channel_id: bytes
    code: str
    reason: str
