"""ArcChain protocol-contract tests.

These run against `tests.chain.fake_arc`, a local HTTP server on 127.0.0.1 that speaks
ARC's and WhatsOnChain's documented endpoints with a `LocalLedger` behind it. They
check that `ArcChain` sends what ARC expects and maps every answer correctly; they do
not (and cannot, with no network) show that a real ARC accepts our transactions.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from bsv.chaintrackers.whatsonchain import WhatsOnChainTracker
from bsv.http_client import SyncHttpClient
from bsv.keys import PrivateKey

from mesh.chain.arc import (
    DEFAULT_ARC_URLS,
    ArcChain,
    ArcSettings,
    TrioHttpClient,
    _woc_output,
)
from mesh.chain.base import OutputState, OutputStatus, TxState
from mesh.chain.errors import ChainError, ChainUnavailable, TxRejected
from mesh.chain.rules import MAX_MONEY
from mesh.chain.tx import push, tx_id
from tests.chain.fake_arc import serve
from tests.chain.helpers import Coin, mint, p2pkh, pay, spend


def _arc(url: str) -> ArcChain:
    return ArcChain(
        ArcSettings(
            arc_url=url, network="test", api_key="test-key", woc_url=f"{url}/woc", timeout=5
        )
    )


async def test_broadcast_status_proof_and_headers(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as fake:
        arc = _arc(fake.url)
        key = PrivateKey()
        coin = mint(fake.ledger, 50_000, key)
        tx, change = pay(coin, key=key)
        assert await arc.broadcast(tx) == tx_id(tx)
        assert fake.requests[-1] == {"authorization": "Bearer test-key", "extended": True}
        status = await arc.status(tx_id(tx))
        assert status.state is TxState.PENDING and status.detail == "SEEN_ON_NETWORK"
        assert await arc.merkle_proof(tx_id(tx)) is None

        fake.mine()
        status = await arc.status(tx_id(tx))
        assert (status.state, status.block_height) == (TxState.MINED, 1)
        assert status.block_hash == fake.ledger.status(tx_id(tx)).block_hash
        proof = await arc.merkle_proof(tx_id(tx))
        assert proof is not None and await proof.verify(tx_id(tx), arc.tracker())
        assert await arc.height() == 1
        assert not await arc.is_valid_root("00" * 32, 1)
        assert not await arc.is_valid_root(proof.compute_root(tx_id(tx)), 7)  # 404: no block
        utxos = await arc.utxos(key.address())
        assert [(u.txid, u.vout, u.satoshis, u.block_height) for u in utxos] == [
            (tx_id(tx), 0, change.satoshis, 1)
        ]
        unknown = "ab" * 32
        assert (await arc.status(unknown)).state is TxState.UNKNOWN
        assert await arc.merkle_proof(unknown) is None
        # an idempotent re-broadcast of a known transaction succeeds
        assert await arc.broadcast(tx) == tx_id(tx)


async def test_rejections_map_to_rules(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as fake:
        arc = _arc(fake.url)
        coin = mint(fake.ledger, 50_000)
        cheap = spend([coin], [(b"\x76\xa9\x14" + bytes(20) + b"\x88\xac", coin.satoshis)])
        stolen, _ = pay(Coin(coin.tx, coin.vout, PrivateKey()))
        first, _ = pay(coin)
        second, _ = pay(coin, fee=900)
        for tx, rule in ((cheap, "fee"), (stolen, "script")):
            with pytest.raises(TxRejected) as caught:
                await arc.broadcast(tx)
            assert caught.value.rule == rule and caught.value.txid == tx_id(tx)
            assert "ARC 46" in caught.value.detail
        await arc.broadcast(first)
        with pytest.raises(TxRejected) as caught:
            await arc.broadcast(second)
        assert caught.value.rule == "double-spend" and tx_id(first) in caught.value.detail


async def test_output_through_woc_tx_and_spent_lookups(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as fake:
        arc = _arc(fake.url)
        key = PrivateKey()
        coin = mint(fake.ledger, 50_000, key)
        funding = tx_id(coin.tx)
        missing = "ab" * 32
        assert await arc.output(missing, 0) == OutputStatus(missing, 0, OutputState.UNKNOWN)
        assert await arc.output(funding, 1) == OutputStatus(funding, 1, OutputState.UNKNOWN)
        for bad in ("not-a-txid", funding.upper(), "../" + funding[3:]):  # no request sent
            assert (await arc.output(bad, 0)).state is OutputState.UNKNOWN
        assert (await arc.output(funding, -1)).state is OutputState.UNKNOWN

        unspent = OutputStatus(funding, 0, OutputState.UNSPENT, 50_000, p2pkh(key))
        assert await arc.output(funding, 0) == unspent  # in the mempool
        fake.mine()
        assert await arc.output(funding, 0) == unspent  # mined

        data = b"\x00\x6a" + push(b"anchor")
        tx = spend([coin], [(p2pkh(key), 49_000), (data, 0)])
        await arc.broadcast(tx)
        spent = OutputStatus(funding, 0, OutputState.SPENT, 50_000, p2pkh(key), tx_id(tx))
        assert await arc.output(funding, 0) == spent  # spent by a mempool tx
        assert (await arc.output(tx_id(tx), 1)).state is OutputState.UNKNOWN  # data output
        fake.mine()
        assert await arc.output(funding, 0) == spent  # spent and mined
        assert await arc.output(tx_id(tx), 0) == fake.ledger.output(tx_id(tx), 0)
        assert (await arc.output(tx_id(tx), 0)).state is OutputState.UNSPENT


async def test_output_amounts_convert_exactly_from_bsv(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as fake:
        arc = _arc(fake.url)
        for satoshis in (1, 99_999_999, 123_456_789, MAX_MONEY - 1, MAX_MONEY):
            coin = mint(fake.ledger, satoshis)
            status = await arc.output(tx_id(coin.tx), 0)
            assert (status.state, status.satoshis) == (OutputState.UNSPENT, satoshis)


def test_woc_output_refuses_what_it_cannot_read_exactly() -> None:
    txid = "ef" * 32

    def answer(value: object, truncated: bool = False) -> dict[str, object]:
        spk = {"hex": "51", "isTruncated": truncated}
        return {"txid": txid, "vout": [{"n": 0, "value": value, "scriptPubKey": spk}]}

    assert _woc_output(answer(0.00012345), txid, 0) == (12_345, b"\x51")
    assert _woc_output(answer(0.1), txid, 1) is None
    for bad in (answer(0.000000015), answer(-1), answer(True), answer(1, truncated=True)):
        with pytest.raises(ChainUnavailable):
            _woc_output(bad, txid, 0)
    with pytest.raises(ChainUnavailable):
        _woc_output({"txid": "00" * 32, "vout": []}, txid, 0)


async def test_unreachable_service_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    arc = _arc(f"http://127.0.0.1:{port}")
    with serve(tmp_path / "arc.db") as fake:
        tx, _ = pay(mint(fake.ledger, 10_000))
    with pytest.raises(ChainUnavailable):
        await arc.broadcast(tx)
    with pytest.raises(ChainUnavailable):
        await arc.height()
    with pytest.raises(ChainUnavailable):
        await arc.status(tx_id(tx))
    with pytest.raises(ChainUnavailable):
        await arc.output(tx_id(tx), 0)


async def test_bsv_sdk_woc_tracker_height_is_broken_so_we_do_not_use_it(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as fake:
        fake.mine()
        fake.mine()
        tracker = WhatsOnChainTracker("test", http_client=TrioHttpClient(SyncHttpClient()))
        tracker.URL = f"{fake.url}/woc"
        assert await tracker.current_height() == 0  # reads the wrapper, not its data
        assert await _arc(fake.url).height() == 2


def test_settings_from_env() -> None:
    settings = ArcSettings.from_env({"M2MESH_NETWORK": "test", "M2MESH_ARC_API_KEY": "k"})
    assert settings.arc_url == DEFAULT_ARC_URLS["test"] and settings.api_key == "k"
    assert settings.woc_url is None
    custom = ArcSettings.from_env({"M2MESH_ARC_URL": "http://127.0.0.1:9", "M2MESH_WOC_URL": "x"})
    assert (custom.network, custom.arc_url, custom.woc_url) == ("main", "http://127.0.0.1:9", "x")
    with pytest.raises(ChainError):
        ArcSettings.from_env({"M2MESH_NETWORK": "regtest"})
