"""The Anchorer against a real LocalLedger file: log, batch, fund, broadcast, mine, prove.

Every test creates its ledger in tmp_path and faucets coins to the agent's wallet; the
anchor transactions go through the ledger's full rule set (scripts, fees, finality).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from mesh.anchoring.batch import BatchPolicy
from mesh.anchoring.errors import AnchoringError, NotAnchored
from mesh.anchoring.hashchain import audit
from mesh.anchoring.headers import HeaderChain, write_headers
from mesh.anchoring.payload import find_anchor
from mesh.anchoring.proof import Proof, verify_proof
from mesh.anchoring.service import BOOK_WITHIN, AnchorConfig, Anchorer
from mesh.anchoring.store import AnchorStore
from mesh.chain.base import TxState
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy
from mesh.chain.tx import parse_exact
from mesh.chain.wallet import Wallet
from mesh.errors import LocalProtocolError
from mesh.health import StorageHealth
from tests.anchoring.helpers import (
    PRODUCER,
    FakeClock,
    Running,
    create_ledger,
    open_store,
    running_anchorer,
)

BIG = BatchPolicy(max_records=1_000_000, max_age=1e9)


def _config(records: int = 1_000_000, age: float = 1e9, **kw: float) -> AnchorConfig:
    return AnchorConfig(batch=BatchPolicy(records, age), **kw)  # type: ignore[arg-type]


async def _wait(condition: object, run: Running) -> None:
    """Poll `condition()` (Trio time; the autojump clock makes it free)."""
    with trio.fail_after(600):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.05)


async def test_anchor_tx_is_accepted_mined_and_pays_an_explicit_fee(tmp_path: Path) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    clock = FakeClock()
    async with running_anchorer(tmp_path / "a", ledger, config=_config(), clock=clock) as run:
        before = run.wallet.balance().available
        records = await run.anchorer.log_many("vibration", [b"rms=%d" % i for i in range(40)])
        assert [r.record.timestamp_ms for r in records[:1]] == [int(clock.now * 1000)]
        assert audit(records, agent=PRODUCER.public_key) == []
        assert await run.anchorer.log_many("vibration", []) == []
        (batch,) = await run.anchorer.anchor_now()
        assert (batch.stream, batch.first_seq, batch.last_seq, batch.state) == (
            "vibration",
            0,
            39,
            "broadcast",
        )
        assert batch.txid is not None and batch.raw is not None and batch.fee is not None
        assert (await run.chain.status(batch.txid)).state is TxState.PENDING
        tx = parse_exact(batch.raw)
        vout, payload = find_anchor(tx)
        assert (payload.agent, payload.stream, payload.first_seq, payload.last_seq) == (
            PRODUCER.public_key,
            "vibration",
            0,
            39,
        )
        assert payload.root == batch.root
        assert int(tx.outputs[vout].satoshis) == 1
        assert batch.fee == Policy().required_fee(len(batch.raw))
        # Change came back: only the fee and the 1-sat anchor output left the wallet.
        assert run.wallet.balance().available == before - batch.fee - 1
        with pytest.raises(NotAnchored):
            await run.anchorer.proof("vibration", 5)
        await run.chain.mine()
        await run.anchorer.wait_mined()
        stats = run.anchorer.statistics()
        assert (stats.records_logged, stats.batches_mined, stats.fees_paid) == (40, 1, batch.fee)
        assert stats.bytes_on_chain == len(batch.raw)
        proof = await run.anchorer.proof("vibration", 5)
        assert verify_proof(proof, run.headers()).block_height == 1


async def test_batches_close_by_size_and_by_age(tmp_path: Path, mock_clock: MockClock) -> None:
    # Trio time runs at the real rate, except that the test jumps it past the batch age
    # (the autojump clock would also jump while the store works in a thread).
    mock_clock.rate = 1.0
    ledger = create_ledger(tmp_path / "ledger.db")
    config = _config(records=10, age=30, confirm_interval=0.05)
    async with running_anchorer(tmp_path / "a", ledger, config=config) as run:
        anchorer = run.anchorer
        await anchorer.log_many("vibration", [b"x"] * 25)  # 2 full batches by size, 5 wait
        await _wait(lambda: anchorer.statistics().batches_anchored == 2, run)
        await anchorer.log("meter", b"paid 10")
        assert anchorer.statistics().records_waiting == 6
        mock_clock.jump(25)
        await trio.sleep(0.1)
        assert anchorer.statistics().batches_anchored == 2
        mock_clock.jump(6)  # the waiting ones are now older than 30 s
        await _wait(lambda: anchorer.statistics().batches_anchored == 4, run)
        spans = sorted((b.stream, b.first_seq, b.last_seq) for b in anchorer.records.batches())
        assert spans == [
            ("meter", 0, 0),
            ("vibration", 0, 9),
            ("vibration", 10, 19),
            ("vibration", 20, 24),
        ]
        await run.chain.mine()
        await _wait(lambda: anchorer.statistics().batches_mined == 4, run)  # the confirm loop
        headers = run.headers()
        for batch in anchorer.records.batches():
            for proof in anchorer.records.batch_proofs(batch.id):
                verify_proof(proof, headers)


async def test_a_lone_record_is_anchored_by_age(tmp_path: Path, mock_clock: MockClock) -> None:
    """The first record of an idle anchorer starts the age clock (no size trigger needed)."""
    mock_clock.rate = 1.0
    ledger = create_ledger(tmp_path / "ledger.db")
    config = _config(records=1_000, age=30, confirm_interval=0.05)
    async with running_anchorer(tmp_path / "a", ledger, config=config) as run:
        await trio.sleep(0.1)  # the batch loop is asleep with nothing waiting
        await run.anchorer.log("vibration", b"one reading")
        mock_clock.jump(31)
        with trio.fail_after(5):
            while run.anchorer.statistics().batches_anchored != 1:
                await trio.sleep(0.05)


async def _anchor_many(
    tmp_path: Path, total: int, batch_size: int, chunk: int = 500
) -> tuple[Path, list[Proof], int, int]:
    """Log `total` records in batches of `batch_size`; returns ledger, proofs, txs, bytes."""
    ledger = create_ledger(tmp_path / "ledger.db")
    config = _config(records=batch_size)
    async with running_anchorer(tmp_path / "a", ledger, config=config) as run:
        for start in range(0, total, chunk):
            await run.anchorer.log_many(
                "vibration", [b"reading %d" % i for i in range(start, min(total, start + chunk))]
            )
        await run.anchorer.anchor_now()
        await run.chain.mine()
        await run.anchorer.wait_mined()
        stats = run.anchorer.statistics()
        batches = run.anchorer.records.batches()
        proofs = [p for b in batches for p in run.anchorer.records.batch_proofs(b.id)]
        return ledger, proofs, stats.batches_anchored, stats.bytes_on_chain


def _verify_all_offline(ledger: Path, proofs: list[Proof], tmp_path: Path) -> None:
    """Verify with only the ledger file, then with only an exported headers file."""
    with LocalLedger.open(ledger) as opened:
        write_headers(opened, tmp_path / "headers.json")
    for headers in (
        HeaderChain.from_ledger_file(ledger),
        HeaderChain.load(tmp_path / "headers.json"),
    ):
        for proof in proofs:
            verify_proof(proof, headers)


async def test_5000_records_in_batches_of_1000_all_prove(tmp_path: Path) -> None:
    ledger, proofs, txs, chain_bytes = await _anchor_many(tmp_path, 5000, 1000)
    assert len(proofs) == 5000 and txs == 5
    assert chain_bytes / 5000 < 1.0  # bytes on chain per record
    assert {(p.fields["seq"]) for p in proofs} == set(range(5000))
    _verify_all_offline(ledger, proofs, tmp_path)


@pytest.mark.slow
async def test_100_000_records_in_batches_all_prove(tmp_path: Path) -> None:
    ledger, proofs, txs, chain_bytes = await _anchor_many(tmp_path, 100_000, 1000, chunk=2000)
    assert len(proofs) == 100_000 and txs == 100
    assert chain_bytes / 100_000 < 1.0
    _verify_all_offline(ledger, proofs, tmp_path)


async def test_restart_resumes_heads_and_waiting_records(tmp_path: Path) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    data = tmp_path / "a"
    async with running_anchorer(data, ledger, config=_config()) as run:
        first = await run.anchorer.log_many("vibration", [b"a", b"b", b"c"])
    async with running_anchorer(data, ledger, config=_config(), coins=()) as run:
        more = await run.anchorer.log_many("vibration", [b"d", b"e"])
        assert [r.seq for r in more] == [3, 4] and more[0].record.prev == first[-1].hash
        (batch,) = await run.anchorer.anchor_now()  # the waiting ones were reloaded
        assert (batch.first_seq, batch.last_seq) == (0, 4)
        await run.chain.mine()
        await run.anchorer.wait_mined()
        headers = run.headers()
        for proof in run.anchorer.records.batch_proofs(batch.id):
            verify_proof(proof, headers)


async def test_no_coins_delays_anchoring_and_it_retries(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    # Trio time jumps ahead only after 5 ms of real idleness: a plain autojump clock
    # also jumps while the store and the chain work in threads, and on a slow machine
    # ran the 600 s deadline out before the retry's thread work was done.
    mock_clock.autojump_threshold = 0.005
    ledger = create_ledger(tmp_path / "ledger.db")
    config = _config(retry_interval=10, confirm_interval=1)
    async with running_anchorer(tmp_path / "a", ledger, config=config, coins=()) as run:
        await run.anchorer.log_many("vibration", [b"x"] * 3)
        with pytest.raises(AnchoringError, match="insufficient funds"):
            await run.anchorer.anchor_now()
        stats = run.anchorer.statistics()
        assert stats.batches_unanchored == 1 and "insufficient funds" in stats.last_error
        await run.anchorer.log("vibration", b"still logging")
        await run.fund(50_000)
        await _wait(lambda: run.anchorer.statistics().batches_anchored == 1, run)
        (batch,) = run.anchorer.records.batches()
        # Booked as broadcast with the next commit (the block's): `built` until then.
        assert (batch.first_seq, batch.last_seq) == (0, 2) and batch.state in {"built", "broadcast"}
        await run.chain.mine()
        await _wait(lambda: run.anchorer.statistics().batches_mined == 1, run)
        assert run.anchorer.records.batch(batch.id).state == "mined"


async def test_a_confirm_pass_books_a_broadcast_with_its_block_or_after_book_within(
    tmp_path: Path, mock_clock: MockClock
) -> None:
    # A confirm pass that finds no block writes nothing (a commit costs a dozen pages):
    # a cycle's broadcast stays `built` until its block's commit, or until BOOK_WITHIN,
    # when the booking is committed alone and the wallet shows the change.
    mock_clock.autojump_threshold = 0.005
    ledger = create_ledger(tmp_path / "ledger.db")
    config = _config(records=3, confirm_interval=1)
    async with running_anchorer(tmp_path / "a", ledger, config=config) as run:
        await run.anchorer.log_many("vibration", [b"x"] * 3)
        await _wait(lambda: run.anchorer.statistics().batches_anchored == 1, run)
        (first,) = run.anchorer.records.batches()
        await trio.sleep(BOOK_WITHIN / 2)  # several passes, no block
        assert run.anchorer.records.batch(first.id).state == "built"
        assert run.wallet.balance().available == 0  # the coin is spent, no change yet
        await run.chain.mine()
        await _wait(lambda: run.anchorer.statistics().batches_mined == 1, run)
        assert run.anchorer.records.batch(first.id).state == "mined"
        change = run.wallet.balance().available
        assert change > 0

        await run.anchorer.log_many("vibration", [b"y"] * 3)
        await _wait(lambda: run.anchorer.statistics().batches_anchored == 2, run)
        accepted = trio.current_time()
        second = run.anchorer.records.batches()[1]
        assert run.wallet.balance().available == 0
        await _wait(lambda: run.anchorer.records.batch(second.id).state == "broadcast", run)
        assert trio.current_time() - accepted >= BOOK_WITHIN - 0.1
        assert 0 < run.wallet.balance().available < change  # booked: the change is ours


async def test_a_rejected_anchor_gives_the_coins_back(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger, policy=Policy(fee_rate=10_000)).close()  # wallet pays 1 sat/kB
    async with running_anchorer(tmp_path / "a", ledger, config=_config()) as run:
        available = run.wallet.balance().available
        await run.anchorer.log("vibration", b"x")
        with pytest.raises(AnchoringError, match="rule=fee"):
            await run.anchorer.anchor_now()
        (batch,) = run.anchorer.records.batches()
        assert batch.state == "planned" and batch.txid is None
        assert run.wallet.balance().available == available  # the draft was abandoned


async def test_crash_after_funding_before_recording_refunds(tmp_path: Path) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    data = tmp_path / "a"
    async with running_anchorer(data, ledger, config=_config(), coins=()) as run:
        await run.anchorer.log_many("vibration", [b"x"] * 4)
        with pytest.raises(AnchoringError):
            await run.anchorer.anchor_now()  # planned, no coins
    # What a crash between `Wallet.fund` and `record_draft` leaves: coins reserved.
    with open_store(data) as store:
        wallet = Wallet(store, PRODUCER)
        from tests.anchoring.helpers import fund

        fund(ledger, wallet, (30_000,))
        (batch,) = AnchorStore(store).batches()
        wallet.fund([(b"\x00\x6a\x01\x00", 1)], reservation=batch.reservation)
        assert wallet.balance().available == 0
    async with running_anchorer(data, ledger, config=_config(), coins=()) as run:
        await run.anchorer.anchor_now()
        (batch,) = run.anchorer.records.batches()
        assert batch.state == "broadcast"
        await run.chain.mine()
        await run.anchorer.wait_mined()


async def test_crash_after_recording_before_broadcast_sends_the_same_tx(tmp_path: Path) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    data = tmp_path / "a"
    async with running_anchorer(data, ledger, config=_config(), coins=()) as run:
        await run.anchorer.log_many("vibration", [b"x"] * 4)
        with pytest.raises(AnchoringError):
            await run.anchorer.anchor_now()
    with open_store(data) as store:
        from mesh.anchoring.payload import AnchorPayload
        from tests.anchoring.helpers import fund

        wallet = Wallet(store, PRODUCER)
        fund(ledger, wallet, (30_000,))
        records = AnchorStore(store)
        (batch,) = records.batches()
        script = AnchorPayload(
            batch.agent, batch.stream, batch.first_seq, batch.last_seq, batch.root
        ).script()
        draft = wallet.fund([(script, 1)], reservation=batch.reservation)
        records.record_draft(batch.id, draft.txid, draft.raw, draft.fee)
    async with running_anchorer(data, ledger, config=_config(), coins=()) as run:
        await run.anchorer.anchor_now()
        (batch,) = run.anchorer.records.batches()
        assert batch.state == "broadcast" and batch.txid == draft.txid
        await run.chain.mine()
        await run.anchorer.wait_mined()
        assert run.wallet.balance().available == 30_000 - draft.fee - 1


async def test_a_failing_store_write_fails_the_log_loudly(tmp_path: Path) -> None:
    """Another writer holds seq 1 in the index: the record itself is in its segment,
    but indexing it fails loudly, and the log takes nothing more."""
    ledger = create_ledger(tmp_path / "ledger.db")
    async with running_anchorer(tmp_path / "a", ledger, config=_config()) as run:
        await run.anchorer.log("vibration", b"0")

        def squat(store: object) -> None:  # someone else holds seq 1: indexing must fail
            with run.store.write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO anchor_streams (agent, stream) VALUES (?, 'vibration')",
                    (PRODUCER.public_key,),
                )
                db.execute(
                    "INSERT INTO anchor_records (sid, seq, hash, body, signature, origin)"
                    " SELECT id, 1, x'00', x'00', x'00', 'own' FROM anchor_streams"
                    " WHERE agent = ? AND stream = 'vibration'",
                    (PRODUCER.public_key,),
                )

        await run.db(squat, None)
        await run.anchorer.log("vibration", b"1")
        with pytest.raises(AnchoringError, match="cannot be stored: UNIQUE constraint"):
            await run.anchorer.anchor_now()
        with pytest.raises(LocalProtocolError, match="store write failed"):
            await run.anchorer.log("vibration", b"2")


async def test_a_full_disk_holds_the_log_until_a_write_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storing records fails twice, cutting a batch once (a full disk): the task goes
    on, `log` returns only once its record is stored (after 0.5 + 1 s of back-off), the
    health says why meanwhile, and nothing stored before is lost."""
    ledger = create_ledger(tmp_path / "ledger.db")
    health = StorageHealth()
    async with running_anchorer(tmp_path / "a", ledger, config=_config(), health=health) as run:
        await run.anchorer.log("vibration", b"0")
        records = run.anchorer.records
        failures = {"insert_own": 2, "plan_batches": 1}
        reasons: list[str | None] = []

        def flaky(name: str) -> object:
            real = getattr(records, name)

            def call(*args: object) -> object:
                if failures[name]:
                    failures[name] -= 1
                    reasons.append(health.reason())
                    raise sqlite3.OperationalError("database or disk is full")
                return real(*args)

            return call

        for name in failures:
            monkeypatch.setattr(records, name, flaky(name))
        started = trio.current_time()
        second = await run.anchorer.log("vibration", b"1")
        assert second.seq == 1 and 1.4 < trio.current_time() - started < 5
        assert reasons == [None, "anchoring: database or disk is full"]
        assert health.healthy and health.statistics().faults == 2
        (batch,) = await run.anchorer.anchor_now()  # the cut failed once, then worked
        assert (batch.first_seq, batch.last_seq) == (0, 1)
        assert health.healthy and health.statistics().faults == 3
        assert run.anchorer.statistics().last_error.startswith("store write failed: database")


async def test_log_needs_a_running_anchorer(tmp_path: Path) -> None:
    ledger = create_ledger(tmp_path / "ledger.db")
    store = open_store(tmp_path / "a")
    try:
        from mesh.chain.local import LocalChain

        chain = LocalChain.open(ledger)
        anchorer = Anchorer(PRODUCER, store, Wallet(store, PRODUCER), chain)
        with pytest.raises(LocalProtocolError, match="not running"):
            await anchorer.log("vibration", b"x")
        chain.close()
    finally:
        store.close()
