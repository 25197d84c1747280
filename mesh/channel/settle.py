"""Settling channels, as rules without I/O: close, release, refund, the expiry watch.

A payer asks its payee to close (`ChannelClose`), or to release a channel nothing was
paid on (`ChannelRelease`); the payee co-signs the latest state (or the payer's
release), records the close transaction, broadcasts it and answers `ChannelClosed`.
A payer believes that answer only when the chain shows its part. At each chain height
the watch closes a payee's channel within `close_margin_blocks` of its expiry, ends a
payee's channel whose funding output is gone, and broadcasts a payer's refund once it
is final.

`Settlement` shares the `ChannelBook` with `mesh.channel.protocol`; like it, it returns
effects (`mesh.channel.effects`) for the shell to execute in order and is answered by
the methods the effects name. Accounting follows the chain: a settled channel records
what its settlement paid the payee (`Record.paid_on_chain`) beside the latest total
the payer signed; `channel_summary` shows both. (docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

import logging
import math
from typing import Any

from mesh.chain.base import OutputState, OutputStatus, Utxo
from mesh.channel.book import ChannelBook
from mesh.channel.config import ChannelConfig
from mesh.channel.effects import (
    AddCoins,
    AdoptPayout,
    BroadcastClose,
    BroadcastRefund,
    CheckCloseClaim,
    CheckFundingUnspent,
    CheckSpender,
    CheckStored,
    Effect,
    Ended,
    Flush,
    HangUp,
    SaveRaw,
    Send,
    Wake,
)
from mesh.channel.frames import ChannelClose, ChannelClosed, ChannelError, ChannelRelease
from mesh.channel.state import Payee, Payer, PaymentRejected, Record, Role, State
from mesh.channel.txs import Terms
from mesh.wire import Frame

log = logging.getLogger("agents.channels")
LOCKING_STATES = frozenset({State.FUNDED, State.OPEN, State.CLOSING, State.REFUSED})
"""A payer's coins are in the channel until a close or, at the expiry, the refund."""
LOST_TO_ANOTHER_SPEND = frozenset({"double-spend", "spent-input"})
"""Chain rules saying the funding output was spent by another transaction first."""


class Settlement:
    """The settling half of the channel conversation (see the module doc)."""

    def __init__(self, book: ChannelBook, config: ChannelConfig) -> None:
        self.book = book
        self.config = config

    # ---------------------------------------------------------------- payee

    def close_request(
        self, peer_id: str, frame: ChannelClose | ChannelRelease, now: float
    ) -> list[Effect]:
        """A payer's `ChannelClose` or `ChannelRelease`."""
        cid = frame.channel_id
        end = self.book.owned(peer_id, cid)
        if not isinstance(end, Payee):
            return [CheckStored(peer_id, cid)]  # closed before this start, perhaps
        if end.state is State.CLOSED:
            # Closed while the payer was away (watcher, restart): tell it again.
            record = end.record()
            return [Send(peer_id, ChannelClosed(cid, record.close_txid, record.total))]
        if isinstance(frame, ChannelClose):
            return self.close_as_payee(end)
        if end.state is State.CLOSING:
            return []  # a resend
        try:
            end.accept_release(frame.signature)
        except PaymentRejected as exc:
            return self.book.reject(peer_id, cid, exc.code, exc.reason, now, strike=True)
        return self._co_sign(end)

    def stored_close(self, peer_id: str, channel_id: bytes, stored: Record | None) -> list[Effect]:
        """Answer to `CheckStored`: a channel we closed before this start (final channels
        are not reloaded) is answered from the store."""
        if stored is None or stored.peer_id != peer_id:
            unknown = ChannelError(channel_id, "unknown-channel", "no such channel")
            return [Send(peer_id, unknown)]
        if stored.role is Role.PAYEE and stored.state is State.CLOSED:
            return [Send(peer_id, ChannelClosed(channel_id, stored.close_txid, stored.total))]
        return []

    def close_as_payee(self, payee: Payee) -> list[Effect]:
        """Close an open channel we are paid on (nothing paid: nothing to claim, the
        payer releases it or its refund settles it)."""
        if payee.state is not State.OPEN or payee.record().total == 0:
            return []
        payee.event("close")
        return self._co_sign(payee)

    def _co_sign(self, payee: Payee) -> list[Effect]:
        """Persist the closing state, record the close tx, then broadcast it."""
        cid = payee.terms.channel_id
        self.book.settling.add(cid)  # the watcher leaves it alone meanwhile
        raw = payee.closing_tx()
        return [Flush(cid), SaveRaw(cid, close=raw), *self.finish_close(payee, raw)]

    def finish_close(self, end: Payer | Payee, raw: bytes) -> list[Effect]:
        """Broadcast a recorded close (unless settled meanwhile); a close that pays us
        first makes its payout key the wallet's: a crash after it never leaves the
        coin unlooked-for."""
        cid = end.terms.channel_id
        if end.state is not State.CLOSING:
            self.book.settling.discard(cid)
            return []
        self.book.settling.add(cid)
        adopt: list[Effect] = []
        if end.record().total and isinstance(end, Payee):
            adopt.append(AdoptPayout(cid))
        return [*adopt, BroadcastClose(cid, raw)]

    def close_broadcast(
        self, channel_id: bytes, txid: str | None, rule: str = "", detail: str = ""
    ) -> list[Effect]:
        """Answer to `BroadcastClose`: the close's txid, or (None) the chain's refusal
        `rule` (``unavailable`` when it did not answer): the close stays recorded and
        is tried again at the next watch."""
        self.book.settling.discard(channel_id)
        end = self.book.ends.get(channel_id)
        if end is None or end.state is not State.CLOSING:
            return []  # settled meanwhile
        if txid is None:
            if rule in LOST_TO_ANOTHER_SPEND and isinstance(end, Payee):
                # Besides our close, only the refund spends the funding: we were away
                # past the expiry and the payer took its coins back.
                end.mark_refunded("")
                log.warning("channel %s was refunded before we closed it", channel_id.hex()[:16])
                return [Flush(channel_id), Wake(channel_id)]
            log.warning("close of channel %s not accepted: %s", channel_id.hex()[:16], detail)
            return []
        paid = end.record().total  # what this close pays the payee (a release: 0)
        end.mark_closed(txid, paid)
        record = end.record()
        effects: list[Effect] = [Flush(channel_id)]
        if isinstance(end, Payee):
            if paid:  # a release pays us nothing
                effects.append(AddCoins((Utxo(txid, 0, paid, end.terms.payee_payout),)))
            effects.append(Send(record.peer_id, ChannelClosed(channel_id, txid, record.total)))
        log.info("channel %s closed by %s: %d sat paid", channel_id.hex()[:16], txid[:16], paid)
        return effects

    # ---------------------------------------------------------------- payer

    def close_claim(self, peer_id: str, frame: ChannelClosed) -> list[Effect]:
        """A payee says it closed: what to look up before believing it. A payee's word
        is not a close: once marked closed we stop watching, and the refund at the
        expiry is what protects our coins from a payee that never really closes."""
        payer = self.book.owned(peer_id, frame.channel_id)
        if not isinstance(payer, Payer) or payer.state not in (State.OPEN, State.CLOSING):
            return []
        terms = payer.terms
        rest = terms.max_total - frame.total
        if rest > 0:  # our output: the second of a close, the only one of a release
            vout = 1 if frame.total else 0
            return [
                CheckCloseClaim(peer_id, frame, frame.close_txid, vout, rest, terms.payer_payout)
            ]
        # Nothing left for us (a channel paid to its capacity): the close must be what
        # spends the funding output.
        funding = CheckCloseClaim(peer_id, frame, terms.funding_txid, terms.funding_vout, 0, b"")
        return [funding]

    def close_claim_checked(self, claim: CheckCloseClaim, output: OutputStatus) -> list[Effect]:
        """Answer to `CheckCloseClaim`: the output it names, as the chain shows it."""
        frame = claim.claim
        payer = self.book.owned(claim.peer_id, frame.channel_id)
        if not isinstance(payer, Payer) or payer.state not in (State.OPEN, State.CLOSING):
            return []
        if claim.satoshis:
            shown = (output.state, output.satoshis, output.script) == (
                OutputState.UNSPENT,
                claim.satoshis,
                claim.script,
            )
        else:
            shown = output.state is OutputState.SPENT and output.spent_by == frame.close_txid
        record = payer.record()
        if not (record.acked_total <= frame.total <= record.total and shown):
            log.warning(
                "peer %s claims close %s of channel %s paying %d; the chain does not show it",
                claim.peer_id[:16],
                frame.close_txid,
                frame.channel_id.hex()[:16],
                frame.total,
            )
            return []
        payer.mark_closed(frame.close_txid, frame.total)  # perhaps less than we signed
        effects: list[Effect] = [Flush(frame.channel_id)]
        if claim.satoshis:
            coin = Utxo(claim.txid, claim.vout, claim.satoshis, claim.script)
            effects.append(AddCoins((coin,)))
        return [*effects, Wake(frame.channel_id)]

    def refund_broadcast(
        self, channel_id: bytes, txid: str | None, rule: str = "", detail: str = ""
    ) -> list[Effect]:
        """Answer to `BroadcastRefund`: the refund's txid, or (None) the chain's
        refusal `rule`."""
        payer = self.book.ends.get(channel_id)
        if not isinstance(payer, Payer) or payer.state not in LOCKING_STATES:
            return []
        if txid is None:
            if rule in LOST_TO_ANOTHER_SPEND:  # the payee closed it first
                return [CheckSpender(channel_id)]
            log.warning("refund of channel %s not accepted yet: %s", channel_id.hex()[:16], detail)
            return []
        payer.mark_refunded(txid)
        terms = payer.terms
        coin = Utxo(txid, 0, terms.capacity - terms.refund_fee, terms.payer_payout)
        log.info("channel %s refunded by %s", channel_id.hex()[:16], txid[:16])
        return [Flush(channel_id), AddCoins((coin,)), Wake(channel_id)]

    def spender_found(
        self, channel_id: bytes, close_txid: str, paid: int | None, coins: tuple[Utxo, ...]
    ) -> list[Effect]:
        """Answer to `CheckSpender`: the transaction that spent the funding ("" when the
        chain view does not say), what it paid the payee (None: unknown) and our own
        unspent outputs in it."""
        payer = self.book.ends.get(channel_id)
        if not isinstance(payer, Payer) or payer.state not in LOCKING_STATES:
            return []
        payer.mark_closed(close_txid, paid)
        effects: list[Effect] = [Flush(channel_id)]
        if coins:
            effects.append(AddCoins(coins))
        return [*effects, Wake(channel_id)]

    # ---------------------------------------------------------------- the watch

    def watch(self, height: int, now: float) -> list[Effect]:
        """At chain height `height`: close (payee) or refund (payer) every channel whose
        expiry is near or past; look up the funding of a payee's open channel every
        `funding_check_interval` seconds (not every pass: a payee with many channels
        must not queue its closes behind chain lookups)."""
        effects: list[Effect] = []
        for end in list(self.book.ends.values()):
            cid = end.terms.channel_id
            expiry = end.terms.expiry_height
            if isinstance(end, Payee):
                if end.state is State.CLOSING:  # not accepted yet: until it is, again
                    if cid not in self.book.settling:
                        effects += self.finish_close(end, end.closing_tx())
                elif end.state is not State.OPEN:
                    self.book.funding_checked.pop(cid, None)
                elif height >= expiry - self.config.close_margin_blocks:
                    log.info("channel %s near expiry: closing", cid.hex()[:16])
                    effects += self.close_as_payee(end)
                elif now - self.book.funding_checked.get(cid, -math.inf) >= (
                    self.config.funding_check_interval
                ):
                    self.book.funding_checked[cid] = now
                    effects.append(CheckFundingUnspent(cid))
            elif end.state in LOCKING_STATES and height >= expiry:
                effects.append(BroadcastRefund(cid, end.signed_refund()))
        return effects

    def funding_watched(self, channel_id: bytes, output: OutputStatus, now: float) -> list[Effect]:
        """Answer to `CheckFundingUnspent`. An open channel is served only while its
        funding output is unspent in our chain view: spent by anything but our own
        close (we have not closed), the channel ends at once -- no more acks, no more
        delivery -- and the payer, who spent it, is struck. (Unknown: a lagging view;
        the open-time check saw it unspent.)"""
        payee = self.book.ends.get(channel_id)
        if not isinstance(payee, Payee) or payee.state is not State.OPEN:
            return []
        if output.state is not OutputState.SPENT:
            return []
        record = payee.record()
        self.book.funding_checked.pop(channel_id, None)
        payee.mark_refunded(output.spent_by or "")
        self.book.counts["fundings_lost"] += 1
        log.warning(
            "channel %s: funding spent by %s while open; ended with %d sat acked uncollected",
            channel_id.hex()[:16],
            (output.spent_by or "?")[:16],
            record.acked_total,
        )
        effects: list[Effect] = [Flush(channel_id), Wake(channel_id), Ended(channel_id)]
        if self.book.admission.strike(record.peer_id, now):
            effects.append(HangUp(record.peer_id, "spent the funding of an open channel"))
        return effects


def close_request(payer: Payer) -> Frame:
    """What a payer sends to close: a release when nothing was paid, else a close."""
    cid = payer.terms.channel_id
    if payer.record().seq == 0:
        return ChannelRelease(cid, payer.release_signature())
    return ChannelClose(cid)


def funding_problem(output: OutputStatus, terms: Terms) -> str | None:
    """Why a channel's funding output, as our chain view shows it, backs nothing (None:
    it exists, is unspent and pays exactly the agreed capacity to the agreed 2-of-2)."""
    where = f"{terms.funding_txid}:{terms.funding_vout}"
    if output.state is OutputState.SPENT:
        return f"funding output {where} is already spent (by {output.spent_by or 'a tx'})"
    if output.state is not OutputState.UNSPENT:
        return f"funding output {where} is not in our chain view"
    if output.satoshis != terms.capacity or output.script != terms.funding_script:
        return f"funding output {where} does not pay the capacity to the 2-of-2"
    return None


def channel_summary(record: Record, service: str, height: int | None) -> dict[str, Any]:
    """One channel's accounting, JSON-ready (`mesh status`).

    `signed_total` is the latest total the payer signed; `paid_on_chain` what the
    settlement paid the payee (None before it, 0 after a refund); for a payer whose
    coins are still in the channel, `locked_until` is the expiry height and
    `blocks_left` the blocks until it while it is ahead of `height` (the chain's, None
    when unknown), and `refund_due` says the expiry is reached. `refused` is the
    payee's refusal of a payer's funding ("code: reason"; None when it took it): such a
    channel never opens, and the refund at the expiry takes the coins back.
    """
    terms = record.terms
    expiry = terms.expiry_height
    locking = record.role is Role.PAYER and record.state in LOCKING_STATES and height is not None
    blocks_left = expiry - height if locking and height is not None else 0
    return {
        "channel_id": terms.channel_id.hex(),
        "role": record.role.value,
        "peer": record.peer_id,
        "service": service,
        "state": record.state.value,
        "capacity": terms.capacity,
        "total": record.total,
        "acked_total": record.acked_total,
        "close_txid": record.close_txid,
        "signed_total": record.total,
        "paid_on_chain": record.paid_on_chain,
        "expiry_height": expiry,
        "locked_until": expiry if blocks_left > 0 else None,
        "blocks_left": blocks_left if blocks_left > 0 else None,
        "refund_due": locking and blocks_left <= 0,
        "refused": record.refused or None,
    }


__all__ = [
    "LOCKING_STATES",
    "Settlement",
    "channel_summary",
    "close_request",
    "funding_problem",
]
