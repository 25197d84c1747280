"""Cold archive files: real mined batches moved out of real stores, proved from the files."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from mesh.anchoring.archive import BuyerArchive
from mesh.anchoring.batch import BatchPolicy
from mesh.anchoring.cold import (
    INDEX_NAME,
    ColdArchive,
    ColdArchiveError,
    ColdBatch,
    ColdRecord,
    rebuild_index,
    write_cold,
)
from mesh.anchoring.errors import RecordNotFound
from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.proof import Proof, verify_proof
from mesh.anchoring.recordlog import kept_path, read_record, segments_dir
from mesh.anchoring.service import AnchorConfig
from mesh.anchoring.store import AnchorStore
from mesh.store import Store
from tests.anchoring.conftest import Anchored
from tests.anchoring.helpers import PRODUCER, create_ledger, open_store, running_anchorer

P = PRODUCER.public_key


# --------------------------------------------------------------------------- builders


def cold_batches(
    store: Store, *, stream: str | None = None, upto: int | None = None
) -> list[ColdBatch]:
    """The mined batches of `store` as a mover hands them to `write_cold` (optionally only
    `stream`'s, and only those mined at or below height `upto`)."""
    out: list[ColdBatch] = []
    for b in AnchorStore(store).batches(state="mined", stream=stream):
        assert b.txid and b.raw and b.block_hash and b.bump and b.block_height is not None
        if upto is not None and b.block_height > upto:
            continue
        with store.read() as db:
            rows = db.execute(
                "SELECT seq, body, signature, path, seg, off, pseg, poff FROM anchor_records"
                " WHERE batch = ? ORDER BY seq",
                (b.id,),
            ).fetchall()
        records = []
        for seq, body, signature, path, segment, offset, pseg, poff in rows:
            if segment is not None:  # the body lives in a segment file, not in the row
                body, signature = read_record(segments_dir(store), segment, offset)
            kept = kept_path(segments_dir(store), path, pseg, poff)  # the row's, or a segment's
            records.append(ColdRecord(seq, bytes(body), bytes(signature), kept))
        out.append(
            ColdBatch(b.agent, b.stream, b.origin, b.first_seq, b.last_seq, b.root, b.txid,
                      b.raw, b.block_height, b.block_hash, b.bump, tuple(records))
        )  # fmt: skip
    return out


def evict(store: Store, batches: list[ColdBatch]) -> None:
    """Delete archived batches' rows, as the mover does once `write_cold` returned."""
    with store.write() as db:
        for b in batches:
            (batch_id,) = db.execute(
                "SELECT id FROM anchor_batches WHERE agent = ? AND stream = ? AND first_seq = ?",
                (b.agent, b.stream, b.first_seq),
            ).fetchone()
            db.execute("DELETE FROM anchor_records WHERE batch = ?", (batch_id,))
            db.execute("DELETE FROM anchor_batches WHERE id = ?", (batch_id,))


def copy_data_dir(source: Path, target: Path) -> Path:
    """A copy of an agent's store: the database (SQLite's backup, WAL included) and the
    segment files its rows point into."""
    target.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source / "agent.db") as src, sqlite3.connect(target / "agent.db") as dst:
        src.backup(dst)
    shutil.copytree(source / "records", target / "records")
    return target


def store_batches(
    data_dir: Path, *, stream: str | None = None, upto: int | None = None
) -> list[ColdBatch]:
    """`cold_batches` of the store in `data_dir`."""
    with open_store(data_dir) as store:
        return cold_batches(store, stream=stream, upto=upto)


@dataclass(frozen=True)
class Buyer:
    """A buyer that kept every third reading of a producer's ``feed`` and got receipts."""

    data_dir: Path
    headers: HeaderChain
    proofs: dict[int, Proof]


def _build_buyer(base: Path) -> Buyer:
    ledger = create_ledger(base / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=10, max_age=1e9))

    async def go() -> tuple[HeaderChain, dict[int, Proof]]:
        with open_store(base / "buyer") as store:
            archive = BuyerArchive(store)
            async with running_anchorer(base / "producer", ledger, config=config) as run:
                records = await run.anchorer.log_many("feed", [b"kWh=%d" % i for i in range(30)])
                for record in records[::3]:
                    archive.keep(record.body, record.signature, producer=P)
                await run.anchorer.anchor_now()
                await run.chain.mine()
                await run.anchorer.wait_mined()
                seqs = [r.seq for r in records[::3]]
                receipts = await run.anchorer.receipts("feed", seqs)
                headers = run.headers()
            for receipt in receipts:
                archive.accept_receipt(P, receipt)
            return headers, {seq: archive.proof(P, "feed", seq) for seq in seqs}

    headers, proofs = trio.run(go)
    return Buyer(base / "buyer", headers, proofs)


@pytest.fixture(scope="module")
def buyer(tmp_path_factory: pytest.TempPathFactory) -> Buyer:
    return _build_buyer(tmp_path_factory.mktemp("buyer"))


def damage(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def header_end(path: Path) -> int:
    """Where a data file's first block starts."""
    (length,) = struct.unpack_from(">I", path.read_bytes(), 10)
    return 18 + int(length)


# --------------------------------------------------------------------------- proofs


def test_archived_records_prove_exactly_as_the_store_did(
    anchored: Anchored, buyer: Buyer, tmp_path: Path
) -> None:
    own = store_batches(anchored.data_dir)
    kept = store_batches(buyer.data_dir)
    assert [b.origin for b in own] == ["own"] * 4 and [b.origin for b in kept] == ["kept"] * 3
    path = write_cold(tmp_path / "archive", own + kept)
    assert path.parent == tmp_path / "archive" and path.name.startswith("cold-000000001-")
    archive = ColdArchive(tmp_path / "archive")
    for (stream, seq), expected in anchored.proofs.items():
        proof = archive.proof(P, stream, seq)
        assert proof == expected
        assert verify_proof(proof, anchored.headers).record.seq == seq
    for seq, expected in buyer.proofs.items():
        proof = archive.proof(P, "feed", seq)
        assert proof == expected
        assert verify_proof(proof, buyer.headers).record.seq == seq
    # One tree build for a whole batch gives the same proofs.
    assert archive.batch_proofs(P, "vibration", 60) == [
        anchored.proofs[("vibration", s)] for s in range(50, 100)
    ]
    assert archive.batch_proofs(P, "feed", 12) == [buyer.proofs[s] for s in (12, 15, 18)]
    for stream, seq in [("vibration", 123), ("feed", 1), ("feed", 30), ("other", 0)]:
        with pytest.raises(RecordNotFound, match=f"no record {stream}/{seq} "):
            archive.proof(P, stream, seq)


def test_streams_and_agents_are_the_stores_summaries(
    anchored: Anchored, buyer: Buyer, tmp_path: Path
) -> None:
    write_cold(tmp_path, store_batches(anchored.data_dir, upto=1))  # vibration 0..99
    write_cold(tmp_path, store_batches(anchored.data_dir, upto=2)[2:])  # the rest
    write_cold(tmp_path, store_batches(buyer.data_dir))
    archive = ColdArchive(tmp_path)
    summaries = archive.streams()
    assert [
        (s.agent, s.stream, s.origin, s.records, s.anchored, s.unanchored) for s in summaries
    ] == [
        (P.hex(), "meter", "own", 7, [(0, 6)], 0),
        (P.hex(), "vibration", "own", 123, [(0, 122)], 0),
        # Per batch, the first to the last seq held (0, 3, 6, 9 | 12, 15, 18 | 21, 24, 27).
        (P.hex(), "feed", "kept", 10, [(0, 9), (12, 18), (21, 27)], 0),
    ]
    with open_store(anchored.data_dir) as s1, open_store(buyer.data_dir) as s2:
        assert summaries == AnchorStore(s1).streams() + AnchorStore(s2).streams()
    assert archive.agents_for("feed") == [P] and archive.agents_for("nothing") == []
    # A retried move (the same batches archived again, with more) counts every record once.
    write_cold(tmp_path, store_batches(anchored.data_dir))
    assert archive.streams() == summaries


def test_a_kept_batch_archived_in_two_parts(buyer: Buyer, tmp_path: Path) -> None:
    # A receipt for more of a batch's records came after the first part was archived.
    batch = store_batches(buyer.data_dir)[0]
    assert [r.seq for r in batch.records] == [0, 3, 6, 9]
    write_cold(tmp_path, [dataclasses.replace(batch, records=batch.records[::2])])  # 0, 6
    write_cold(tmp_path, [dataclasses.replace(batch, records=batch.records[1::2])])  # 3, 9
    archive = ColdArchive(tmp_path)
    for seq in (0, 3, 6, 9):  # 3 lies in both files' spans; only the second holds it
        assert archive.proof(P, "feed", seq) == buyer.proofs[seq]
    with pytest.raises(RecordNotFound):
        archive.proof(P, "feed", 4)
    (summary,) = archive.streams()
    assert summary.records == 4 and summary.anchored == [(0, 9)]


def test_lookups_and_listings_open_only_the_files_they_need(
    anchored: Anchored, tmp_path: Path
) -> None:
    archive_dir = tmp_path / "archive"
    files = [
        write_cold(archive_dir, store_batches(anchored.data_dir, stream=stream))
        for stream in ("vibration", "meter", "meter")  # the last one anew: the same file
    ]
    assert len(set(files)) == 2
    for unrelated, stream, seq in [(files[0], "meter", 3), (files[1], "vibration", 42)]:
        # Whichever file comes first in the index or the directory, the other is never
        # opened: make it unreadable (as root, bytes that fail every check), and look up.
        kept = unrelated.read_bytes()
        unrelated.write_bytes(b"\xff" * len(kept))
        archive = ColdArchive(archive_dir)
        assert archive.proof(P, stream, seq) == anchored.proofs[(stream, seq)]
        assert {s.stream: s.anchored for s in archive.streams()} == {
            "vibration": [(0, 122)],
            "meter": [(0, 6)],
        }
        assert archive.agents_for("meter") == archive.agents_for("vibration") == [P]
        other = "vibration" if stream == "meter" else "meter"
        with pytest.raises(ColdArchiveError) as caught:
            archive.proof(P, other, 5)
        assert caught.value.path == unrelated
        assert (
            str(caught.value) == f"{unrelated}: damaged archive file (not an m2mesh archive file)"
        )
        unrelated.write_bytes(kept)


# --------------------------------------------------------------------------- damage


def _flip_header(path: Path) -> None:
    damage(path, 20)


def _flip_block(path: Path) -> None:
    damage(path, path.stat().st_size - 5)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _append(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x00")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _newer(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:10] = (2).to_bytes(2, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_flip_header, "damaged archive file (the header fails its checksum)"),
        (_flip_block, "damaged archive file (block 0 fails its checksum)"),
        (_truncate, "damaged archive file (truncated: "),
        (_append, "damaged archive file (has trailing bytes: "),
        (_empty, "damaged archive file (empty)"),
        (_newer, "archive format 2; this m2mesh reads format 1"),
    ],
)
def test_a_damaged_file_is_a_clear_error_naming_it(
    anchored: Anchored, tmp_path: Path, change: Callable[[Path], None], expected: str
) -> None:
    path = write_cold(tmp_path, store_batches(anchored.data_dir, stream="meter"))
    assert ColdArchive(tmp_path).proof(P, "meter", 6) == anchored.proofs[("meter", 6)]
    change(path)
    with pytest.raises(ColdArchiveError) as caught:
        ColdArchive(tmp_path).proof(P, "meter", 6)
    assert str(caught.value).startswith(f"{path}: {expected}"), str(caught.value)


def test_the_index_is_only_a_cache_of_the_headers(anchored: Anchored, tmp_path: Path) -> None:
    first = write_cold(tmp_path, store_batches(anchored.data_dir, stream="meter"))
    index = tmp_path / INDEX_NAME
    before = index.read_bytes()
    second = write_cold(tmp_path, store_batches(anchored.data_dir, stream="vibration"))
    # A writer that stopped between its data file and the index: the file is still found.
    index.write_bytes(before)
    archive = ColdArchive(tmp_path)
    assert archive.proof(P, "vibration", 7) == anchored.proofs[("vibration", 7)]
    assert {s.stream for s in archive.streams()} == {"meter", "vibration"}
    # A damaged or missing index: the headers are read instead, and the next write or
    # rebuild_index writes a whole one again.
    for broken in (b"M2MCIDX\n garbage", None):
        if broken is None:
            index.unlink()
        else:
            index.write_bytes(broken)
        fresh = ColdArchive(tmp_path)
        assert fresh.proof(P, "meter", 2) == anchored.proofs[("meter", 2)]
        assert len(fresh.streams()) == 2
    rebuild_index(tmp_path)
    second.write_bytes(b"")  # now only the index can say what `second` held
    assert {s.stream for s in ColdArchive(tmp_path).streams()} == {"meter", "vibration"}
    assert ColdArchive(tmp_path).proof(P, "meter", 0) == anchored.proofs[("meter", 0)]
    second.unlink()
    with pytest.raises(ColdArchiveError, match="the archive file is missing"):
        ColdArchive(tmp_path).proof(P, "vibration", 7)
    rebuild_index(tmp_path)  # forget the removed file
    assert [s.stream for s in ColdArchive(tmp_path).streams()] == ["meter"]
    assert first.exists()


# --------------------------------------------------------------------------- writing


def _drop_record(b: ColdBatch) -> ColdBatch:
    return dataclasses.replace(b, records=b.records[:-1])


def _swap_records(b: ColdBatch) -> ColdBatch:
    return dataclasses.replace(b, records=(b.records[1], b.records[0], *b.records[2:]))


def _other_body(b: ColdBatch) -> ColdBatch:
    r = b.records[0]
    return dataclasses.replace(
        b, records=(dataclasses.replace(r, body=b.records[1].body), *b.records[1:])
    )


def _bad_root(b: ColdBatch) -> ColdBatch:
    return dataclasses.replace(b, root=bytes(32))


def _bad_txid(b: ColdBatch) -> ColdBatch:
    return dataclasses.replace(b, txid="00" * 32)


def _bad_path(b: ColdBatch) -> ColdBatch:
    r = b.records[0]
    assert r.path is not None
    return dataclasses.replace(
        b, records=(dataclasses.replace(r, path=bytes(len(r.path))), *b.records[1:])
    )


def _no_path(b: ColdBatch) -> ColdBatch:
    return dataclasses.replace(
        b, records=(dataclasses.replace(b.records[0], path=None), *b.records[1:])
    )


def _own_with_path(b: ColdBatch) -> ColdBatch:
    r = b.records[0]
    return dataclasses.replace(b, records=(dataclasses.replace(r, path=bytes(32)), *b.records[1:]))


@pytest.mark.parametrize(
    ("origin", "change", "expected"),
    [
        ("own", _drop_record, "holds every record of the batch"),
        ("own", _swap_records, "out of order"),
        ("own", _other_body, "the body is another agent's, stream's or seq's"),
        ("own", _bad_root, "commits to another batch"),
        ("own", _bad_txid, "does not hash to its txid"),
        ("own", _own_with_path, "without paths"),
        ("kept", _bad_path, "the path does not lead to the root"),
        ("kept", _no_path, "a kept record needs its 4-entry path"),
    ],
)
def test_write_refuses_a_batch_that_does_not_hold_together(
    anchored: Anchored,
    buyer: Buyer,
    tmp_path: Path,
    origin: str,
    change: Callable[[ColdBatch], ColdBatch],
    expected: str,
) -> None:
    source = anchored.data_dir if origin == "own" else buyer.data_dir
    good = store_batches(source)
    with pytest.raises(ColdArchiveError, match="cannot archive the ") as caught:
        write_cold(tmp_path / "archive", [*good[:-1], change(good[-1])])
    assert expected in str(caught.value)
    assert not (tmp_path / "archive").exists()  # nothing written, not even the directory
    write_cold(tmp_path / "archive", good)  # the same batches, whole, are archived


def test_writing_is_atomic_idempotent_and_compact(anchored: Anchored, tmp_path: Path) -> None:
    batches = store_batches(anchored.data_dir)
    first = write_cold(tmp_path, batches)
    assert write_cold(tmp_path, batches) == first  # a retried move: the same file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, INDEX_NAME])
    records = sum(len(b.records) for b in batches)
    # What the store keeps per record: its index row (anchor_records and its indexes, a
    # share of anchor_batches) in SQLite, and its entry in a segment file.
    with sqlite3.connect(anchored.data_dir / "agent.db") as db:
        (rows,) = db.execute(
            "SELECT SUM(pgsize - unused) FROM dbstat WHERE name LIKE 'anchor_records%'"
            " OR name IN ('anchor_batches', 'sqlite_autoindex_anchor_batches_1')"
        ).fetchone()
    segments = sum(p.stat().st_size for p in (anchored.data_dir / "records").iterdir())
    per_record, stored_per_record = first.stat().st_size / records, (rows + segments) / records
    # The signature (64 bytes as r || s) does not shrink; the agent key, stream, seq and
    # prev link of every record, its hash and the row overheads go.
    assert per_record < 0.4 * stored_per_record, (per_record, rows / records, segments / records)
    assert per_record < 90, per_record
