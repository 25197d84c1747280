"""Schema 6 of the anchoring tables: rows name streams and audiences by ids.

A store written by version 5 (agent and stream in every row, the audience's 33-byte
key) migrates with every row, proof and receipt as it was; a row then takes well under
100 bytes; an id inserted by a transaction that rolled back is never used.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from mesh.anchoring.archive import BuyerArchive
from mesh.anchoring.batch import BatchPolicy, PendingBatch, batch_root
from mesh.anchoring.errors import NotAnchored
from mesh.anchoring.hashchain import StreamWriter
from mesh.anchoring.kept import KeptRecords
from mesh.anchoring.recordlog import read_record
from mesh.anchoring.schema import ANCHORING_SCHEMA
from mesh.anchoring.service import AnchorConfig
from mesh.anchoring.store import AnchorStore
from mesh.identity import Identity
from mesh.store import Schema, Store
from tests.anchoring.helpers import BUYER, PRODUCER, create_ledger, open_store, running_anchorer

P = PRODUCER.public_key
OTHER = Identity.from_secret(bytes(range(3, 35))).public_key
ROW = (
    "r.seq, r.hash, r.origin, r.batch, r.path, r.seg, r.off, r.pseg, r.poff,"
    " COALESCE(r.body, x''), COALESCE(r.signature, x'')"
)
"""An ``anchor_records`` row as version 5 held it, after its agent, stream, audience."""


def _build(base: Path) -> None:
    """A producer (two streams, two audiences, anchored and not) and a buyer (kept
    records proven with the path in the row, in a segment, and not yet)."""
    ledger = create_ledger(base / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=10, max_age=1e9))

    async def go() -> None:
        with open_store(base / "buyer") as store:
            archive = BuyerArchive(store)
            async with running_anchorer(base / "producer", ledger, config=config) as run:
                log = run.anchorer.log_many
                kept = await log(
                    "vibration", [b"rms=%d" % i for i in range(24)], audience=BUYER.public_key
                )
                await log("vibration", [b"rms=%d" % i for i in range(24, 30)], audience=OTHER)
                await log("meter", [b"paid %d" % i for i in range(7)])
                await run.anchorer.anchor_now()
                await run.chain.mine()
                await run.anchorer.wait_mined()
                late = await log("vibration", [b"late", b"later"], audience=BUYER.public_key)
                for record in kept[:10:2]:
                    archive.keep(record.body, record.signature, producer=P)
                archive.kept.log.fold()  # these rows are written before their receipt
                for record in [*kept[10::2], *late]:
                    archive.keep(record.body, record.signature, producer=P)
                receipts = await run.anchorer.receipts(
                    "vibration", [r.seq for r in kept[::2]], audience=BUYER.public_key
                )
            for receipt in receipts:
                archive.accept_receipt(P, receipt)
            archive.close()

    trio.run(go)


def _as_version_5(source: Path, target: Path, *, inline: bool) -> None:
    """`source`'s store as version 5 laid it out (`inline`: the first own batch's
    bodies in the rows, as versions 1 and 2 held them)."""
    shutil.copytree(source / "records", target / "records")
    with Store(target / "agent.db") as store:
        store.register(Schema("anchoring", ANCHORING_SCHEMA.migrations[:5]))
    with sqlite3.connect(target / "agent.db") as db:
        db.execute("ATTACH ? AS new", (str(source / "agent.db"),))
        db.execute("INSERT INTO anchor_batches SELECT * FROM new.anchor_batches")
        db.execute("INSERT INTO anchor_segments SELECT * FROM new.anchor_segments")
        db.execute(
            "INSERT INTO anchor_records (agent, stream, audience, seq, hash, origin, batch,"
            " path, seg, off, pseg, poff, body, signature)"
            f" SELECT s.agent, s.stream, p.key, {ROW} FROM new.anchor_records r"
            " JOIN new.anchor_streams s ON s.id = r.sid"
            " LEFT JOIN new.anchor_peers p ON p.id = r.audience"
        )
        if inline:
            first = "(SELECT MIN(id) FROM anchor_batches WHERE origin = 'own')"
            rows = db.execute(f"SELECT seq, seg, off FROM anchor_records WHERE batch = {first}")
            for seq, seg, off in rows.fetchall():
                body, signature = read_record(target / "records", seg, off)
                db.execute(
                    "UPDATE anchor_records SET body = ?, signature = ?, seg = NULL, off = NULL"
                    f" WHERE batch = {first} AND seq = ?",
                    (body, signature, seq),
                )


def _rows(store: Store, version: int) -> list[tuple[Any, ...]]:
    """Every record row as version 5 held it (agent, stream, audience key first)."""
    if version == 5:
        sql = f"SELECT agent, stream, audience, {ROW.replace('r.', '')} FROM anchor_records"
    else:
        sql = (
            f"SELECT s.agent, s.stream, p.key, {ROW} FROM anchor_records r"
            " JOIN anchor_streams s ON s.id = r.sid LEFT JOIN anchor_peers p ON p.id = r.audience"
        )
    return sorted(tuple(row) for row in store.query(sql))


def _seen(data: Path) -> dict[str, Any]:
    """What a store answers: proofs (per record and per batch), receipts per audience,
    stream summaries, restart state, kept records waiting for a receipt."""
    with open_store(data) as store:
        records, kept = AnchorStore(store), KeptRecords(store)
        rows = _rows(store, 6)
        proofs: dict[tuple[str, int], dict[str, Any] | str] = {}
        for agent, stream, _, seq, *_ in rows:
            try:
                proofs[(stream, seq)] = records.proof(agent, stream, seq).to_document()
            except NotAnchored as exc:  # the refusal must be the same too
                proofs[(stream, seq)] = repr(exc)
        seen = {
            "proofs": proofs,
            "batches": [
                [p.to_document() for p in records.batch_proofs(b.id)]
                for b in records.batches(state="mined")
                if b.origin == "own"
            ],
            "receipts": [
                records.receipts(P, stream, list(range(40)), audience=audience)
                for stream in ("vibration", "meter")
                for audience in (None, BUYER.public_key, OTHER, b"\x02" * 33)
            ],
            "streams": [s.to_json() for s in records.streams()],
            "agents": records.agents_for("vibration"),
            "state": records.load_state(P),
            "unproven": kept.unproven(P, 100),
            "held": kept.held_hashes(P, "vibration", range(40)),
            "last": kept.last_kept(P, "vibration"),
        }
        records.log.close()
        kept.log.close()
    return seen


def test_a_version_5_store_migrates_with_every_row_proof_and_receipt(tmp_path: Path) -> None:
    _build(tmp_path)
    for name in ("producer", "buyer"):
        expected = _seen(tmp_path / name)
        old = tmp_path / "v5" / name
        _as_version_5(tmp_path / name, old, inline=name == "producer")
        with Store(old / "agent.db") as store:
            assert store.version("anchoring") == 5
            before = _rows(store, 5)
        assert before and any(row[2] for row in before) == (name == "producer")  # audiences
        assert expected == _seen(old), name  # opening it migrates
        with Store(old / "agent.db") as store:
            assert store.version("anchoring") == 6
            assert _rows(store, 6) == before
            (segment_bodies,) = store.query(
                "SELECT COUNT(*) FROM anchor_records WHERE seg IS NOT NULL"
                " AND (body IS NOT NULL OR signature IS NOT NULL)"
            )[0]
            assert segment_bodies == 0  # the empty blobs of segment rows are gone
    proofs = _seen(tmp_path / "v5" / "buyer")["proofs"]
    assert sum(isinstance(p, dict) for p in proofs.values()) == 12  # kept: 5 + 7 proven


def test_an_index_row_takes_less_than_100_bytes(tmp_path: Path) -> None:
    """10 000 readings of one stream to one buyer, in batches: the row's keys are ids."""
    store = open_store(tmp_path)
    records = AnchorStore(store)
    records.log.recover()
    writer = StreamWriter(PRODUCER)
    signed = [
        writer.append("readings/vibration", b"x" * 40, 1_700_000_000_000 + i) for i in range(10_000)
    ]
    for first in range(0, len(signed), 1000):
        chunk = signed[first : first + 1000]
        records.insert_own(chunk, [BUYER.public_key] * len(chunk))
        hashes = tuple(s.hash for s in chunk)
        batch = PendingBatch("readings/vibration", first, hashes)
        records.plan_batches(P, [(batch, batch_root(hashes))], 1.0)
    records.log.close()
    ((pages,),) = store.query("SELECT SUM(pgsize) FROM dbstat WHERE name = 'anchor_records'")
    store.close()
    assert isinstance(pages, int)
    per_row = pages / 10_000  # ~165 bytes with agent, stream and audience keys
    assert per_row <= 100, per_row


def test_an_id_inserted_by_a_rolled_back_write_is_never_used(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    records = AnchorStore(store)
    record = StreamWriter(PRODUCER).append("vibration", b"0", 1)
    records.insert_own([record], [BUYER.public_key])
    with pytest.raises(RuntimeError), store.write() as db:
        records.log.insert_waiting(db)  # the stream's and the buyer's ids...
        raise RuntimeError("a later write of the transaction failed")  # ...roll back
    with store.write() as db:  # another writer takes those ids
        db.execute("INSERT INTO anchor_streams (agent, stream) VALUES (?, 'other')", (OTHER,))
        db.execute("INSERT INTO anchor_peers (key) VALUES (?)", (OTHER,))
    assert records.log.fold() == 1
    ((agent, stream, audience),) = store.query(
        "SELECT s.agent, s.stream, p.key FROM anchor_records r"
        " JOIN anchor_streams s ON s.id = r.sid JOIN anchor_peers p ON p.id = r.audience"
    )
    assert (agent, stream, audience) == (P, "vibration", BUYER.public_key)
    assert records.load_state(P).heads["vibration"].hash == record.hash
    records.log.close()
    store.close()
