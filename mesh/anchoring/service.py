"""`Anchorer`: the agent's record log and anchoring task, a thin Trio shell over the core.

What it does, in one nursery (`run`):

- **log**: `log(stream, payload)` signs the next record of the stream (`StreamWriter`),
  queues it, and returns once it is committed to the agent store. Records logged while
  a commit is running share the next commit (a `mesh.commit.GroupCommit`), so a burst
  of records costs one append, not one each. Deliver a record to anyone only after `log`
  returned: a record signed but lost in a crash would be signed again, differently, at
  the same seq — a fork.
- **batch**: committed records wait in a `Batcher`; when a stream reaches
  ``max_records`` or its oldest record has waited ``max_age`` seconds of Trio time, the
  batch is cut (and with it every stream half-way to its deadline): its root computed,
  the batch recorded (``planned``), the anchor transaction funded by the agent's
  `Wallet` (explicit fee, change back to the wallet), recorded (``built``), broadcast
  through the `Chain`, and marked (``broadcast``) with the next commit.
- **confirm**: every ``confirm_interval`` seconds, broadcast anchors are looked up; a
  mined one gets its BUMP and block stored (``mined``), from which proofs and receipts
  are made. An anchor the chain has forgotten is broadcast again.
- `anchor_now()` cuts every waiting record into batches at once and anchors them,
  raising if that cannot be done; `wait_mined()` waits until every broadcast anchor is
  mined. The demo calls both before it ends.

Transactions and commits, and why so few: every SQLite commit writes each page it
changed whole (4 KiB, twice: WAL, then checkpoint), and an anchor touches the wallet's
and the batches' tables and their indexes -- about a dozen pages -- however little it
changes. So the batches cut together (every stream due, and those half-way to their
deadline riding along) share one anchor transaction, an output each (a proof names its
output by agent, stream and seq), and a cycle is one commit: planning those batches,
booking the previous broadcast (the wallet's coins spent, its change ours; its batches
``broadcast``) and funding the new transaction. A broadcast is booked by the next commit:
the next cycle's, or the confirm pass's that finds its block (and marks it mined in the
same commit); a confirm pass commits a booking alone only once it waited `BOOK_WITHIN`
seconds (`anchor_now` and a clean stop book at once). Until then its batches are
``built``, which a restart treats as "maybe on chain": it is broadcast again, and the
chain says it has it. (A sensor at 100 readings/s with two streams wrote
2.8x the bytes it stored with a transaction per batch and seven commits each.)

Restart: `run` reloads stream heads, waiting records and unfinished batches; a
``planned`` batch releases any reservation a crash left and is funded again, a
``built`` one is broadcast again (a chain accepts a transaction it already holds).

Failures to fund or broadcast (no coins, a rejection, the chain unreachable) are
logged, counted in `statistics()` and retried every ``retry_interval`` seconds; records
keep being logged meanwhile. A store (or wallet) write that fails for want of storage
(a full disk, an I/O error: `mesh.health.STORAGE_ERRORS`) is reported to the agent's
`StorageHealth` and the same write is tried again after a back-off (0.5 s doubling to
5 s) until it works: records already stored stay stored, and no `log` returns before
its record is -- callers wait. Any other store error (a constraint: a bug, or another
writer) ends the task, and every waiting `log` raises: the log must not pretend to be
durable.

Time: record timestamps come from the injected wall ``clock``; batching deadlines and
retries from Trio's clock (a `MockClock` in tests). The store, wallet and chain do the
I/O; every store or wallet call runs in a worker thread behind ``db_limiter`` (share it
with everything else that uses the same `Store`).

It must never broadcast a transaction it has not recorded first, return a record
before it is committed, or swallow a store error (a storage fault is retried, never
skipped). (docs/ARCHITECTURE.md §2, §7)
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import trio

from mesh.anchoring.batch import Batcher, BatchPolicy, PendingBatch, batch_root
from mesh.anchoring.errors import AnchoringError, RecordError
from mesh.anchoring.funding import AnchorBooks, next_group
from mesh.anchoring.hashchain import StreamWriter
from mesh.anchoring.proof import Proof, single_tx_bump
from mesh.anchoring.receipt import AnchorReceipt
from mesh.anchoring.record import MAX_PAYLOAD, SignedRecord, check_stream
from mesh.anchoring.store import AnchorStore, BatchInfo
from mesh.chain.base import Chain, TxState
from mesh.chain.errors import ChainUnavailable, TxRejected, WalletError
from mesh.chain.tx import parse_exact
from mesh.chain.wallet import Wallet
from mesh.commit import CommitFailed, GroupCommit
from mesh.errors import LocalProtocolError
from mesh.health import StorageHealth, describe
from mesh.identity import Identity
from mesh.store import Store, StoreError

log = logging.getLogger("mesh.anchoring")
T = TypeVar("T")
_RETRYABLE = (WalletError, TxRejected, ChainUnavailable)
BOOK_WITHIN = 10.0
"""Seconds an accepted anchor waits at most to be booked by a cycle's commit, or by its
block's: past them a confirm pass commits the booking alone (the wallet shows its change
no later than this)."""


@dataclass(frozen=True)
class AnchorConfig:
    """Batching and retry settings (a profile's ``anchoring`` section)."""

    batch: BatchPolicy = field(default_factory=BatchPolicy)
    confirm_interval: float = 2.0
    retry_interval: float = 10.0
    anchor_satoshis: int = 1  # `Wallet.fund` refuses 0-sat outputs; this 1 sat is burned

    def __post_init__(self) -> None:
        if self.confirm_interval <= 0 or self.retry_interval <= 0 or self.anchor_satoshis < 1:
            raise ValueError("intervals must be positive and the anchor output at least 1 sat")


@dataclass(frozen=True)
class AnchorStatistics:
    """A snapshot of the anchoring task."""

    records_logged: int
    records_waiting: int
    batches_anchored: int
    batches_unanchored: int
    batches_unconfirmed: int
    batches_mined: int
    fees_paid: int
    bytes_on_chain: int
    last_error: str
    last_txid: str = ""
    """The anchor transaction broadcast last ("" before the first)."""


_Queued = list[tuple[SignedRecord, bytes | None]]


@dataclass
class _Queue:
    """Records signed and waiting to be stored, each with who it was delivered to: the
    `Staging` of the Anchorer's `GroupCommit`, written by `insert_own` in a worker thread."""

    store: AnchorStore
    stored: Callable[[list[SignedRecord]], None]  # batch them
    failed: Callable[[BaseException], None]  # say why in the statistics
    waiting: _Queued = field(default_factory=list)

    def take(self) -> _Queued | None:
        batch, self.waiting = self.waiting, []
        return batch or None

    def write(self, batch: _Queued) -> None:
        # Signed already: written as they are (never signed again, which would fork
        # the stream), however long storage takes to come back.
        self.store.insert_own([r for r, _ in batch], [a for _, a in batch])

    def restore(self, batch: _Queued, error: BaseException) -> None:
        self.waiting[:0] = batch
        self.failed(error)

    async def after(self, batch: _Queued) -> None:
        self.stored([r for r, _ in batch])


class Anchorer:
    """An agent's signed-record log and its anchoring task (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        wallet: Wallet,
        chain: Chain,
        *,
        config: AnchorConfig | None = None,
        clock: Callable[[], float] = time.time,
        db_limiter: trio.CapacityLimiter | None = None,
        health: StorageHealth | None = None,
    ) -> None:
        """Failed writes for want of storage are reported to `health` (as component
        ``anchoring``) and retried."""
        self.identity = identity
        self.config = config or AnchorConfig()
        self.records = AnchorStore(store)
        self._books = AnchorBooks(
            self.records, wallet, identity.public_key, clock, self.config.anchor_satoshis
        )
        self._agent = identity.public_key
        self._wallet = wallet
        self._chain = chain
        self._clock = clock
        self._limiter = db_limiter or trio.CapacityLimiter(1)
        self._health = health or StorageHealth()
        self._writer: StreamWriter | None = None
        self._batcher = Batcher(self.config.batch)
        self._open_log()
        self._batch_wake = trio.Event()
        self._anchor_lock = trio.Lock()
        self._confirm_lock = trio.Lock()
        self._failure: str | None = None
        self._planned: dict[int, BatchInfo] = {}
        self._to_plan: list[tuple[PendingBatch, bytes]] = []  # cut, planned by the next cycle
        self._unbooked: list[BatchInfo] = []  # broadcast, booked by the next commit
        self._unbooked_since: float | None = None  # Trio time the oldest was accepted
        self._unconfirmed: dict[int, BatchInfo] = {}
        self._retry_at = math.inf
        self._logged = 0
        self._anchored = 0
        self._mined = 0
        self._fees = 0
        self._bytes = 0
        self._last_error = ""
        self._last_txid = ""

    # ---------------------------------------------------------------- running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load state, then log, batch, anchor and confirm until cancelled.

        May be run again after it ended (state is reloaded from the store).
        """
        state = await self._thread(self.records.load_state, self._agent)
        self._batcher = Batcher(self.config.batch)
        self._planned, self._unconfirmed = {}, {}
        self._to_plan, self._unbooked, self._unbooked_since = [], [], None
        self._retry_at = math.inf
        now = trio.current_time()
        for stream, seq, digest in state.pending:
            self._batcher.add(stream, seq, digest, now)
        for batch in state.unfinished:
            if batch.state == "broadcast":
                self._unconfirmed[batch.id] = batch
            else:
                self._planned[batch.id] = batch
        if self._planned:
            self._retry_at = now
        self._failure = None
        self._open_log()
        self._writer = StreamWriter(self.identity, state.heads)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._committer)
                nursery.start_soon(self._batch_loop)
                nursery.start_soon(self._confirm_loop)
                task_status.started()
        finally:
            failed = self._failure is not None
            self._writer = None
            self._fail("the anchorer stopped")
            with trio.CancelScope(shield=True):  # index what waits; the segment closes
                try:
                    if self._unbooked:  # else the next start broadcasts them again
                        await self._thread(self._books.book_now, list(self._unbooked))
                        self._unbooked, self._unbooked_since = [], None
                    await self._thread(functools.partial(self.records.log.close, fold=not failed))
                except (sqlite3.Error, StoreError, OSError) as exc:  # rebuilt at the next start
                    log.warning("record index not written at stop: %s", describe(exc))

    def _open_log(self) -> None:
        """An empty queue and its group commit (a new one each run)."""
        self._queue = _Queue(self.records, self._stored, self._write_failed)
        self._commits = GroupCommit(
            self._queue, self._limiter, health=self._health, component="anchoring", in_thread=True
        )

    def _fail(self, why: str) -> None:
        """Refuse new records and wake every `log` waiting for a commit, with an error."""
        if self._failure is None:
            self._failure = why
        self._commits.fail(why)

    def _write_failed(self, exc: BaseException) -> None:
        self._last_error = f"store write failed: {describe(exc)}"

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        """A store or wallet write in a worker thread, tried again while storage fails
        (`StorageHealth.retry`): nothing that must follow it happens first."""
        try:
            return await self._health.retry(
                "anchoring", lambda: self._thread(fn, *args), self._write_failed
            )
        except (sqlite3.Error, StoreError) as exc:  # not a storage fault: a bug, or a foreign
            # writer (a record index row already there): the log must stop pretending
            self._fail(f"store write failed: {exc}")
            raise AnchoringError(f"the record log cannot be stored: {exc}") from exc

    # ---------------------------------------------------------------- logging

    async def log(
        self, stream: str, payload: bytes, *, audience: bytes | None = None
    ) -> SignedRecord:
        """Sign the next record of `stream` and return it once it is stored.

        `audience` is the peer key the record is delivered to: the one peer `receipts`
        will later serve its Merkle path to. While storage fails this waits until the
        record is written (callers that must not wait check the agent's health first).
        """
        return (await self.log_many(stream, [payload], audience=audience))[0]

    async def log_many(
        self, stream: str, payloads: Sequence[bytes], *, audience: bytes | None = None
    ) -> list[SignedRecord]:
        """Sign and store several records of `stream` (one commit); returns them."""
        writer = self._writer
        if writer is None or self._failure is not None:
            raise LocalProtocolError(
                f"the anchorer is not running{f' ({self._failure})' if self._failure else ''}"
            )
        check_stream(stream)
        if not payloads:
            return []
        for payload in payloads:
            if type(payload) is not bytes or len(payload) > MAX_PAYLOAD:
                raise RecordError("payload", f"bytes of at most {MAX_PAYLOAD}")
        timestamp_ms = int(self._clock() * 1000)
        records = [writer.append(stream, payload, timestamp_ms) for payload in payloads]
        self._queue.waiting.extend((record, audience) for record in records)
        await self._flush()
        return records

    async def _flush(self) -> None:
        """Wait until every record queued so far is stored and batched."""
        try:
            await self._commits.flush()
        except CommitFailed as exc:
            raise AnchoringError(f"records not stored: {exc}") from exc

    async def _committer(self) -> None:
        try:
            await self._commits.run()
        except sqlite3.Error as exc:  # not a storage fault (those are retried): see `_write`
            self._fail(f"store write failed: {exc}")
            raise AnchoringError(f"the record log cannot be stored: {exc}") from exc

    def _stored(self, records: list[SignedRecord]) -> None:
        """`records` are committed: they wait for their batch. Wake the batch loop when
        a batch is full, and when a first record gave a stream an age deadline the loop
        is not sleeping towards yet."""
        now = trio.current_time()
        deadline = self._batcher.next_deadline()
        full = False
        for record in records:
            full = self._batcher.add(record.stream, record.seq, record.hash, now) or full
        self._logged += len(records)
        if full or self._batcher.next_deadline() != deadline:
            self._batch_wake.set()

    # ---------------------------------------------------------------- batching

    async def _batch_loop(self) -> None:
        while True:
            deadline = self._batcher.next_deadline()
            wake_at = min(math.inf if deadline is None else deadline, self._retry_at)
            with trio.move_on_at(wake_at):
                await self._batch_wake.wait()
            self._batch_wake = trio.Event()
            async with self._anchor_lock:
                self._cut(force=False)
                if (self._planned or self._to_plan) and trio.current_time() >= self._retry_at:
                    await self._anchor_planned(raise_errors=False)

    def _cut(self, *, force: bool) -> None:
        """Take due (or, forced, all) waiting records out of the batcher as batches to
        plan; streams half-way to their deadline ride along with a due one. They are
        written by the next cycle's commit (`AnchorBooks.step`)."""
        now = trio.current_time()
        streams = self._batcher.streams() if force else self._batcher.due(now)
        if streams and not force:
            streams += self._batcher.riding(now)
        for stream in streams:
            first = True
            while self._batcher.waiting(stream) and (
                force or first or stream in self._batcher.due(now)
            ):
                pending = self._batcher.take(stream, now)
                assert pending is not None
                self._to_plan.append((pending, batch_root(pending.hashes)))
                first = False
        if self._to_plan:
            self._retry_at = now

    async def anchor_now(self) -> list[BatchInfo]:
        """Anchor every record logged so far, now; returns the batches broadcast.

        Raises `AnchoringError` when a batch cannot be funded or broadcast (it stays
        planned, and the task keeps retrying it).
        """
        if self._writer is None:
            raise LocalProtocolError("the anchorer is not running")
        await self._flush()
        async with self._anchor_lock:
            before = set(self._unconfirmed)
            self._cut(force=True)
            await self._anchor_planned(raise_errors=True)
            if self._unbooked:  # booked before returning: the wallet shows it spent
                unbooked = list(self._unbooked)
                await self._write(self._books.book_now, unbooked)
                self._committed(unbooked, [])
            return [b for i, b in self._unconfirmed.items() if i not in before]

    async def _anchor_planned(self, *, raise_errors: bool) -> None:
        """Plan the batches cut, then fund, record and broadcast what is planned.

        The batches planned together share one anchor transaction (an output each, up
        to `MAX_OUTPUTS`), and a cycle writes one commit for it: planning, booking the
        previous broadcast (its coins spent, its change ours) and the funding commit
        together, and this broadcast is booked by the next commit (the next cycle's, or
        the next confirm pass's). Each commit rewrites the wallet's and the batches' pages, whatever
        it changed in them; each transaction writes the chain's. Built batches (a
        restart) are broadcast again first, a transaction at a time.
        """
        failure: tuple[BatchInfo, Exception] | None = None
        rejected: list[BatchInfo] = []
        tried: set[int] = set()
        while True:
            group = next_group([b for i, b in sorted(self._planned.items()) if i not in tried])
            if not group and not self._to_plan:
                break
            unbooked, to_plan = list(self._unbooked), list(self._to_plan)
            planned, group, unfunded = await self._write(
                self._books.step, unbooked, rejected, to_plan, group
            )
            self._committed(unbooked, rejected)
            rejected = []
            del self._to_plan[: len(to_plan)]
            for new in planned:
                self._planned[new.id] = new
            if not group:
                break
            tried.update(b.id for b in group)
            if unfunded is not None:
                failure = (group[0], unfunded)
                break
            for batch in group:
                self._planned[batch.id] = batch
            raw = group[0].raw
            assert raw is not None
            try:
                await self._chain.broadcast(parse_exact(raw))
            except TxRejected as exc:
                rejected.extend(group)
                failure = (group[0], exc)
                break
            except ChainUnavailable as exc:  # stays built: the next try broadcasts it again
                failure = (group[0], exc)
                break
            self._bytes += len(raw)
            for batch in group:
                self._accepted(batch)
        if rejected:
            unbooked = list(self._unbooked)
            await self._write(self._books.step, unbooked, rejected, [], [])
            self._committed(unbooked, rejected)
        if failure is None:
            self._retry_at = math.inf
            return
        failed, error = failure
        self._last_error = f"batch {failed.stream} {failed.first_seq}..{failed.last_seq}: {error}"
        self._retry_at = trio.current_time() + self.config.retry_interval
        self._batch_wake.set()  # the batch loop re-reads its deadline
        log.warning("anchoring delayed: %s", self._last_error)
        if raise_errors:
            raise AnchoringError(f"cannot anchor {self._last_error}") from error

    def _accepted(self, batch: BatchInfo) -> None:
        """The chain took `batch`'s anchor: watch it; book it with the next commit."""
        del self._planned[batch.id]
        self._unconfirmed[batch.id] = replace(batch, state="broadcast")
        if not self._unbooked:
            self._unbooked_since = trio.current_time()
        self._unbooked.append(batch)
        self._anchored += 1
        self._fees += batch.fee or 0
        self._last_txid = batch.txid or ""
        log.info(
            "anchored %s %d..%d in %s", batch.stream, batch.first_seq, batch.last_seq, batch.txid
        )

    def _committed(self, booked: list[BatchInfo], rejected: list[BatchInfo]) -> None:
        """The in-memory side of a committed `AnchorBooks.step` or `mark_mined`."""
        ids = {b.id for b in booked}
        self._unbooked = [b for b in self._unbooked if b.id not in ids]
        if not self._unbooked:
            self._unbooked_since = None
        for batch in rejected:
            self._planned[batch.id] = replace(batch, state="planned", txid=None, raw=None, fee=None)

    # ---------------------------------------------------------------- confirming

    async def _confirm_loop(self) -> None:
        while True:
            await trio.sleep(self.config.confirm_interval)
            await self._confirm_once()

    async def _confirm_once(self) -> None:
        async with self._confirm_lock:
            mined: list[tuple[int, int, str, bytes]] = []
            by_tx: dict[str | None, list[BatchInfo]] = {}  # one transaction, several batches
            for batch in self._unconfirmed.values():
                by_tx.setdefault(batch.txid, []).append(batch)
            for batches in by_tx.values():
                batch = batches[0]
                assert batch.txid is not None and batch.raw is not None
                try:
                    status = await self._chain.status(batch.txid)
                    if status.state is TxState.UNKNOWN:
                        await self._chain.broadcast(parse_exact(batch.raw))
                        continue
                    if status.state is TxState.REJECTED:
                        self._last_error = f"anchor {batch.txid} rejected: {status.detail}"
                        log.error("%s", self._last_error)
                        continue
                    if status.state is not TxState.MINED:
                        continue
                    bump = await self._chain.merkle_proof(batch.txid)
                except (ChainUnavailable, TxRejected) as exc:
                    self._last_error = f"confirming {batch.txid}: {exc}"
                    log.warning("%s", self._last_error)
                    continue
                if bump is None or status.block_height is None or status.block_hash is None:
                    continue
                try:
                    minimal = single_tx_bump(bump, batch.txid)
                except ValueError as exc:
                    self._last_error = f"the chain's proof of {batch.txid} is unusable: {exc}"
                    log.warning("%s", self._last_error)
                    continue
                height, block = status.block_height, status.block_hash
                mined.extend((b.id, height, block, minimal) for b in batches)
            since = self._unbooked_since
            overdue = since is not None and trio.current_time() - since >= BOOK_WITHIN
            if mined or overdue:  # one commit: what was found mined, and the broadcasts
                # no cycle booked since (a booking waits for its block or BOOK_WITHIN)
                unbooked = list(self._unbooked)
                await self._write(self._books.mark_mined, unbooked, mined)
                self._committed(unbooked, [])
                for batch_id, *_ in mined:
                    del self._unconfirmed[batch_id]
                self._mined += len(mined)

    async def wait_mined(self) -> None:
        """Return once every broadcast anchor is mined (someone must mine)."""
        while self._unconfirmed:
            await self._confirm_once()
            if self._unconfirmed:
                await trio.sleep(self.config.confirm_interval)

    # ---------------------------------------------------------------- reading

    async def proof(self, stream: str, seq: int) -> Proof:
        """A proof of our record `stream`/`seq` (`NotAnchored` until it is mined)."""
        return await self._thread(self.records.proof, self._agent, stream, seq)

    async def receipts(
        self, stream: str, seqs: Sequence[int], *, audience: bytes | None = None
    ) -> list[AnchorReceipt]:
        """Receipts for a buyer holding `seqs` of `stream` (mined batches only); with
        `audience`, only for the records that were delivered to that peer key."""
        return await self._thread(
            functools.partial(
                self.records.receipts, self._agent, stream, list(seqs), audience=audience
            )
        )

    def statistics(self) -> AnchorStatistics:
        """A snapshot of counters and the last anchoring error."""
        return AnchorStatistics(
            records_logged=self._logged,
            records_waiting=self._batcher.waiting() + len(self._queue.waiting),
            batches_anchored=self._anchored,
            batches_unanchored=len(self._planned),
            batches_unconfirmed=len(self._unconfirmed),
            batches_mined=self._mined,
            fees_paid=self._fees,
            bytes_on_chain=self._bytes,
            last_error=self._last_error,
            last_txid=self._last_txid,
        )
