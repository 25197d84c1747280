"""The channels one agent holds in memory, and how long it holds them (no I/O).

`ChannelBook` is the state the channel protocol (`mesh.channel.protocol`) and its
settlement rules (`mesh.channel.settle`) share: the channel ends by id, each one's
service and signed funding, the payer channels waiting for the payee's word after a
restart, and the counters. It also decides how long a channel stays in memory: an
agent runs for months, so nothing held per channel may grow with the channels it ever
had. A channel is released (`release`, which yields `Released`) once it is final and
no longer among the `keep_final` most recent final channels, or when it was an
unfunded proposal that expired; from then on the store answers for it.
(docs/ARCHITECTURE.md §4, §7)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mesh.channel.admission import Admission
from mesh.channel.config import ChannelFailure
from mesh.channel.effects import Effect, ForgetUnfunded, HangUp, Released, Send, Wake
from mesh.channel.frames import ChannelError
from mesh.channel.state import FINAL_STATES, Payee, Payer, Record, State

log = logging.getLogger("agents.channels")
UNFUNDED = frozenset({State.PROPOSED, State.REFUND_SIGNED})
"""A payee's proposals that no coin backs yet: bounded and expiring (`Admission`)."""
COUNTERS = (
    "payments_signed",
    "payments_accepted",
    "acks_received",
    "rejections",
    "sat_paid",
    "sat_earned",
    "fundings_lost",
    "channels_released",
)


class ChannelBook:
    """Every channel end held, by id, with what is kept beside it (see the module doc)."""

    def __init__(self, admission: Admission, keep_final: int) -> None:
        self.admission = admission
        self.keep_final = keep_final
        self.ends: dict[bytes, Payer | Payee] = {}
        self.service: dict[bytes, str] = {}
        self.funding: dict[bytes, bytes] = {}
        """A payer's signed funding transaction, by channel (resent until opened)."""
        self.unconfirmed: set[bytes] = set()
        """Open payer channels reloaded from the store that the payee has not acked
        since: the store may have lost our last writes (SECURITY risk 15), so no payment
        is signed until the payee's ack tells us where the channel stands."""
        self.opening: set[bytes] = set()
        """Channels whose open a task is waiting for (their replies go to it)."""
        self.funding_checked: dict[bytes, float] = {}
        """A payee's open channel -> when its funding output was last looked up."""
        self.settling: set[bytes] = set()
        """Payee closes being recorded and broadcast now (the watcher leaves them)."""
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._final: dict[bytes, None] = {}  # final channels held, in the order they ended

    # ---------------------------------------------------------------- queries

    def end(self, channel_id: bytes) -> Payer | Payee:
        """The end held for `channel_id`; `ChannelFailure` when none is."""
        end = self.ends.get(channel_id)
        if end is None:
            raise ChannelFailure(f"no channel {channel_id.hex()}")
        return end

    def owned(self, peer_id: str, channel_id: bytes) -> Payer | Payee | None:
        """The end of `channel_id` if `peer_id` is its counterparty (else None: a peer
        never touches another's channel)."""
        end = self.ends.get(channel_id)
        return end if end is not None and end.record().peer_id == peer_id else None

    def current(self, channel_id: bytes) -> tuple[Record, str]:
        """A held channel's record and service now (what a commit writes)."""
        return self.ends[channel_id].record(), self.service[channel_id]

    def records(self) -> list[tuple[Record, str]]:
        """Every channel held (the `keep_final` most recent final ones among them)."""
        return [(end.record(), self.service[cid]) for cid, end in self.ends.items()]

    def in_use(self, channel_id: bytes, txid: str, vout: int) -> str | None:
        """Why a channel id or funding outpoint offered is held already (None: it is not)."""
        if channel_id in self.ends:
            return "channel id already in use"
        for end in self.ends.values():
            if (end.terms.funding_txid, end.terms.funding_vout) == (txid, vout):
                return "funding outpoint already in use"
        return None

    # ---------------------------------------------------------------- holding

    def hold(self, end: Payer | Payee, service: str) -> None:
        """Hold a new (or reloaded) channel end."""
        cid = end.terms.channel_id
        self.ends[cid] = end
        self.service[cid] = service

    def committed(self, records: list[Record], marked: Callable[[bytes], bool]) -> list[Effect]:
        """After each commit: note the channels it made final and release the oldest
        final ones beyond `keep_final`. One `marked` for the next commit stays until a
        later one: that commit reads its state. (Each released channel's row may leave
        the store's write-behind cache: `Released`.)"""
        for record in records:
            if record.state in FINAL_STATES:
                self._final.setdefault(record.terms.channel_id)
        excess = len(self._final) - self.keep_final
        effects: list[Effect] = []
        if excess > 0:
            for cid in list(self._final)[:excess]:
                if not marked(cid):
                    effects += self.release(cid)
        return effects

    def release(self, channel_id: bytes) -> list[Effect]:
        """Let go of everything held for a channel (its row stays in the store). Nothing
        happens for one not held."""
        if self.ends.pop(channel_id, None) is None:
            return []
        self._final.pop(channel_id, None)
        self.service.pop(channel_id, None)
        self.funding.pop(channel_id, None)
        self.funding_checked.pop(channel_id, None)
        self.unconfirmed.discard(channel_id)
        self.admission.settled(channel_id)
        self.counts["channels_released"] += 1
        # (a waiter holds the end and sees it final)
        return [Wake(channel_id), Released(channel_id)]

    def expire_proposals(self, now: float) -> list[Effect]:
        """Release the unfunded proposals whose lifetime is over (`admission`'s
        deadline), and have their rows deleted."""
        gone = [
            cid
            for cid in self.admission.expired(now)
            if cid in self.ends and self.ends[cid].state in UNFUNDED
        ]
        effects: list[Effect] = []
        for cid in gone:
            effects += self.release(cid)
        if gone:
            effects.append(ForgetUnfunded(tuple(gone)))
        return effects

    def reject(
        self, peer_id: str, channel_id: bytes, code: str, reason: str, now: float, strike: bool
    ) -> list[Effect]:
        """Refuse a peer's frame with a `ChannelError` naming the rule (no state
        changed); a peer `strike`s out of its session after repeated violations."""
        log.warning(
            "peer %s: channel %s rejected (%s): %s",
            peer_id[:16],
            channel_id.hex()[:16],
            code,
            reason,
        )
        self.counts["rejections"] += 1
        effects: list[Effect] = [Send(peer_id, ChannelError(channel_id, code, reason))]
        if strike and self.admission.strike(peer_id, now):
            effects.append(HangUp(peer_id, "repeated channel violations"))
        return effects


__all__ = ["COUNTERS", "UNFUNDED", "ChannelBook"]
