"""The receipt exchange: how a data-feed buyer gets what it needs to prove its readings.

Both halves run in every agent (any agent may sell a feed and buy one):

- As a *buyer*, every `interval` seconds and whenever a session comes up, it asks each
  producer it has a session with (and every `ABSENT_EVERY` seconds each producer it
  holds readings of without one, dialling it) for receipts of the kept readings still
  without a proof (`ReceiptRequest`: one stream, the lowest `MAX_RECEIPT_REQUEST` seqs). Each
  `AnchorReceipt` that comes back is checked against the records held
  (`BuyerArchive.accept_receipt`) and stored; from then on `mesh proof --agent …`
  exports those readings' proofs from the buyer's own data dir.
- As a *producer*, it answers a request with receipts for those of the seqs that are in
  a mined batch and were delivered to the asking peer (the anchorer stores each
  reading's audience); anything else gets no answer, and the buyer asks again later.
  Each peer may ask about `RECEIPT_SEQS_PER_SECOND` seqs a second (twice that at once);
  a request beyond that is not answered (counted as throttled), so a peer cannot make
  a producer look up and prove readings without end.

`Archive` is where the bought readings go in the first place: the buyer's kept
records, on a store connection of their own (they are written from the Trio thread).

Pull, not push: a receipt lost with a session or a restart costs nothing, the producer
keeps no per-buyer state beyond what it already stores, and a buyer that comes back
days later still collects its receipts. A receipt that does not hold is logged, counted
and dropped; it never changes what the buyer holds. (docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import trio

from mesh.anchoring.archive import BuyerArchive
from mesh.anchoring.errors import NotAnchored, ReceiptRejected, RecordNotFound
from mesh.anchoring.frames import MAX_RECEIPT_REQUEST, AnchorReceipt, ReceiptRequest
from mesh.anchoring.record import SignedRecord
from mesh.anchoring.service import Anchorer
from mesh.identity import parse_peer_id
from mesh.net.ratelimit import PeerBudgets
from mesh.store import Store
from mesh.wire import Frame

log = logging.getLogger(__name__)

Send = Callable[[str, Frame], Awaitable[None]]
"""send(peer_id, frame): best effort over the peer's session."""
ABSENT_EVERY = 30.0
"""Seconds between asks of producers we hold kept readings of but no session with (a
buyer back after a restart, a session closed while idle): each ask dials one."""
ABSENT_FIRST = 3.0
"""Seconds after start of the first such ask (discovery has listed the site by then)."""
RECEIPT_SEQS_PER_SECOND = 4 * MAX_RECEIPT_REQUEST
"""What one peer may ask about per second: an honest buyer asks about at most
`MAX_RECEIPT_REQUEST` seqs per stream every `interval` (every 0.25 s in `collect`)."""


class Archive:
    """The readings this agent bought, kept with their signatures for later proofs."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.archive = BuyerArchive(store)

    def keep_signed(self, signed: SignedRecord) -> None:
        """Keep a verified record; a gap or fork in the producer's stream is logged."""
        kept = self.archive.keep(signed.body, signed.signature, producer=signed.agent)
        for finding in kept.findings:
            log.warning("reading from %s: %s", signed.agent.hex()[:16], finding)

    def proven(self, producer: bytes, stream: str, seq: int) -> bool:
        """Whether a kept record has its producer's receipt (its proof is here)."""
        try:
            self.archive.proof(producer, stream, seq)
        except (NotAnchored, RecordNotFound):
            return False
        return True

    def last_proven(self, producer: bytes, stream: str) -> int | None:
        """The highest seq of `producer`'s `stream` a receipt proved here (None: none)."""
        return self.archive.last_proven(producer, stream)

    def close(self) -> None:
        """Write what waits of its index, and close its store connection."""
        try:
            self.archive.close()
        finally:
            self._store.close()


@dataclass(frozen=True)
class ReceiptStatistics:
    """Counters of both halves since start."""

    requests_sent: int
    receipts_accepted: int
    receipts_rejected: int
    records_proven: int
    requests_answered: int
    requests_refused: int
    requests_throttled: int
    receipts_sent: int


class ReceiptExchange:
    """Asks producers for receipts (buyer) and answers such requests (producer)."""

    def __init__(
        self,
        archive: BuyerArchive,
        anchorer: Anchorer,
        send: Send,
        peers: Callable[[], Iterable[str]],
        *,
        interval: float = 2.0,
        absent_every: float = ABSENT_EVERY,
        seqs_per_second: float = RECEIPT_SEQS_PER_SECOND,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        """`peers()` names the peers with a session now; `archive` must be usable from
        the Trio thread (its own store connection). Each peer may ask about
        `seqs_per_second` seqs a second, twice that at once (`clock` tells the time).
        Producers we wait on without a session are asked every `absent_every` seconds
        (`send` dials them: sessions on demand)."""
        self.archive = archive
        self.anchorer = anchorer
        self._send = send
        self._peers = peers
        self.interval = interval
        self.absent_every = absent_every
        self._budgets = PeerBudgets(seqs_per_second, 2 * seqs_per_second)
        self._clock = clock
        self._counts = dict.fromkeys(ReceiptStatistics.__dataclass_fields__, 0)

    def statistics(self) -> ReceiptStatistics:
        """A snapshot of the counters."""
        return ReceiptStatistics(**self._counts)

    def unproven(self) -> int:
        """How many kept readings of peers with a session still wait for a receipt
        (counted up to `MAX_RECEIPT_REQUEST` per stream)."""
        return sum(
            len(seqs) for peer_id in self._peers() for seqs in self._wanted(peer_id).values()
        )

    def _wanted(self, peer_id: str) -> dict[str, list[int]]:
        return self.archive.unproven(parse_peer_id(peer_id), MAX_RECEIPT_REQUEST)

    # ------------------------------------------------------------------ buyer

    async def run(self) -> None:
        """Ask every producer with a session every `interval` seconds, and those we wait
        on without one every `absent_every` (run in a nursery)."""
        # The first ask of absent producers once discovery had a few seconds to list them.
        absent_asked = self._clock() - self.absent_every + ABSENT_FIRST
        while True:
            now = self._clock()
            absent = now - absent_asked >= self.absent_every
            if absent:
                absent_asked = now
            await self.ask_all(absent=absent)
            await trio.sleep(self.interval)

    async def ask_all(self, *, absent: bool = False) -> int:
        """Ask every peer with a session (and, if `absent`, every producer we wait on
        without one) for the receipts we miss from it; returns how many readings were
        asked about (as `unproven`)."""
        peers = set(self._peers())
        if absent:
            peers |= {key.hex() for key in self.archive.producers_waiting()}
        return sum([await self.ask(peer_id) for peer_id in sorted(peers)])

    async def ask(self, peer_id: str) -> int:
        """Ask `peer_id` for receipts of every kept reading of it without a proof;
        returns how many readings were asked about."""
        wanted = self._wanted(peer_id)
        for stream, seqs in wanted.items():
            await self._send(peer_id, ReceiptRequest(stream, tuple(seqs)))
            self._counts["requests_sent"] += 1
        return sum(len(seqs) for seqs in wanted.values())

    async def collect(self, timeout: float, poll: float = 0.25) -> int:
        """Keep asking the producers with a session until nothing held waits for a
        receipt, or `timeout` passes, or nothing new arrives for about 3 s; returns how
        many still wait (at shutdown: absent producers are not dialled then)."""
        waiting: int | None = None
        with trio.move_on_after(timeout):
            waiting = await self.ask_all()
            quiet = 0
            while waiting and quiet < 3 * max(1, round(1.0 / poll)):
                await trio.sleep(poll)
                now = await self.ask_all()  # one query both counts and asks
                quiet = quiet + 1 if now == waiting else 0
                waiting = now
        return self.unproven() if waiting is None else waiting

    # ------------------------------------------------------------------ frames

    async def handle(self, peer_id: str, frame: Frame) -> bool:
        """Handle a receipt frame from `peer_id`; False when it is not one."""
        if isinstance(frame, ReceiptRequest):
            await self._answer(peer_id, frame)
        elif isinstance(frame, AnchorReceipt):
            self._accept(peer_id, frame)
        else:
            return False
        return True

    async def _answer(self, peer_id: str, request: ReceiptRequest) -> None:
        if len(request.seqs) > MAX_RECEIPT_REQUEST:
            self._counts["requests_refused"] += 1
            log.warning(
                "peer %s asked for %d receipts of %s at once (max %d); ignored",
                peer_id[:16],
                len(request.seqs),
                request.stream,
                MAX_RECEIPT_REQUEST,
            )
            return
        if not self._budgets.take(peer_id, len(request.seqs), self._clock()):
            self._counts["requests_throttled"] += 1
            log.debug("peer %s asks for receipts too often; not answered", peer_id[:16])
            return
        receipts = await self.anchorer.receipts(
            request.stream, request.seqs, audience=parse_peer_id(peer_id)
        )
        self._counts["requests_answered"] += 1
        for receipt in receipts:
            await self._send(peer_id, receipt)
            self._counts["receipts_sent"] += 1

    def _accept(self, peer_id: str, receipt: AnchorReceipt) -> None:
        try:
            proven = self.archive.accept_receipt(parse_peer_id(peer_id), receipt)
        except ReceiptRejected as exc:
            self._counts["receipts_rejected"] += 1
            log.warning("peer %s sent a receipt that does not hold: %s", peer_id[:16], exc)
            return
        self._counts["receipts_accepted"] += 1
        self._counts["records_proven"] += proven


__all__ = ["Archive", "ReceiptExchange", "ReceiptStatistics"]
