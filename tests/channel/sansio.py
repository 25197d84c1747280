"""Two channel protocols joined in memory, without an event loop (h11's ConnectionPair).

`Side` executes a `ChannelProtocol`'s effects the plainest way there is: a dict for
the store, a list per direction for the link, `FakeChain` for the chain. Every effect
is logged in order, so a test asserts on what the protocol asked for and when.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bsv.script import Script
from bsv.transaction import Transaction, TransactionInput, TransactionOutput

from mesh.chain.base import OutputState, OutputStatus
from mesh.chain.errors import ChainError, ChainUnavailable, TxRejected
from mesh.chain.rules import Policy
from mesh.chain.tx import parse_exact
from mesh.channel.config import ChannelConfig, Standing
from mesh.channel.effects import (
    BroadcastClose,
    BroadcastFunding,
    BroadcastRefund,
    CheckAdmit,
    CheckCloseClaim,
    CheckFunding,
    CheckFundingUnspent,
    CheckOffer,
    CheckPeer,
    CheckSpender,
    CheckStored,
    CommitNow,
    Effect,
    Flush,
    OpenEnded,
    Persist,
    Reack,
    Reply,
    Send,
    SendAfterCommit,
)
from mesh.channel.fees import offered_fees
from mesh.channel.protocol import ChannelProtocol
from mesh.channel.state import Record
from mesh.channel.txs import p2pkh_for_key
from mesh.identity import Identity
from mesh.wire import Frame

E = TypeVar("E")


class FakeChain:
    """Outputs by outpoint; a broadcast spends its inputs (a second spend is refused
    as ``double-spend``) and creates its outputs."""

    def __init__(self, height: int = 100, policy: Policy | None = None) -> None:
        self.height = height
        self.policy = policy or Policy()
        self.outputs: dict[tuple[str, int], OutputStatus] = {}

    def broadcast(self, raw: bytes) -> str:
        tx = parse_exact(raw)
        txid = tx.txid()
        for inp in tx.inputs:
            where = (inp.source_txid, inp.source_output_index)
            known = self.outputs.get(where)
            if known is not None and known.state is OutputState.SPENT:
                if known.spent_by == txid:
                    return txid  # the same again
                raise TxRejected("double-spend", f"{where} spent by {known.spent_by}")
            if known is not None:
                self.outputs[where] = OutputStatus(
                    *where, OutputState.SPENT, known.satoshis, known.script, txid
                )
        for vout, out in enumerate(tx.outputs):
            if (txid, vout) not in self.outputs:
                script = out.locking_script.serialize()
                self.outputs[(txid, vout)] = OutputStatus(
                    txid, vout, OutputState.UNSPENT, out.satoshis, script
                )
        return txid

    def output(self, txid: str, vout: int) -> OutputStatus:
        return self.outputs.get((txid, vout), OutputStatus(txid, vout, OutputState.UNKNOWN))


def funding_tx(script: bytes, capacity: int) -> bytes:
    """A funding transaction paying `capacity` to `script` as its output 0."""
    source = secrets.token_hex(32)
    tx = Transaction(
        [TransactionInput(source_txid=source, source_output_index=0, unlocking_script=Script())],
        [TransactionOutput(Script(script), capacity)],
    )
    raw: bytes = tx.serialize()
    return raw


@dataclass
class Side:
    """One agent's protocol and the world its effects touch."""

    protocol: ChannelProtocol
    chain: FakeChain
    now: float = 0.0
    log: list[Effect] = field(default_factory=list)
    outbox: list[Frame] = field(default_factory=list)
    pending: list[Frame] = field(default_factory=list)
    dirty: set[bytes] = field(default_factory=set)
    reack: set[bytes] = field(default_factory=set)
    stored: dict[bytes, Record] = field(default_factory=dict)
    replies: list[Frame] = field(default_factory=list)
    seen: dict[bytes, str] = field(default_factory=dict)
    commits: int = 0
    standing: Standing = field(default_factory=Standing)
    """What the shell would know of its storage and the networks (`CheckPeer`)."""
    admit: Callable[[str, str], tuple[str, str] | None] | None = None
    """The application's policy (`CheckAdmit`); None: no objection."""
    chain_down: str = ""
    """Why the chain does not answer a `CheckOffer` ("": it answers)."""
    ended: list[OpenEnded] = field(default_factory=list)

    @property
    def peer_id(self) -> str:
        return self.protocol.identity.peer_id

    def run(self, effects: list[Effect]) -> None:
        for effect in effects:
            self.do(effect)

    def do(self, effect: Effect) -> None:
        self.log.append(effect)
        p, s = self.protocol, self.protocol.settlement
        if isinstance(effect, Persist):
            self.dirty.add(effect.channel_id)
        elif isinstance(effect, CommitNow | Flush):
            self.dirty.add(effect.channel_id)
            self.commit()
        elif isinstance(effect, Reack):
            self.reack.add(effect.channel_id)
        elif isinstance(effect, Send):
            self.outbox.append(effect.frame)
        elif isinstance(effect, SendAfterCommit):
            self.pending.append(effect.frame)
        elif isinstance(effect, Reply):
            self.replies.append(effect.frame)
        elif isinstance(effect, OpenEnded):
            self.ended.append(effect)
        elif isinstance(effect, CheckPeer):
            self.run(p.peer_checked(effect.peer_id, effect.frame, self.standing, self.now))
        elif isinstance(effect, CheckAdmit):
            frame = effect.frame
            verdict = None if self.admit is None else self.admit(effect.peer_id, frame.service)
            self.run(p.admitted(effect.peer_id, frame, verdict, self.now))
        elif isinstance(effect, CheckOffer) and self.chain_down:
            cid = effect.frame.channel_id
            self.run(p.chain_unavailable(effect.peer_id, cid, self.chain_down, self.now))
        elif isinstance(effect, CheckOffer):
            seen = self.seen.get(effect.frame.channel_id)
            self.run(
                p.offer_checked(
                    effect.peer_id,
                    effect.frame,
                    self.chain.height,
                    seen,
                    self.now,
                    policy=self.chain.policy,
                )
            )
        elif isinstance(effect, CheckFunding):
            peer, cid = effect.peer_id, effect.channel_id
            terms = p.book.end(cid).terms
            try:
                self.chain.broadcast(effect.raw)
            except ChainUnavailable as exc:  # (as `ChannelEffects._check_funding`)
                self.run(p.funding_checked(peer, cid, None, self.now, unavailable=str(exc)))
            except ChainError as exc:
                self.run(p.funding_checked(peer, cid, None, self.now, refused=str(exc)))
            else:
                out = self.chain.output(terms.funding_txid, terms.funding_vout)
                self.run(p.funding_checked(peer, cid, out, self.now))
        elif isinstance(effect, BroadcastFunding):
            self.chain.broadcast(effect.raw)
            self.run(p.opening.funding_broadcast(effect.channel_id))
        elif isinstance(effect, BroadcastClose | BroadcastRefund):
            answer = s.close_broadcast if isinstance(effect, BroadcastClose) else s.refund_broadcast
            try:
                txid = self.chain.broadcast(effect.raw)
            except TxRejected as exc:
                self.run(answer(effect.channel_id, None, exc.rule, str(exc)))
            else:
                self.run(answer(effect.channel_id, txid))
        elif isinstance(effect, CheckFundingUnspent):
            terms = p.book.end(effect.channel_id).terms
            out = self.chain.output(terms.funding_txid, terms.funding_vout)
            self.run(s.funding_watched(effect.channel_id, out, self.now))
        elif isinstance(effect, CheckCloseClaim):
            self.run(s.close_claim_checked(effect, self.chain.output(effect.txid, effect.vout)))
        elif isinstance(effect, CheckSpender):
            terms = p.book.end(effect.channel_id).terms
            spent_by = self.chain.output(terms.funding_txid, terms.funding_vout).spent_by
            self.run(s.spender_found(effect.channel_id, spent_by or "", None, ()))
        elif isinstance(effect, CheckStored):
            stored = self.stored.get(effect.channel_id)
            self.run(s.stored_close(effect.peer_id, effect.channel_id, stored))

    def commit(self) -> None:
        """Write what is dirty, make the acks it allows, then send what waited."""
        p = self.protocol
        records = [p.book.current(cid)[0] for cid in sorted(self.dirty) if cid in p.book.ends]
        for record in records:
            self.stored[record.terms.channel_id] = record
            acked = p.acknowledge(record, record.terms.channel_id in self.reack)
            if acked is not None:
                self.pending.append(acked[0])
                self.log.append(acked[1])
        self.run(p.book.committed(records, lambda cid: False))
        self.outbox += self.pending
        self.pending, self.dirty, self.reack = [], set(), set()
        self.commits += 1

    def receive(self, sender: Side, frame: Frame, last: bool = True) -> None:
        self.run(self.protocol.receive(sender.peer_id, frame, self.now, last))

    def of(self, kind: type[E]) -> list[E]:
        """The effects of one type, in order."""
        return [e for e in self.log if isinstance(e, kind)]


def side(chain: FakeChain, config: ChannelConfig | None = None) -> Side:
    identity = Identity.generate()
    payouts: dict[bytes, bytes] = {}

    def payout(cid: bytes) -> bytes:
        return payouts.setdefault(cid, p2pkh_for_key(Identity.generate().public_key))

    return Side(ChannelProtocol(identity, config or ChannelConfig(), payout), chain)


def deliver(sender: Side, receiver: Side) -> int:
    """Hand everything `sender` sent to `receiver`, in order; returns how many."""
    frames, sender.outbox = sender.outbox, []
    for frame in frames:
        receiver.receive(sender, frame)
    return len(frames)


def settle_link(a: Side, b: Side) -> None:
    """Deliver both ways until nobody has anything to say."""
    while deliver(a, b) + deliver(b, a):
        pass


def propose(payer: Side, payee: Side, capacity: int = 100_000, lifetime: int = 20) -> bytes:
    """A payer's offer of a new channel, its funding built (`ChannelManager.open`'s
    first steps); returns its id."""
    cid = secrets.token_bytes(32)
    p = payer.protocol.opening
    expiry = payer.chain.height + lifetime
    payout = p2pkh_for_key(Identity.generate().public_key)
    fees = offered_fees(p.config, payer.chain.policy)
    script, keys = p.funding_script(payee.peer_id, cid, capacity, fees, expiry, payout)
    raw = funding_tx(script, capacity)
    txid = parse_exact(raw).txid()
    offer = p.propose(
        payee.peer_id,
        cid,
        "svc",
        capacity,
        fees,
        expiry,
        payout,
        txid,
        keys,
        funding_raw=raw,
        now=payer.now,
    )
    payer.run(offer)
    return cid


def converse(payer: Side, payee: Side, cid: bytes) -> OpenEnded:
    """Carry an open's conversation (its payee's replies to `Opening.answered`, as
    `ChannelManager.open` does) until the protocol ends it."""
    before = len(payer.ended)
    while not [e for e in payer.ended[before:] if e.channel_id == cid]:
        deliver(payer, payee)
        deliver(payee, payer)
        replies, payer.replies = payer.replies, []
        assert replies, "the payee did not answer"
        for reply in replies:
            payer.run(payer.protocol.opening.answered(cid, reply))
    return payer.ended[-1]


def open_channel(payer: Side, payee: Side, capacity: int = 100_000, lifetime: int = 20) -> bytes:
    """A payer's open, step by step as `ChannelManager.open` takes it."""
    cid = propose(payer, payee, capacity, lifetime)
    ended = converse(payer, payee, cid)
    if ended.failure is not None:
        raise ended.failure
    return cid
