"""The wallet: BRC-42 keys, coin selection, change, fees, and reservations under concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from bsv.keys import PrivateKey

from mesh.chain.coins import WALLET_SCHEMA, Coin, select_coins
from mesh.chain.errors import InsufficientFunds, WalletError
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy
from mesh.chain.tx import p2pkh_script, txid_of
from mesh.chain.wallet import Wallet
from mesh.identity import Identity
from mesh.store import Schema, Store
from tests.chain.helpers import FakeClock, p2pkh

IDENTITY = Identity.from_secret(bytes(range(1, 33)))


def _wallet(path: Path, clock: FakeClock | None = None) -> Wallet:
    store = Store(path, check_same_thread=False)
    return Wallet(store, IDENTITY, clock=clock or FakeClock())


def _fill(wallet: Wallet, ledger: LocalLedger, amounts: list[int]) -> str:
    address = wallet.new_address()
    for amount in amounts:
        ledger.faucet(p2pkh_script(address), amount)
    assert wallet.add_utxos(ledger.utxos(p2pkh_script(address))) == len(amounts)
    return address


def test_keys_are_brc42_children_of_the_identity(tmp_path: Path) -> None:
    wallet = _wallet(tmp_path / "w.db")
    for index in (0, 1, 7):
        expected = IDENTITY.derive_child(IDENTITY.public_key, f"2-m2mesh wallet-{index}")
        assert wallet.private_key(index).serialize() == expected.serialize()
    assert wallet.new_address() == wallet.address(0)
    assert wallet.new_address() == wallet.address(1)
    assert wallet.addresses() == [wallet.address(0), wallet.address(1)]
    assert wallet.address(0) != IDENTITY.key.address()  # the identity key stays off chain


def test_fund_builds_a_valid_transaction_with_change(tmp_path: Path, ledger: LocalLedger) -> None:
    wallet = _wallet(tmp_path / "w.db")
    _fill(wallet, ledger, [50_000, 20_000, 8_000])
    payee = p2pkh(PrivateKey())
    draft = wallet.fund([(payee, 30_000)], reservation="channel-1")
    assert [c.satoshis for c in draft.coins] == [50_000]  # the smallest coin that covers it
    assert draft.change is not None and draft.change.satoshis == 50_000 - 30_000 - draft.fee
    assert draft.fee >= Policy().required_fee(len(draft.raw))
    assert wallet.balance().reserved == 50_000
    assert txid_of(draft.raw) == draft.txid
    assert ledger.submit(draft.raw) == draft.txid  # scripts, fee and amounts hold
    wallet.mark_broadcast(draft.txid)
    wallet.mark_broadcast(draft.txid)  # idempotent
    assert wallet.balance().available == 20_000 + 8_000 + draft.change.satoshis
    assert wallet.balance().reserved == 0
    change_script = p2pkh_script(wallet.address(draft.change.key_index))
    assert [u.txid for u in ledger.utxos(change_script)] == [draft.txid]
    assert wallet.add_utxos(ledger.utxos(change_script)) == 0  # already known


def test_fund_combines_coins_and_respects_the_fee_model(
    tmp_path: Path, ledger: LocalLedger
) -> None:
    wallet = Wallet(
        Store(tmp_path / "w.db"), IDENTITY, policy=Policy(fee_rate=500), clock=FakeClock()
    )
    _fill(wallet, ledger, [10_000, 10_000, 10_000])
    draft = wallet.fund([(p2pkh(PrivateKey()), 25_000)], reservation="r")
    assert len(draft.coins) == 3
    assert draft.fee >= len(draft.raw) * 500 // 1000
    ledger.submit(draft.raw)


def test_insufficient_funds_reserves_nothing(tmp_path: Path, ledger: LocalLedger) -> None:
    wallet = _wallet(tmp_path / "w.db")
    _fill(wallet, ledger, [1_000, 2_000])
    with pytest.raises(InsufficientFunds) as caught:
        wallet.fund([(p2pkh(PrivateKey()), 3_000)], reservation="r")
    assert caught.value.available == 3_000
    assert wallet.balance().reserved == 0


def test_abandon_release_and_expiry(tmp_path: Path, ledger: LocalLedger) -> None:
    clock = FakeClock()
    wallet = _wallet(tmp_path / "w.db", clock)
    _fill(wallet, ledger, [10_000, 10_000, 10_000])
    a = wallet.fund([(p2pkh(PrivateKey()), 5_000)], reservation="a")
    with pytest.raises(WalletError, match="in use"):
        wallet.fund([(p2pkh(PrivateKey()), 5_000)], reservation="a")
    wallet.abandon(a.txid)
    assert wallet.balance().reserved == 0

    wallet.fund([(p2pkh(PrivateKey()), 5_000)], reservation="b", ttl=60)
    wallet.fund([(p2pkh(PrivateKey()), 5_000)], reservation="c")
    clock.now += 59
    assert wallet.release_expired() == 0
    clock.now += 2
    assert wallet.release_expired() == 1  # b expired; c has no ttl
    assert wallet.balance().reserved == 10_000
    assert wallet.release("c") == 1
    assert wallet.balance() == wallet.balance().__class__(30_000, 0)

    d = wallet.fund([(p2pkh(PrivateKey()), 5_000)], reservation="d")
    wallet.mark_broadcast(d.txid)
    with pytest.raises(WalletError, match="broadcast"):
        wallet.abandon(d.txid)


def test_concurrent_fundings_never_share_a_coin(tmp_path: Path, ledger: LocalLedger) -> None:
    path = tmp_path / "w.db"
    _fill(_wallet(path), ledger, [10_000] * 40)
    barrier = threading.Barrier(2)
    picked: dict[int, list[Coin]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def opener(worker: int) -> None:
        wallet = _wallet(path)  # its own connection, as another thread or process would
        try:
            barrier.wait()
            for n in range(15):
                draft = wallet.fund([(p2pkh(PrivateKey()), 4_000)], reservation=f"{worker}-{n}")
                picked[worker].extend(draft.coins)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=opener, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    first, second = ({c.outpoint for c in picked[w]} for w in (0, 1))
    assert len(first) == len(picked[0]) == 15 and len(second) == len(picked[1]) == 15
    assert not first & second
    assert _wallet(path).balance().reserved == 30 * 10_000


def test_select_coins_policy() -> None:
    coins = [Coin("a" * 64, 0, 5_000, 0), Coin("b" * 64, 0, 1_000, 0), Coin("c" * 64, 0, 3_000, 0)]

    def fee(n: int, change: bool) -> int:
        return 10 * n + (5 if change else 0)

    chosen, paid, change = select_coins(coins, 2_500, fee)
    assert [c.satoshis for c in chosen] == [3_000] and paid == 15 and change == 485
    chosen, paid, change = select_coins(coins, 7_000, fee)
    assert [c.satoshis for c in chosen] == [5_000, 3_000] and change == 975
    chosen, paid, change = select_coins(coins, 2_990, fee)  # change would be < 1: all to fee
    assert [c.satoshis for c in chosen] == [3_000] and change == 0 and paid == 10
    with pytest.raises(InsufficientFunds):
        select_coins(coins, 9_000, fee)


def test_a_labelled_key_costs_no_row_until_adopted(tmp_path: Path, ledger: LocalLedger) -> None:
    """`payout_address` is pure; `adopt` makes the key one of ours (idempotently), and a
    coin it holds is then taken in and spendable -- by another connection too."""
    wallet = _wallet(tmp_path / "w.db")
    first = wallet.new_address()
    label = "channel-payout-" + "ab" * 32
    address = wallet.payout_address(label)
    expected = IDENTITY.derive_child(IDENTITY.public_key, f"2-m2mesh wallet-{label}")
    assert address == expected.address()
    assert wallet.addresses() == [first]  # handing it out wrote nothing
    outpoint = ledger.faucet(p2pkh_script(address), 7_000)
    assert wallet.add_utxos(ledger.utxos(p2pkh_script(address))) == 0  # not ours yet
    wallet.address(1)  # the next index asked about before it is taken: nothing cached wrong
    index = wallet.adopt(label)
    assert index == 1 and wallet.adopt(label) == 1  # idempotent
    assert wallet.addresses() == [first, address]
    assert wallet.address(index) == address
    assert (
        wallet.new_address()
        == IDENTITY.derive_child(IDENTITY.public_key, "2-m2mesh wallet-2").address()
    )  # indexed keys keep their derivation
    assert wallet.add_utxos(ledger.utxos(p2pkh_script(address))) == 1
    assert wallet.coins() == [Coin(outpoint.txid, outpoint.vout, 7_000, index)]
    again = _wallet(tmp_path / "w.db")  # a fresh connection derives it from its row
    draft = again.fund([(p2pkh(PrivateKey()), 5_000)], reservation="spend")
    assert ledger.submit(draft.raw) == draft.txid


def test_labels_never_name_an_indexed_key(tmp_path: Path) -> None:
    wallet = _wallet(tmp_path / "w.db")
    for label in ("7", "", "x" * 801):
        with pytest.raises(WalletError, match="label"):
            wallet.payout_address(label)
        with pytest.raises(WalletError, match="label"):
            wallet.adopt(label)


def test_a_wallet_from_before_labels_keeps_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    with Store(path) as store:
        store.register(Schema("wallet", WALLET_SCHEMA.migrations[:1]))
        with store.write() as db:
            for index in range(2):
                address = IDENTITY.derive_child(
                    IDENTITY.public_key, f"2-m2mesh wallet-{index}"
                ).address()
                db.execute(
                    "INSERT INTO wallet_keys (idx, script, address) VALUES (?, ?, ?)",
                    (index, p2pkh_script(address), address),
                )
    wallet = _wallet(path)
    assert wallet.addresses() == [wallet.address(0), wallet.address(1)]
    assert (
        wallet.private_key(1).serialize()
        == IDENTITY.derive_child(IDENTITY.public_key, "2-m2mesh wallet-1").serialize()
    )
    assert wallet.adopt("a label") == 2
