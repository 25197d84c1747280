"""Records in segment files with a lazily folded index: bytes written, crashes, torn tails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from mesh.anchoring.hashchain import StreamWriter
from mesh.anchoring.kept import KeptRecords
from mesh.anchoring.recordlog import segments_dir
from mesh.anchoring.segments import HEADER, scan
from mesh.anchoring.store import AnchorStore
from tests.anchoring.helpers import BUYER, PRODUCER, open_store

READING = json.dumps({"rms_mm_s": 1.234567, "peak_mm_s": 3.456789, "temp_c": 41.25}).encode()


def _written_per_record(tmp_path: Path, origin: str, count: int) -> tuple[float, float]:
    """(bytes written, bytes stored) per record when `count` records arrive one at a
    time, as a 100/s feed's do, measured in a process of its own (/proc/self/io)."""
    script = textwrap.dedent(
        f"""
        import json, os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path.cwd())!r})
        from mesh.anchoring.hashchain import StreamWriter
        from mesh.anchoring.kept import KeptRecords
        from mesh.anchoring.store import AnchorStore
        from tests.anchoring.helpers import BUYER, PRODUCER, open_store

        def written():
            fields = dict(l.split(": ") for l in open("/proc/self/io").read().splitlines())
            return int(fields["write_bytes"])

        data = Path({str(tmp_path)!r}) / {origin!r}
        store = open_store(data)
        writer = StreamWriter(PRODUCER)
        own, kept = AnchorStore(store), KeptRecords(store)
        own.log.recover(); kept.log.recover()
        first = writer.append("readings/vibration", b"warm-up", 1)
        own.insert_own([first], [BUYER.public_key]) if {origin!r} == "own" else kept.keep(first)
        own.log.fold(); kept.log.fold()
        before_files = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
        os.sync(); before = written()
        for i in range({count}):
            record = writer.append("readings/vibration", {READING!r}, 1_700_000_000_000 + i)
            if {origin!r} == "own":
                own.insert_own([record], [BUYER.public_key])
            else:
                kept.keep(record)
        own.log.close(); kept.log.close()
        store.close()
        os.sync(); after = written()
        stored = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) - before_files
        print(json.dumps([after - before, stored]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    written, stored = json.loads(out.stdout)
    return written / count, stored / count


def test_a_reading_costs_at_most_twice_what_it_stores(tmp_path: Path) -> None:
    """One reading per commit used to write ~20 KB (WAL pages, then the checkpoint);
    in a segment it is written once, and its index row in a large fold."""
    for origin in ("own", "kept"):
        written, stored = _written_per_record(tmp_path, origin, 5000)
        assert stored > 200, (origin, stored)
        assert written <= 2 * stored, (origin, written, stored)


def test_records_survive_a_crash_before_their_index_is_written(tmp_path: Path) -> None:
    data = tmp_path / "a"
    store = open_store(data)
    records = AnchorStore(store)
    writer = StreamWriter(PRODUCER)
    signed = [writer.append("vibration", b"%d" % i, 1) for i in range(10)]
    records.insert_own(signed[:5], [BUYER.public_key] * 5)
    records.insert_own(signed[5:])
    assert records.log.waiting == 10
    records.log.close(fold=False)  # as a kill -9 leaves it: the rows were never folded
    store.close()

    store = open_store(data)
    records = AnchorStore(store)
    state = records.load_state(PRODUCER.public_key)
    assert state.heads["vibration"].seq == 9
    assert state.heads["vibration"].hash == signed[9].hash
    assert [seq for _, seq, _ in state.pending] == list(range(10))
    with store.read() as db:
        audience = db.execute(  # rows name their stream and audience by ids
            "SELECT p.key FROM anchor_records r JOIN anchor_streams s ON s.id = r.sid"
            " JOIN anchor_peers p ON p.id = r.audience"
            " WHERE r.seq = 2 AND s.stream = 'vibration'"
        ).fetchone()[0]
    assert bytes(audience) == BUYER.public_key
    records.log.close()
    store.close()


def test_a_torn_tail_is_cut_and_the_log_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "a"
    store = open_store(data)
    records = AnchorStore(store)
    writer = StreamWriter(PRODUCER)
    records.insert_own([writer.append("vibration", b"%d" % i, 1) for i in range(3)])
    records.log.close(fold=False)
    store.close()
    segment = next(segments_dir(store).glob("*.seg"))
    with segment.open("ab") as f:  # power lost mid-append: half an entry
        f.write(b"\x40\x00\x00\x00\x01\x02")
    store = open_store(data)
    records = AnchorStore(store)
    assert records.load_state(PRODUCER.public_key).heads["vibration"].seq == 2
    writer = StreamWriter(PRODUCER, records.load_state(PRODUCER.public_key).heads)
    records.insert_own([writer.append("vibration", b"3", 1)])
    records.log.close()
    assert [len(p) > 0 for _, _, p in scan(segment)] == [True] * 4
    assert os.path.getsize(segment) == max(end for _, end, _ in scan(segment, HEADER))
    store.close()


def test_kept_records_are_found_before_and_after_their_index_is_written(tmp_path: Path) -> None:
    store = open_store(tmp_path / "buyer")
    kept = KeptRecords(store)
    writer = StreamWriter(PRODUCER)
    first = writer.append("vibration", b"0", 1)
    assert kept.keep(first) is None
    assert kept.keep(first) == first.hash  # a duplicate, before any fold
    assert kept.last_kept(PRODUCER.public_key, "vibration") == 0
    kept.log.fold()
    assert kept.keep(first) == first.hash  # and after
    second = writer.append("vibration", b"1", 1)
    assert kept.keep(second) is None
    assert kept.last_kept(PRODUCER.public_key, "vibration") == 1
    assert kept.held_hashes(PRODUCER.public_key, "vibration", [0, 1]) == {
        0: first.hash,
        1: second.hash,
    }
    kept.log.close()
    store.close()


def test_a_segment_killed_before_its_header_was_whole_is_begun_again(tmp_path: Path) -> None:
    data = tmp_path / "a"
    store = open_store(data)
    records = AnchorStore(store)
    writer = StreamWriter(PRODUCER)
    records.insert_own([writer.append("vibration", b"0", 1)])
    records.log.close(fold=False)
    segment = next(segments_dir(store).glob("*.seg"))
    segment.write_bytes(segment.read_bytes()[:3])  # the file as a kill during creation left it
    store.close()
    store = open_store(data)
    records = AnchorStore(store)
    assert records.load_state(PRODUCER.public_key).heads == {}
    records.insert_own([StreamWriter(PRODUCER).append("vibration", b"0", 1)])
    records.log.close()
    assert [seq for _, seq, _ in records.load_state(PRODUCER.public_key).pending] == [0]
    store.close()


async def test_kept_records_are_written_once_with_their_path_and_survive_a_crash(
    tmp_path: Path,
) -> None:
    """A buyer's readings wait in memory for their receipt and are indexed once, path
    included (no second write of every row). Proven out of order and then killed: the
    restart indexes the rest from the segment and skips what is there."""
    from mesh.anchoring.archive import BuyerArchive
    from mesh.anchoring.batch import BatchPolicy
    from mesh.anchoring.proof import verify_proof
    from mesh.anchoring.service import AnchorConfig
    from tests.anchoring.helpers import create_ledger, running_anchorer

    ledger = create_ledger(tmp_path / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=5, max_age=1e9))
    store = open_store(tmp_path / "buyer")
    archive = BuyerArchive(store)
    async with running_anchorer(tmp_path / "producer", ledger, config=config) as run:
        records = await run.anchorer.log_many("vibration", [b"rms=%d" % i for i in range(10)])
        for record in records:
            archive.keep(record.body, record.signature, producer=PRODUCER.public_key)
        assert archive.kept.log.waiting == 10
        await run.anchorer.anchor_now()
        await run.chain.mine()
        await run.anchorer.wait_mined()
        receipts = await run.anchorer.receipts("vibration", list(range(10)))
        headers = _headers(tmp_path / "ledger.db")
    second = next(r for r in receipts if r.paths[0].seq == 5)
    assert archive.accept_receipt(PRODUCER.public_key, second) == 5  # 5..9 first
    assert archive.kept.log.waiting == 5
    with store.read() as db:
        rows = db.execute(
            "SELECT seq, batch IS NOT NULL, path IS NULL, pseg IS NOT NULL FROM anchor_records"
        ).fetchall()
    # Inserted once, in their batch, the path in the segment (not in the row).
    assert sorted(rows) == [(seq, 1, 1, 1) for seq in range(5, 10)]
    archive.kept.log.close(fold=False)  # killed: 0..4 were never indexed
    store.close()

    store = open_store(tmp_path / "buyer")
    archive = BuyerArchive(store)  # recovers 0..4, skips 5..9
    assert archive.unproven(PRODUCER.public_key, 100) == {"vibration": [0, 1, 2, 3, 4]}
    first = next(r for r in receipts if r.paths[0].seq == 0)
    assert archive.accept_receipt(PRODUCER.public_key, first) == 5
    for seq in range(10):
        assert verify_proof(archive.proof(PRODUCER.public_key, "vibration", seq), headers)
    assert archive.unproven(PRODUCER.public_key, 100) == {}
    archive.close()
    store.close()


def _headers(ledger: Path) -> object:
    from mesh.anchoring.headers import HeaderChain
    from mesh.chain.ledger import LocalLedger

    with LocalLedger.open(ledger) as opened:
        return HeaderChain.from_ledger(opened)
