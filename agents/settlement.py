"""Settling channels: cooperative close and release, refunds, the expiry watcher.

A payer asks its payee to close (`ChannelClose`), or to release a channel nothing was
paid on (`ChannelRelease`); the payee co-signs the latest state (or the payer's
release), records the close transaction, broadcasts it and answers `ChannelClosed`.
A payer believes that answer only when the chain shows its part. The watcher closes a
payee's channel within `close_margin_blocks` of its expiry and broadcasts a payer's
refund once it is final.

Accounting follows the chain: a settled channel records what its settlement paid the
payee (`Record.paid_on_chain`) beside the latest total the payer signed, and
`channel_summary` shows both, and how long a payer's coins stay locked in a channel.

Settled channels do not pile up: once final for `keep_settled` seconds, a channel's
row is cut to a tombstone (`ChannelStore.compact`, at start and every
`compact_every` seconds).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

from agents.channel_base import ChannelBase, funding_outpoint
from agents.channel_config import ChannelFailure
from agents.logs import log_context
from mesh.chain.base import OutputState, Utxo
from mesh.chain.errors import ChainUnavailable, TxRejected
from mesh.chain.tx import parse_exact
from mesh.channel.frames import ChannelClose, ChannelClosed, ChannelError, ChannelRelease
from mesh.channel.state import FINAL_STATES, Payee, Payer, PaymentRejected, Record, Role, State
from mesh.channel.txs import Terms
from mesh.wire import Frame

log = logging.getLogger("agents.channels")


class ChannelSettlement(ChannelBase):
    """The closing half of the channel manager (see the module doc)."""

    async def close(self, channel_id: bytes) -> Record:
        """Close cooperatively: the payee co-signs the latest state and broadcasts it.

        A channel nothing was paid on is released instead (`ChannelRelease`): the payee
        co-signs our signature on the release, and the coins, less the close fee, come
        back at once rather than with the refund at the expiry. A final channel no longer
        held in memory is answered from the store.
        """
        end = self._ends.get(channel_id)
        if end is None:
            stored = await self._thread(self._channels.find, channel_id)
            if stored is None or stored.record.state not in FINAL_STATES:
                raise ChannelFailure(f"no channel {channel_id.hex()}")
            return stored.record
        with log_context(peer=end.record().peer_id, channel=channel_id.hex()):
            if isinstance(end, Payee):
                await self._close_as_payee(end)
                return end.record()
            if end.state is State.REFUSED:
                return end.record()  # never opened: nothing to close, the refund settles it
            if end.state in (State.OPEN, State.FUNDED):  # funded: the payee may hold it open
                end.event("close")
                await self._commits.flush(channel_id)
            await self._send(end.record().peer_id, close_request(end))
            try:
                with trio.fail_after(self.config.open_timeout):
                    while end.state is State.CLOSING:
                        await self._ack_event(channel_id).wait()
            except trio.TooSlowError:  # not TimeoutError: callers expect a ChannelFailure
                raise ChannelFailure(
                    f"channel {channel_id.hex()[:16]} not closed in time"
                ) from None
            return end.record()

    async def _on_close_request(self, peer_id: str, frame: ChannelClose | ChannelRelease) -> None:
        cid = frame.channel_id
        end = self._owned(peer_id, cid)
        if not isinstance(end, Payee):
            await self._closed_before(peer_id, cid)
        elif end.state is State.CLOSED:
            # Closed while the payer was away (watcher, restart): tell it again.
            record = end.record()
            await self._send(peer_id, ChannelClosed(cid, record.close_txid, record.total))
        elif isinstance(frame, ChannelClose):
            await self._close_as_payee(end)
        elif end.state is not State.CLOSING:  # (closing already: a resend)
            try:
                end.accept_release(frame.signature)
            except PaymentRejected as exc:
                await self._reject(peer_id, cid, exc.code, exc.reason)
                return
            await self._co_sign_and_broadcast(end)

    async def _closed_before(self, peer_id: str, channel_id: bytes) -> None:
        """A close request for a channel we do not hold: one we closed before this
        start (final channels are not reloaded) is answered from the store."""
        stored = await self._thread(self._channels.find, channel_id)
        if stored is None or stored.record.peer_id != peer_id:
            unknown = ChannelError(channel_id, "unknown-channel", "no such channel")
            await self._send(peer_id, unknown)
            return
        record = stored.record
        if record.role is Role.PAYEE and record.state is State.CLOSED:
            await self._send(peer_id, ChannelClosed(channel_id, record.close_txid, record.total))

    async def _on_closed(self, peer_id: str, frame: ChannelClosed) -> None:
        payer = self._owned(peer_id, frame.channel_id)
        if not isinstance(payer, Payer) or payer.state not in (State.OPEN, State.CLOSING):
            return
        # A payee's word is not a close. Believe it only when the chain holds our part of
        # a close we signed: once marked closed we stop watching, and the refund at the
        # expiry is what protects our coins from a payee that never really closes. With
        # nothing left for us (rest 0: a channel paid to its capacity) the close must be
        # what spends the funding output; our output is the second of a close, the only
        # one of a release (total 0).
        record = payer.record()
        rest = payer.terms.max_total - frame.total
        vout = 1 if frame.total else 0
        if rest > 0:
            shown = await self._holds(frame.close_txid, vout, rest, payer.terms.payer_payout)
        else:
            funding = await self.chain.output(*funding_outpoint(payer.terms))
            shown = funding.state is OutputState.SPENT and funding.spent_by == frame.close_txid
        if not (record.acked_total <= frame.total <= record.total and shown):
            log.warning(
                "peer %s claims close %s of channel %s paying %d; the chain does not show it",
                peer_id[:16],
                frame.close_txid,
                frame.channel_id.hex()[:16],
                frame.total,
            )
            return
        payer.mark_closed(frame.close_txid, frame.total)  # perhaps less than we signed
        await self._commits.flush(frame.channel_id)
        if rest > 0:
            coin = Utxo(frame.close_txid, vout, rest, payer.terms.payer_payout)
            await self._write(self.wallet.add_utxos, [coin])
        self._notify_ack(frame.channel_id)

    async def _close_as_payee(self, payee: Payee) -> None:
        if payee.state is not State.OPEN:
            return
        if payee.record().total == 0:
            return  # nothing to claim: the payer releases it, or its refund settles it
        payee.event("close")
        await self._co_sign_and_broadcast(payee)

    async def _co_sign_and_broadcast(self, payee: Payee) -> None:
        """Persist the closing state, record the close tx, then broadcast it."""
        cid = payee.terms.channel_id
        self._settling.add(cid)  # the watcher leaves it alone meanwhile
        try:
            raw = payee.closing_tx()
            await self._commits.flush(cid)
            await self._write(lambda: self._channels.save_raw(cid, close=raw))
            await self._finish_close(payee, raw)
        finally:
            self._settling.discard(cid)

    async def _retry_close(self, payee: Payee) -> None:
        """A close recorded but not accepted yet (the chain refused or did not answer):
        broadcast it again, unless a task is closing it right now."""
        cid = payee.terms.channel_id
        if cid in self._settling:
            return
        self._settling.add(cid)
        try:
            await self._finish_close(payee, payee.closing_tx())
        finally:
            self._settling.discard(cid)

    async def _finish_close(self, end: Payer | Payee, raw: bytes) -> None:
        cid = end.terms.channel_id
        if end.state is not State.CLOSING:
            return  # settled meanwhile
        paid = end.record().total  # what this close pays the payee (a release: 0)
        if paid and isinstance(end, Payee):
            # Before the coin can exist: a crash anywhere after this never leaves it
            # unlooked-for (the runtime's wallet sync finds it).
            await self._adopt_payout(end)
        try:
            txid = await self.chain.broadcast(parse_exact(raw))
        except TxRejected as exc:
            if exc.rule in ("double-spend", "spent-input") and isinstance(end, Payee):
                # Besides our close, only the refund spends the funding: we were away
                # past the expiry and the payer took its coins back.
                end.mark_refunded("")
                await self._commits.flush(cid)
                self._notify_ack(cid)
                log.warning("channel %s was refunded before we closed it", cid.hex()[:16])
            else:  # stays CLOSING; tried again at the next start
                log.warning("close of channel %s not accepted: %s", cid.hex()[:16], exc)
            return
        end.mark_closed(txid, paid)
        await self._commits.flush(cid)
        record = end.record()
        if isinstance(end, Payee):
            if paid:  # a release pays us nothing
                coin = Utxo(txid, 0, paid, end.terms.payee_payout)
                await self._write(self.wallet.add_utxos, [coin])
            await self._send(record.peer_id, ChannelClosed(cid, txid, record.total))
        log.info("channel %s closed by %s: %d sat paid", cid.hex()[:16], txid[:16], record.total)

    async def _watcher(self) -> None:
        """Check at once (a payee restarted inside its close margin closes now), then
        every `watch_interval`; a chain that does not answer is tried again."""
        while True:
            try:
                await self.check_expiry(await self.chain.height())
            except ChainUnavailable as exc:
                log.warning("expiry watch: the chain did not answer: %s", exc)
            await trio.sleep(self.config.watch_interval)

    async def _compact_settled(self) -> None:
        """At start, then every `compact_every` seconds: cut the channels final for
        longer than `keep_settled` to tombstones. A storage fault goes to `health`, and
        the compaction is tried again until it works (`_write`)."""
        while True:
            before = time.time() - self.config.keep_settled
            compacted = await self._write(self._channels.compact, before)
            self._compacted += compacted
            if compacted:
                log.info("compacted %d settled channel(s) to tombstones", compacted)
            await trio.sleep(self.config.compact_every)

    async def check_expiry(self, height: int) -> None:
        """Close (payee) or refund (payer) every channel whose expiry is near or past;
        end a payee's channel whose funding output is gone."""
        for end in list(self._ends.values()):
            with log_context(peer=end.record().peer_id, channel=end.terms.channel_id.hex()):
                expiry = end.terms.expiry_height
                if isinstance(end, Payee):
                    if end.state is State.CLOSING:  # not accepted yet: until it is, again
                        await self._retry_close(end)
                        continue
                    if end.state is not State.OPEN:
                        self._funding_checked.pop(end.terms.channel_id, None)
                        continue
                    if height >= expiry - self.config.close_margin_blocks:
                        log.info("channel %s near expiry: closing", end.terms.channel_id.hex()[:16])
                        await self._close_as_payee(end)
                    elif self._funding_due(end.terms.channel_id):
                        await self._check_funding(end)
                elif end.state in LOCKING_STATES and height >= expiry:
                    await self._refund(end)

    def _funding_due(self, channel_id: bytes) -> bool:
        """Whether an open channel's funding is due for a check (every
        `funding_check_interval` seconds each, not every watcher pass: a payee with many
        channels must not queue its closes behind chain lookups)."""
        now = trio.current_time()
        if now - self._funding_checked.get(channel_id, -math.inf) < (
            self.config.funding_check_interval
        ):
            return False
        self._funding_checked[channel_id] = now
        return True

    async def _check_funding(self, payee: Payee) -> None:
        """An open channel is served only while its funding output is unspent in our
        chain view: spent by anything but our own close (we have not closed), the
        channel ends at once -- no more acks, no more delivery -- and the payer, who
        spent it, is struck."""
        output = await self.chain.output(*funding_outpoint(payee.terms))
        if output.state is not OutputState.SPENT or payee.state is not State.OPEN:
            return  # (unknown: a lagging view; the open-time check saw it unspent)
        cid = payee.terms.channel_id
        record = payee.record()
        self._funding_checked.pop(cid, None)
        payee.mark_refunded(output.spent_by or "")
        self._fundings_lost += 1
        await self._commits.flush(cid)
        self._notify_ack(cid)
        if self.on_ended is not None:
            self.on_ended(cid)
        log.warning(
            "channel %s: funding spent by %s while open; ended with %d sat acked uncollected",
            cid.hex()[:16],
            (output.spent_by or "?")[:16],
            record.acked_total,
        )
        if self.admission.strike(record.peer_id, trio.current_time()):
            self.node.hang_up(record.peer_id, "spent the funding of an open channel")

    async def _refund(self, payer: Payer) -> None:
        cid = payer.terms.channel_id
        raw = payer.signed_refund()
        try:
            txid = await self.chain.broadcast(parse_exact(raw))
        except TxRejected as exc:
            if exc.rule in ("double-spend", "spent-input"):  # the payee closed it first
                close_txid, paid = await self._close_paid(payer.terms)
                payer.mark_closed(close_txid, paid)
                await self._commits.flush(cid)
                if close_txid:  # what the close paid us back, as the chain shows it
                    await self._book_own_outputs(close_txid, payer.terms.payer_payout)
                self._notify_ack(cid)
            else:
                log.warning("refund of channel %s not accepted yet: %s", cid.hex()[:16], exc)
            return
        payer.mark_refunded(txid)
        await self._commits.flush(cid)
        coin = Utxo(
            txid, 0, payer.terms.capacity - payer.terms.refund_fee, payer.terms.payer_payout
        )
        await self._write(self.wallet.add_utxos, [coin])
        self._notify_ack(cid)
        log.info("channel %s refunded by %s", cid.hex()[:16], txid[:16])

    async def _book_own_outputs(self, txid: str, script: bytes) -> None:
        """Add to the wallet the unspent outputs of `txid` (a close: the payer's is the
        second, a release's the only one) that pay `script`."""
        coins = []
        for vout in (0, 1):
            out = await self.chain.output(txid, vout)
            if out.state is OutputState.UNSPENT and out.script == script and out.satoshis:
                coins.append(Utxo(txid, vout, out.satoshis, script))
        if coins:
            await self._write(self.wallet.add_utxos, coins)

    async def _close_paid(self, terms: Terms) -> tuple[str, int | None]:
        """The transaction that spent a channel's funding (not our refund) and what it
        paid the payee, as our chain view shows them: a close pays it its first output,
        a release nothing ("", None: the view does not say)."""
        funding = await self.chain.output(*funding_outpoint(terms))
        txid = funding.spent_by
        if txid is None:
            return "", None
        first = await self.chain.output(txid, 0)
        if first.state is OutputState.UNKNOWN or first.satoshis is None:
            return txid, None
        return txid, first.satoshis if first.script == terms.payee_payout else 0

    # ------------------------------------------------------------------ accounting

    async def chain_height(self) -> int | None:
        """The chain's height, or None when it does not answer (for `summaries`)."""
        try:
            return await self.chain.height()
        except ChainUnavailable:
            return None

    def summaries(self, height: int | None) -> list[dict[str, Any]]:
        """Every channel this manager holds, as `channel_summary` shows it at `height`."""
        return [channel_summary(record, service, height) for record, service in self.records()]


LOCKING_STATES = frozenset({State.FUNDED, State.OPEN, State.CLOSING, State.REFUSED})
"""A payer's coins are in the channel until a close or, at the expiry, the refund."""


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


def close_request(payer: Payer) -> Frame:
    """What a payer sends to close: a release when nothing was paid, else a close."""
    cid = payer.terms.channel_id
    if payer.record().seq == 0:
        return ChannelRelease(cid, payer.release_signature())
    return ChannelClose(cid)


__all__ = ["LOCKING_STATES", "ChannelSettlement", "channel_summary", "close_request"]
