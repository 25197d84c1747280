"""A wallet that runs for months: a sync pass, the stored rows and the key cache cost
what they cost on the first day (the watch set, `Wallet.prune`, the LRU of keys).

Real SQLite files and the real ledger behind `LocalChain`; the only wrapper counts the
addresses a sync pass asks the chain about.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from bsv.keys import PrivateKey

from agents.profile import load_profile
from agents.runtime import Agent
from agents.upkeep import sync_wallet
from mesh.chain.base import Utxo
from mesh.chain.coins import WALLET_SCHEMA
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.tx import p2pkh_script
from mesh.chain.wallet import (
    KEY_CACHE_SIZE,
    WATCH_PENDING,
    WATCH_SWEEP,
    WATCH_WAITING,
    Wallet,
)
from mesh.identity import Identity, save_identity
from mesh.store import Schema, Store
from tests.chain.helpers import T0, FakeClock, p2pkh

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = Identity.from_secret(bytes(range(1, 33)))
PAYEE = p2pkh(PrivateKey())


class CountingChain(LocalChain):
    """The real local chain, counting the addresses asked about for their coins."""

    def __init__(self, ledger: LocalLedger) -> None:
        super().__init__(ledger)
        self.asked: list[str] = []

    async def utxos(self, address: str) -> list[Utxo]:
        self.asked.append(address)
        return await super().utxos(address)


@pytest.fixture
def chain(tmp_path: Path, clock: FakeClock) -> Iterator[CountingChain]:
    ledger = LocalLedger.create(tmp_path / "ledger.db", clock=clock, check_same_thread=False)
    with ledger:
        yield CountingChain(ledger)


def _wallet(path: Path, clock: FakeClock) -> Wallet:
    return Wallet(Store(path, check_same_thread=False, synchronous="NORMAL"), IDENTITY, clock=clock)


def _agent(tmp_path: Path, wallet: Wallet) -> Agent:
    """An agent (not running) whose wallet's sync (`sync_wallet`) is the pass under test."""
    save_identity(Identity.generate(), tmp_path / "identity.key")
    profile = load_profile(ROOT / "profiles" / "cnc-mill.toml", data_dir=tmp_path)
    agent = Agent(profile, tmp_path, tmp_path / "ledger.db")
    agent.wallet = wallet
    return agent


async def _pass(agent: Agent, chain: CountingChain) -> list[str]:
    """One sync pass; the addresses it asked the chain about."""
    chain.asked.clear()
    assert agent.wallet is not None
    await sync_wallet(agent.wallet, chain, trio.CapacityLimiter(1))
    return list(chain.asked)


def _anchor(wallet: Wallet, ledger: LocalLedger, count: int) -> None:
    """`count` transactions as the anchorer makes them: funded, broadcast, with change."""
    for _ in range(count):
        draft = wallet.fund([(PAYEE, 1_000)], reservation=PrivateKey().hex())
        assert draft.change is not None
        ledger.submit(draft.raw)
        wallet.mark_broadcast(draft.txid)


def _rows(wallet_db: Path) -> dict[str, int]:
    with Store(wallet_db) as store:
        return {
            table: int(str(store.query(f"SELECT COUNT(*) FROM {table}")[0][0]))
            for table in ("wallet_keys", "wallet_coins", "wallet_txs")
        }


# ------------------------------------------------------------------ the watch set


async def test_a_sync_pass_asks_the_same_few_addresses_after_50_or_500_transactions(
    tmp_path: Path, clock: FakeClock, chain: CountingChain
) -> None:
    wallet = _wallet(tmp_path / "w.db", clock)
    agent = _agent(tmp_path, wallet)
    assert len(await _pass(agent, chain)) == 1  # an empty wallet makes a receive key
    [funding] = wallet.addresses()
    chain.ledger.faucet(p2pkh_script(funding), 10_000_000)
    assert await _pass(agent, chain) == [funding]
    assert wallet.balance().available == 10_000_000

    asked, made = {}, 0
    for total in (50, 500):
        _anchor(wallet, chain.ledger, total - made)
        made = total
        assert len(wallet.addresses()) == made + 1  # a change key per transaction
        asked[made] = await _pass(agent, chain)
    assert asked[50] == asked[500] == [funding]  # only the receive key, in its turn
    before = wallet.balance().available

    fresh = wallet.new_address()  # handed out to be funded: asked about every pass
    chain.ledger.faucet(p2pkh_script(fresh), 7_000)
    assert sorted(await _pass(agent, chain)) == sorted([fresh, funding])
    assert wallet.balance().available == before + 7_000
    assert sorted(await _pass(agent, chain)) == sorted([fresh, funding])  # both swept


async def test_a_late_payment_to_an_old_receive_address_is_found_by_the_sweep(
    tmp_path: Path, clock: FakeClock, chain: CountingChain
) -> None:
    """40 funded receive keys (payouts): a pass asks about `WATCH_SWEEP` of them, and a
    second payment to the oldest is found within a round of the sweep."""
    wallet = _wallet(tmp_path / "w.db", clock)
    agent = _agent(tmp_path, wallet)
    receive = [wallet.new_address() for _ in range(40)]
    for address in receive:
        chain.ledger.faucet(p2pkh_script(address), 1_000)
    for _ in range(40 // WATCH_WAITING + 1):  # the waiting ones, newest first
        await _pass(agent, chain)
    assert wallet.balance().available == 40_000
    chain.ledger.faucet(p2pkh_script(receive[0]), 5_000)
    passes = 0
    while wallet.balance().available == 40_000:
        assert len(await _pass(agent, chain)) == WATCH_SWEEP
        passes += 1
        assert passes <= len(receive) // WATCH_SWEEP + 1
    assert wallet.balance().available == 45_000


async def test_the_change_of_a_draft_broadcast_but_never_marked_is_found(
    tmp_path: Path, clock: FakeClock, chain: CountingChain
) -> None:
    """A crash between the broadcast and `mark_broadcast`: the draft is pending, so its
    change key is watched (as every key was before), and marking it later books no more."""
    wallet = _wallet(tmp_path / "w.db", clock)
    agent = _agent(tmp_path, wallet)
    funding = wallet.new_address()
    chain.ledger.faucet(p2pkh_script(funding), 50_000)
    await _pass(agent, chain)
    draft = wallet.fund([(PAYEE, 20_000)], reservation="crashed")
    assert draft.change is not None
    chain.ledger.submit(draft.raw)
    change = wallet.address(draft.change.key_index)
    assert change in await _pass(agent, chain)
    assert len(chain.asked) <= WATCH_WAITING + WATCH_PENDING + WATCH_SWEEP
    wallet.mark_broadcast(draft.txid)
    assert wallet.balance().available == draft.change.satoshis
    assert change not in await _pass(agent, chain)  # booked: never asked about again


# ------------------------------------------------------------------ pruning


def test_prune_deletes_spent_history_and_keeps_the_balance_and_what_is_pending(
    tmp_path: Path, clock: FakeClock, ledger: LocalLedger
) -> None:
    path = tmp_path / "w.db"
    wallet = _wallet(path, clock)
    funding = wallet.new_address()
    for _ in range(2):
        ledger.faucet(p2pkh_script(funding), 5_000_000)
    wallet.add_utxos(ledger.utxos(p2pkh_script(funding)))
    _anchor(wallet, ledger, 200)  # old history
    held = wallet.fund([(PAYEE, 10_000)], reservation="pending")  # built, not broadcast
    lost = wallet.fund([(PAYEE, 10_000)], reservation="lost")
    wallet.abandon(lost.txid)
    clock.now += 3_600
    _anchor(wallet, ledger, 5)  # recent history
    balance, available = wallet.balance(), wallet.coins()
    rows, addresses = _rows(path), set(wallet.addresses())

    deleted = wallet.prune(before=T0 + 1_800)
    assert deleted > 3 * 190
    after = _rows(path)
    assert sum(rows.values()) - sum(after.values()) == deleted
    assert after["wallet_coins"] == len(wallet.coins()) + len(wallet.coins("reserved")) + len(
        wallet.coins("spent")
    )
    assert len(wallet.coins("spent")) == 5  # the recent spends stay
    assert after["wallet_txs"] == 6  # the recent ones and the pending draft
    assert after["wallet_keys"] <= 10
    assert wallet.balance() == balance and wallet.coins() == available
    assert wallet.reservations() == {"pending"}
    assert wallet.prune(before=T0 + 1_800) == 0

    # The pending draft still goes out; every coin left is still spendable.
    assert ledger.submit(held.raw) == held.txid
    wallet.mark_broadcast(held.txid)
    assert held.change is not None and held.change in wallet.coins()
    everything = wallet.balance().available
    draft = wallet.fund([(PAYEE, everything - 5_000)], reservation="sweep")
    assert ledger.submit(draft.raw) == draft.txid
    assert wallet.new_address() not in addresses  # no index is handed out twice


def test_prune_by_default_keeps_a_day_of_spends(tmp_path: Path, clock: FakeClock) -> None:
    wallet = _wallet(tmp_path / "w.db", clock)
    with LocalLedger.create(tmp_path / "ledger.db", clock=clock) as ledger:
        funding = wallet.new_address()
        ledger.faucet(p2pkh_script(funding), 1_000_000)
        wallet.add_utxos(ledger.utxos(p2pkh_script(funding)))
        _anchor(wallet, ledger, 3)
    clock.now += 23 * 3_600
    assert wallet.prune() == 0
    clock.now += 2 * 3_600
    assert wallet.prune() > 0 and wallet.coins("spent") == []


def test_a_wallet_from_before_pruning_is_migrated(tmp_path: Path, clock: FakeClock) -> None:
    """Version 2 rows: a funded receive key, change keys of a broadcast and of an
    abandoned draft, an unfunded receive key, a spent coin. The change keys are never
    watched; the spend can be pruned by the time of the draft that spent it."""
    path = tmp_path / "w.db"
    with Store(path) as store:
        store.register(Schema("wallet", WALLET_SCHEMA.migrations[:2]))
        with store.write() as db:
            for index in range(4):
                address = IDENTITY.derive_child(
                    IDENTITY.public_key, f"2-m2mesh wallet-{index}"
                ).address()
                db.execute(
                    "INSERT INTO wallet_keys (idx, script, address) VALUES (?, ?, ?)",
                    (index, p2pkh_script(address), address),
                )
            db.execute(
                "INSERT INTO wallet_txs VALUES ('b', x'00', 'r1', 'broadcast', 1, 1, ?)", (T0,)
            )
            db.execute(
                "INSERT INTO wallet_txs VALUES ('c', x'00', 'r2', 'abandoned', 1, 2, ?)", (T0,)
            )
            db.execute(
                "INSERT INTO wallet_coins (txid, vout, satoshis, key_idx, state, spent_by)"
                " VALUES ('a', 0, 9000, 0, 'spent', 'b')"
            )
            db.execute(
                "INSERT INTO wallet_coins (txid, vout, satoshis, key_idx, state)"
                " VALUES ('b', 1, 8000, 1, 'available')"
            )
    wallet = _wallet(path, clock)
    # Key 3 waits for its coin; key 0 is swept; keys 1 and 2 are change.
    assert wallet.watch_addresses() == [wallet.address(3), wallet.address(0)]
    assert wallet.balance().available == 8_000
    assert wallet.prune(before=T0 + 1) == 4  # the spent coin, both txs, key 2
    assert wallet.addresses() == [wallet.address(i) for i in (0, 1, 3)]
    assert wallet.balance().available == 8_000


# ------------------------------------------------------------------ the key cache


def test_the_key_cache_is_a_bounded_lru(tmp_path: Path, clock: FakeClock) -> None:
    wallet = _wallet(tmp_path / "w.db", clock)
    count = KEY_CACHE_SIZE + 100
    for _ in range(count):
        wallet.new_address()
    keys = [wallet.private_key(i) for i in range(count)]
    assert len(wallet._keys) == KEY_CACHE_SIZE  # (white box: the cache itself)
    assert wallet.private_key(count - 1) is keys[-1]  # recently used: still cached
    evicted = wallet.private_key(0)
    assert evicted is not keys[0] and evicted.serialize() == keys[0].serialize()
    assert len(wallet._keys) == KEY_CACHE_SIZE
