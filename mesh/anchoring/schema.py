"""The anchoring tables' schema: what `mesh.anchoring.store` and its readers query.

Component ``anchoring`` of `mesh.store.Store`, and its migrations (each entry of
`ANCHORING_SCHEMA.migrations` runs once, in order, when a store opens): the tables
``anchor_batches`` (one row per batch, and how far its anchoring got), ``anchor_records``
(one index row per record: hash, batch, where its body and path are), ``anchor_streams``
and ``anchor_peers`` (the small ids rows name an (agent, stream) and an audience by) and
``anchor_segments`` (the segment files `mesh.anchoring.recordlog` writes). What the rows
mean, and the queries on them, are `mesh.anchoring.store`'s and `mesh.anchoring.kept`'s.
(docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

from mesh.store import Schema

ANCHORING_SCHEMA = Schema(
    "anchoring",
    (
        """
        CREATE TABLE anchor_batches (
            id INTEGER PRIMARY KEY,
            agent BLOB NOT NULL,
            stream TEXT NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            root BLOB NOT NULL,
            origin TEXT NOT NULL CHECK (origin IN ('own', 'kept')),
            state TEXT NOT NULL CHECK (state IN ('planned', 'built', 'broadcast', 'mined')),
            txid TEXT,
            raw BLOB,
            fee INTEGER,
            block_height INTEGER,
            block_hash TEXT,
            bump BLOB,
            created_at REAL NOT NULL,
            UNIQUE (agent, stream, first_seq)
        );
        CREATE INDEX anchor_batches_by_state ON anchor_batches (state);
        CREATE TABLE anchor_records (
            agent BLOB NOT NULL,
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            body BLOB NOT NULL,
            signature BLOB NOT NULL,
            origin TEXT NOT NULL CHECK (origin IN ('own', 'kept')),
            batch INTEGER REFERENCES anchor_batches (id),
            path BLOB,
            PRIMARY KEY (agent, stream, seq)
        ) WITHOUT ROWID;
        CREATE INDEX anchor_records_by_batch ON anchor_records (batch, seq);
        """,
        # 2: who an own record was delivered to (receipts go only to them), and the
        # kept records still waiting for a receipt.
        """
        ALTER TABLE anchor_records ADD COLUMN audience BLOB;
        CREATE INDEX anchor_records_unproven ON anchor_records (agent, stream, seq)
            WHERE origin = 'kept' AND path IS NULL;
        """,
        # 3: record bodies move to segment files (`mesh.anchoring.recordlog`): a row
        # with ``seg`` set holds an empty body and signature, read from (seg, off); a
        # kept batch counts the records it proved (``held``, first and last seq held).
        """
        ALTER TABLE anchor_records ADD COLUMN seg INTEGER;
        ALTER TABLE anchor_records ADD COLUMN off INTEGER;
        ALTER TABLE anchor_batches ADD COLUMN held INTEGER;
        ALTER TABLE anchor_batches ADD COLUMN held_first INTEGER;
        ALTER TABLE anchor_batches ADD COLUMN held_last INTEGER;
        UPDATE anchor_batches SET
            held = (SELECT COUNT(*) FROM anchor_records r
                    WHERE r.batch = anchor_batches.id AND r.path IS NOT NULL),
            held_first = (SELECT MIN(seq) FROM anchor_records r
                          WHERE r.batch = anchor_batches.id AND r.path IS NOT NULL),
            held_last = (SELECT MAX(seq) FROM anchor_records r
                         WHERE r.batch = anchor_batches.id AND r.path IS NOT NULL)
            WHERE origin = 'kept';
        CREATE TABLE anchor_segments (
            id INTEGER PRIMARY KEY,
            origin TEXT NOT NULL CHECK (origin IN ('own', 'kept')),
            indexed_to INTEGER NOT NULL,
            live INTEGER NOT NULL
        );
        """,
        # 4: a batch's records are found by their seq range (the primary key); the only
        # secondary index left holds the records not in a batch yet (own records not
        # batched, kept ones not proven), which are few: every index entry is written,
        # and checkpointed, once per record.
        """
        DROP INDEX anchor_records_by_batch;
        DROP INDEX anchor_records_unproven;
        CREATE INDEX anchor_records_unbatched ON anchor_records (agent, stream, seq)
            WHERE batch IS NULL;
        """,
        # 5: a kept record's Merkle path may live in a segment (``pseg``, ``poff``).
        """
        ALTER TABLE anchor_records ADD COLUMN pseg INTEGER;
        ALTER TABLE anchor_records ADD COLUMN poff INTEGER;
        """,
        # 6: rows name their (agent, stream) and audience by ids (~165 bytes a row
        # down to ~67); a row whose record is in a segment holds no body or signature.
        """
        CREATE TABLE anchor_streams (
            id INTEGER PRIMARY KEY, agent BLOB NOT NULL, stream TEXT NOT NULL,
            UNIQUE (agent, stream)
        );
        CREATE TABLE anchor_peers (id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE);
        INSERT INTO anchor_streams (agent, stream)
            SELECT DISTINCT agent, stream FROM anchor_records ORDER BY agent, stream;
        INSERT INTO anchor_peers (key)
            SELECT DISTINCT audience FROM anchor_records WHERE audience IS NOT NULL;
        CREATE TABLE anchor_records_6 (
            sid INTEGER NOT NULL REFERENCES anchor_streams (id),
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            origin TEXT NOT NULL CHECK (origin IN ('own', 'kept')),
            batch INTEGER REFERENCES anchor_batches (id),
            audience INTEGER REFERENCES anchor_peers (id),
            seg INTEGER, off INTEGER, body BLOB, signature BLOB,
            path BLOB, pseg INTEGER, poff INTEGER,
            PRIMARY KEY (sid, seq)
        ) WITHOUT ROWID;
        INSERT INTO anchor_records_6 (sid, seq, hash, origin, batch, audience, seg, off,
                                      body, signature, path, pseg, poff)
            SELECT s.id, r.seq, r.hash, r.origin, r.batch, p.id, r.seg, r.off,
                   NULLIF(r.body, x''), NULLIF(r.signature, x''), r.path, r.pseg, r.poff
            FROM anchor_records r
            JOIN anchor_streams s ON s.agent = r.agent AND s.stream = r.stream
            LEFT JOIN anchor_peers p ON p.key = r.audience
            ORDER BY s.id, r.seq;
        DROP TABLE anchor_records;
        ALTER TABLE anchor_records_6 RENAME TO anchor_records;
        CREATE INDEX anchor_records_unbatched ON anchor_records (sid, seq)
            WHERE batch IS NULL;
        """,
    ),
)
