"""Retention of records: anchored batches past the horizon leave the store for the archive.

An agent that runs for months must not fill its disk: at 100 readings/s the records
alone grow ~5 GB a day. `Retention.run_once(now)` moves *mined* batches (own and kept)
out of the agent store, oldest first, while either

* a batch is older than its stream's ``days`` (the batch's ``created_at``), or
* the store (``agent.db`` and its WAL plus the ``records/`` segments) is above
  ``online_mb``;

each pass takes at most `PASS_BATCHES` batches. Moved batches are written to a compact
archive file (`mesh.anchoring.cold`) from which ``mesh proof`` still exports and
``mesh verify`` still verifies, and only once that file is durable are their rows
deleted; with ``archive = false`` (the operator's explicit choice) they are dropped.
A segment file whose every record left (``anchor_segments.live`` 0) is deleted, except
each origin's newest (it may still be written to).

Never moved: a record that is not in a mined batch (unanchored records, and kept
records still waiting for their receipt), and the newest batch of each of the agent's
own streams (its last record is the stream's head: a restart continues the hash chain
from it; without it the stream would start again at seq 0 -- a fork).

Blocking SQLite and file work (run it in a worker thread behind the store's limiter);
times come in as arguments. (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.anchoring.cold import ARCHIVE_DIR, ColdBatch, ColdRecord, write_cold
from mesh.anchoring.recordlog import kept_path, read_record, segment_path, segments_dir
from mesh.anchoring.store import IN_BATCH as _IN_BATCH
from mesh.store import Store

PASS_BATCHES = 64
"""Batches moved by one pass (one archive file, one delete transaction)."""
DAY = 86_400.0


@dataclass(frozen=True)
class Keep:
    """How long one stream's anchored records stay in the store (days; None: for ever)."""

    days: float | None = 30.0


@dataclass(frozen=True)
class RetentionPolicy:
    """A profile's ``[retention]``: per-stream days, a bound on the store, and whether
    moved records are archived (the default) or dropped."""

    default: Keep = field(default_factory=Keep)
    streams: Mapping[str, Keep] = field(default_factory=dict)
    online_mb: float | None = None
    archive: bool = True

    def keep(self, stream: str) -> Keep:
        """The rule for `stream`: its own, else the default."""
        return self.streams.get(stream, self.default)


@dataclass(frozen=True)
class RetentionPass:
    """What one pass did."""

    batches: int = 0
    records: int = 0
    segments_deleted: int = 0
    archive_file: str | None = None
    store_bytes: int = 0

    @property
    def moved(self) -> bool:
        """Whether anything left the store."""
        return self.batches > 0


def store_bytes(store: Store) -> int:
    """What the store occupies: the database, its WAL and the record segments."""
    total = 0
    for suffix in ("", "-wal"):
        path = Path(f"{store.path}{suffix}")
        if path.exists():
            total += path.stat().st_size
    directory = segments_dir(store)
    if directory.is_dir():
        total += sum(p.stat().st_size for p in directory.glob("*.seg"))
    return total


class Retention:
    """Moves old anchored batches of one agent store to its archive (see module)."""

    def __init__(self, store: Store, policy: RetentionPolicy) -> None:
        self._store = store
        self.policy = policy
        self.archive_dir = store.path.parent / ARCHIVE_DIR

    def run_once(self, now: float) -> RetentionPass:
        """One pass; call again while it `moved` something to catch up."""
        size = store_bytes(self._store)
        over = self.policy.online_mb is not None and size > self.policy.online_mb * 1e6
        chosen = self._choose(now, over)
        if not chosen:
            return RetentionPass(segments_deleted=self._delete_segments(), store_bytes=size)
        batches = [self._cold(batch_id) for batch_id in chosen]
        path = write_cold(self.archive_dir, batches) if self.policy.archive else None
        records = self._delete(chosen)
        deleted = self._delete_segments()
        self._store.checkpoint()  # what was freed is reused, and the WAL is emptied
        return RetentionPass(
            len(chosen),
            records,
            deleted,
            None if path is None else path.name,
            store_bytes(self._store),
        )

    # ---------------------------------------------------------------- choosing

    def _choose(self, now: float, over: bool) -> list[int]:
        with self._store.read() as db:
            heads = {
                (bytes(agent), str(stream)): int(top)
                for agent, stream, top in db.execute(
                    "SELECT agent, stream, MAX(last_seq) FROM anchor_batches"
                    " WHERE origin = 'own' GROUP BY agent, stream"
                )
            }
            rows = db.execute(
                "SELECT id, agent, stream, origin, last_seq, created_at FROM anchor_batches"
                " WHERE state = 'mined' ORDER BY created_at, id LIMIT ?",
                (PASS_BATCHES * 8,),
            ).fetchall()
        chosen: list[int] = []
        for batch_id, agent, stream, origin, last_seq, created_at in rows:
            if origin == "own" and heads.get((bytes(agent), str(stream))) == int(last_seq):
                continue  # the stream's head lives in it
            days = self.policy.keep(str(stream)).days
            old = days is not None and float(created_at) < now - days * DAY
            if old or over:
                chosen.append(int(batch_id))
                if len(chosen) >= PASS_BATCHES:
                    break
        return chosen

    # ---------------------------------------------------------------- moving

    def _cold(self, batch_id: int) -> ColdBatch:
        with self._store.read() as db:
            batch = db.execute(
                "SELECT agent, stream, origin, first_seq, last_seq, root, txid, raw,"
                " block_height, block_hash, bump FROM anchor_batches WHERE id = ?",
                (batch_id,),
            ).fetchone()
            agent, stream, origin, first, last, root, txid, raw, height, block_hash, bump = batch
            rows = db.execute(
                "SELECT seq, body, signature, seg, off, path, pseg, poff" + _IN_BATCH,
                (agent, stream, first, last, batch_id),
            ).fetchall()
        directory = segments_dir(self._store)
        records = []
        for seq, body, signature, seg, off, path, pseg, poff in rows:
            if seg is not None:
                body, signature = read_record(directory, int(seg), int(off))
            kept = None if origin == "own" else kept_path(directory, path, pseg, poff)
            records.append(ColdRecord(int(seq), bytes(body), bytes(signature), kept))
        return ColdBatch(
            bytes(agent),
            str(stream),
            str(origin),
            int(first),
            int(last),
            bytes(root),
            str(txid),
            bytes(raw),
            int(height),
            str(block_hash),
            bytes(bump),
            tuple(records),
        )

    def _delete(self, batch_ids: list[int]) -> int:
        """Delete the batches' rows, then the batches, in one transaction. Their rows go
        first, so no record is left pointing at a deleted batch; the foreign key is not
        checked meanwhile (no index on ``batch``: SQLite would scan every record for
        each batch deleted)."""
        records = 0
        per_segment: dict[int, int] = {}
        with self._store.foreign_keys_off(), self._store.write() as db:
            for batch_id in batch_ids:
                agent, stream, first, last = db.execute(
                    "SELECT agent, stream, first_seq, last_seq FROM anchor_batches WHERE id = ?",
                    (batch_id,),
                ).fetchone()
                span = (agent, stream, first, last, batch_id)
                where = _IN_BATCH.replace(" ORDER BY seq", "")
                for column in ("seg", "pseg"):  # records, and kept records' paths
                    for seg, count in db.execute(
                        f"SELECT {column}, COUNT(*) {where} AND {column} IS NOT NULL"
                        f" GROUP BY {column}",
                        span,
                    ):
                        per_segment[int(seg)] = per_segment.get(int(seg), 0) + int(count)
                records += db.execute(
                    "DELETE" + _IN_BATCH.replace(" ORDER BY seq", ""), span
                ).rowcount
                db.execute("DELETE FROM anchor_batches WHERE id = ?", (batch_id,))
            db.executemany(
                "UPDATE anchor_segments SET live = live - ? WHERE id = ?",
                [(count, seg) for seg, count in per_segment.items()],
            )
        return records

    def _delete_segments(self) -> int:
        """Delete segment files nothing points into any more (never an origin's newest)."""
        with self._store.read() as db:
            empty = [
                int(r[0])
                for r in db.execute(
                    "SELECT s.id FROM anchor_segments s WHERE s.live <= 0 AND s.id <"
                    " (SELECT MAX(id) FROM anchor_segments n WHERE n.origin = s.origin)"
                )
            ]
        if not empty:
            return 0
        directory = segments_dir(self._store)
        for segment in empty:
            segment_path(directory, segment).unlink(missing_ok=True)
        with self._store.write() as db:
            db.executemany("DELETE FROM anchor_segments WHERE id = ?", [(s,) for s in empty])
        return len(empty)


__all__ = ["Keep", "Retention", "RetentionPass", "RetentionPolicy", "store_bytes"]
