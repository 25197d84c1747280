"""Retention: old anchored batches leave the store for the archive, proofs still verify,
unanchored records and stream heads stay, and the store keeps under its bound."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import trio

from mesh.anchoring.batch import BatchPolicy
from mesh.anchoring.cold import ColdArchive
from mesh.anchoring.errors import RecordNotFound
from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.proof import verify_proof
from mesh.anchoring.retention import DAY, Keep, Retention, RetentionPolicy, store_bytes
from mesh.anchoring.service import AnchorConfig
from mesh.anchoring.store import AnchorStore
from mesh.chain.ledger import LocalLedger
from tests.anchoring.conftest import Anchored
from tests.anchoring.helpers import PRODUCER, T0, create_ledger, open_store, running_anchorer

ROOT = Path(__file__).resolve().parents[2]
LATER = T0 + 40 * DAY


def _copy(anchored: Anchored, tmp_path: Path) -> Path:
    data = tmp_path / "producer"
    shutil.copytree(anchored.data_dir, data)
    return data


def test_old_batches_move_to_the_archive_and_their_proofs_still_verify(
    anchored: Anchored, tmp_path: Path
) -> None:
    data = _copy(anchored, tmp_path)
    with open_store(data) as store:
        records = AnchorStore(store)
        before = {(s.stream, s.records) for s in records.streams()}
        done = Retention(store, RetentionPolicy()).run_once(LATER)
        # vibration 0..49 and 50..99 are old and not the head's batch; 100..122 and
        # meter 0..6 hold the heads and stay.
        assert done.batches == 2 and done.records == 100 and done.archive_file
        left = {(s.stream, s.records) for s in records.streams()}
        assert left == {("vibration", 23), ("meter", 7)}, (before, left)
        try:
            records.proof(PRODUCER.public_key, "vibration", 7)
            raise AssertionError("the record should have left the store")
        except RecordNotFound:
            pass
        assert Retention(store, RetentionPolicy()).run_once(LATER).batches == 0
    cold = ColdArchive(data / "archive")
    for seq in (0, 49, 50, 99):
        proof = cold.proof(PRODUCER.public_key, "vibration", seq)
        assert proof == anchored.proofs[("vibration", seq)]
        assert verify_proof(proof, anchored.headers).block_height >= 1
    # And as an operator does it: `mesh proof` finds it in the archive, `mesh verify` agrees.
    out = tmp_path / "p.json"
    exported = subprocess.run(
        [sys.executable, "-m", "agents.cli", "proof", "--data-dir", str(data),
         "--stream", "vibration", "--seq", "42", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    verified = subprocess.run(
        [sys.executable, "-m", "agents.cli", "verify", str(out), "--ledger", str(anchored.ledger)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    assert verified.returncode == 0 and verified.stdout.startswith("VALID"), verified.stdout


def test_young_batches_stay_unless_a_stream_says_otherwise(
    anchored: Anchored, tmp_path: Path
) -> None:
    data = _copy(anchored, tmp_path)
    with open_store(data) as store:
        assert Retention(store, RetentionPolicy()).run_once(T0 + DAY).batches == 0
        policy = RetentionPolicy(streams={"vibration": Keep(days=0.5)})
        assert Retention(store, policy).run_once(T0 + DAY).batches == 2
        forever = RetentionPolicy(default=Keep(days=None))
        assert Retention(store, forever).run_once(T0 + 1000 * DAY).batches == 0


def test_dropping_is_the_operators_choice_and_writes_no_archive(
    anchored: Anchored, tmp_path: Path
) -> None:
    data = _copy(anchored, tmp_path)
    with open_store(data) as store:
        done = Retention(store, RetentionPolicy(archive=False)).run_once(LATER)
        assert done.batches == 2 and done.archive_file is None
    assert not (data / "archive").exists()


async def test_the_store_stays_under_its_bound_and_unanchored_records_stay(
    tmp_path: Path,
) -> None:
    """Segments of 16 KB, a bound of 200 KB (an empty store is ~120 KB): each pass
    archives the oldest mined batches and deletes the segments nothing points into;
    records not yet anchored are never moved, however far above the bound it is."""
    ledger = create_ledger(tmp_path / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=40, max_age=3600))
    reading = b'{"rms_mm_s": 1.2345, "peak_mm_s": 3.456, "temp_c": 41.25}' * 3
    policy = RetentionPolicy(online_mb=0.2)
    async with running_anchorer(tmp_path / "a", ledger, config=config) as run:
        run.anchorer.records.log.segment_bytes = 16_000
        retention = Retention(run.store, policy)
        sizes = []
        for _ in range(40):
            await run.anchorer.log_many("vibration", [reading] * 80)
            await run.anchorer.anchor_now()
            await run.chain.mine()
            await run.anchorer.wait_mined()
            while (await run.db(retention.run_once, T0)).moved:
                pass
            sizes.append(await run.db(store_bytes, run.store))
            segments_bytes = sum(p.stat().st_size for p in (tmp_path / "a" / "records").iterdir())
            assert segments_bytes <= policy.online_mb * 1e6, _files(tmp_path / "a")
        unanchored = await run.anchorer.log_many("vibration", [reading] * 200)
        await run.db(retention.run_once, T0)
        for record in unanchored[::50]:  # above the bound, and still here
            held = await run.db(run.anchorer.records.log.pending_hash, *_key(record))
            stored = await run.db(_stored_hash, run.store, record.seq)
            assert record.hash in (held, stored)
        logged = 40 * 80 * (len(reading) + 200)
        assert logged > 2 * policy.online_mb * 1e6  # it would not fit without retention
        # What still grows is the wallet's rows (an anchor transaction each, pruned by
        # the wallet's own retention) and free pages SQLite reuses.
        assert sizes[-1] - sizes[0] < logged / 4, sizes
        segments = sorted((tmp_path / "a" / "records").glob("*.seg"))
        assert len(segments) < 8, segments
        cold = ColdArchive(tmp_path / "a" / "archive")
        proof = cold.proof(PRODUCER.public_key, "vibration", 0)
        assert verify_proof(proof, _headers(ledger)).block_height >= 1
    print(f"\nMEASURE store bytes after each round (bound 200 kB): {sizes}")
    await trio.lowlevel.checkpoint()


def _key(record: object) -> tuple[bytes, str, int]:
    return (PRODUCER.public_key, "vibration", record.seq)  # type: ignore[attr-defined]


def _stored_hash(store: object, seq: int) -> bytes | None:
    with store.read() as db:  # type: ignore[attr-defined]
        row = db.execute(
            "SELECT hash FROM anchor_records JOIN anchor_streams s ON s.id = sid"
            " WHERE s.stream = 'vibration' AND seq = ?",
            (seq,),
        ).fetchone()
    return None if row is None else bytes(row[0])


def _files(data: Path) -> dict[str, int]:
    return {str(p.relative_to(data)): p.stat().st_size for p in data.rglob("*") if p.is_file()}


def _headers(ledger: Path) -> HeaderChain:
    """The ledger's headers through a connection of our own (the running chain's is
    busy in the anchorer's threads)."""
    with LocalLedger.open(ledger) as opened:
        return HeaderChain.from_ledger(opened)


def test_a_buyers_kept_readings_move_with_their_paths(tmp_path: Path) -> None:
    """Kept records' paths live in the segments; retention carries them into the
    archive, whose proofs equal the store's."""
    from tests.anchoring.test_cold import _build_buyer, copy_data_dir

    (tmp_path / "built").mkdir()
    buyer = _build_buyer(tmp_path / "built")
    data = copy_data_dir(buyer.data_dir, tmp_path / "buyer")
    with open_store(data) as store:
        later = time.time() + 40 * DAY  # receipts are dated by the buyer's wall clock
        done = Retention(store, RetentionPolicy()).run_once(later)
        assert done.batches == 3 and done.records == 10, done  # kept: every batch may go
    cold = ColdArchive(data / "archive")
    for seq, proof in buyer.proofs.items():
        assert cold.proof(PRODUCER.public_key, "feed", seq) == proof
