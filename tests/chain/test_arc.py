"""ArcChain against the local ARC simulator: what goes on the wire and how each answer
is read.

`tests.chain.arc_sim` is an HTTP server on 127.0.0.1 speaking ARC's and WhatsOnChain's
documented endpoints with a `LocalLedger` behind it. These tests check that `ArcChain`
sends what ARC expects (Extended Format, always) and maps ARC's answers to our errors;
they do not (and cannot, with no network) show that a real ARC accepts our transactions.
Retries, polling and lock times are in test_arc_wait.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from bsv.broadcasters.arc import ARC, ARCConfig
from bsv.chaintrackers.whatsonchain import WhatsOnChainTracker
from bsv.http_client import SyncHttpClient
from bsv.keys import PrivateKey
from bsv.script.script import Script
from bsv.transaction import Transaction
from bsv.transaction_input import TransactionInput
from bsv.transaction_output import TransactionOutput

from mesh.chain.arc import DEFAULT_ARC_URLS, ArcChain, ArcSettings, TrioHttpClient, woc_output
from mesh.chain.arc_ef import from_extended
from mesh.chain.arc_status import PollSchedule
from mesh.chain.base import OutputState, OutputStatus, TxState
from mesh.chain.errors import ChainAuthError, ChainError, ChainUnavailable, TxRejected
from mesh.chain.rules import MAX_MONEY, Prevout
from mesh.chain.tx import push, tx_id
from tests.chain.arc_sim import serve
from tests.chain.helpers import Coin, mint, p2pkh, pay, spend

FAST = PollSchedule(first=0.01, cap=0.05, block_wait=0.02, retries=2)


def _arc(url: str, *, key: str = "test-key", timeout: float = 5, ttl: float = 300) -> ArcChain:
    settings = ArcSettings(
        arc_url=url, network="test", api_key=key, woc_url=f"{url}/woc", timeout=timeout
    )
    return ArcChain(settings, schedule=FAST, policy_ttl=ttl)


async def test_broadcast_status_proof_and_headers(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim.url)
        key = PrivateKey()
        coin = mint(sim.ledger, 50_000, key)
        tx, change = pay(coin, key=key)
        assert await arc.broadcast(tx) == tx_id(tx)
        post = sim.posts[-1]
        assert (post.authorization, post.extended, post.status) == ("Bearer test-key", True, 200)
        status = await arc.status(tx_id(tx))
        assert status.state is TxState.PENDING and status.detail == "SEEN_ON_NETWORK"
        assert await arc.merkle_proof(tx_id(tx)) is None

        sim.mine()
        status = await arc.status(tx_id(tx))
        assert (status.state, status.block_height) == (TxState.MINED, 1)
        assert status.block_hash == sim.ledger.status(tx_id(tx)).block_hash
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
        assert (await arc.status("../v1/policy")).state is TxState.UNKNOWN  # never requested
        assert await arc.merkle_proof(unknown) is None
        assert await arc.raw_tx(tx_id(tx)) == tx.serialize()  # WhatsOnChain, by hash
        assert await arc.raw_tx(unknown) is None
        # re-broadcasting a transaction ARC holds succeeds, and ARC answers its status
        assert await arc.broadcast(tx) == tx_id(tx)
        assert sim.posts[-1].status == 200


async def test_ef_goes_on_the_wire_even_with_no_parent_linked(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim.url)
        key = PrivateKey()
        coin = mint(sim.ledger, 50_000, key)
        tx, _ = pay(coin)
        raw: bytes = tx.serialize()
        bare = Transaction.from_hex(raw)  # as read back from a store: no source linked
        assert bare.inputs[0].source_transaction is None and bare.inputs[0].satoshis is None

        # bsv-sdk's own broadcaster sends such a transaction raw, and ARC refuses it
        sdk = ARC(sim.url, ARCConfig(api_key="test-key", sync_http_client=SyncHttpClient()))
        assert sdk.sync_broadcast(bare).code == "460"
        assert sim.posts[-1].extended is False

        assert await arc.broadcast(bare) == tx_id(tx)
        post = sim.posts[-1]
        assert post.extended and post.status == 200
        assert from_extended(post.raw) == (raw, [Prevout(50_000, p2pkh(key))])
        assert f"/tx/{tx_id(coin.tx)}/hex" in sim.woc_requests  # filled from the parent


async def test_channel_style_inputs_need_no_lookup(tmp_path: Path) -> None:
    # mesh/channel/txs.py builds inputs with the spent amount and script, no parent
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim.url)
        key = PrivateKey()
        coin = mint(sim.ledger, 20_000, key)
        signed, _ = pay(coin)
        unlocking = signed.inputs[0].unlocking_script
        inp = TransactionInput(
            source_txid=tx_id(coin.tx), source_output_index=0, unlocking_script=unlocking
        )
        inp.satoshis = 20_000
        inp.locking_script = Script(p2pkh(key))
        tx = Transaction(
            [inp], [TransactionOutput(o.locking_script, o.satoshis) for o in signed.outputs]
        )
        assert tx_id(tx) == tx_id(signed)
        await arc.broadcast(tx)
        assert sim.posts[-1].extended and sim.posts[-1].status == 200
        assert from_extended(sim.posts[-1].raw)[1] == [Prevout(20_000, p2pkh(key))]
        assert not any(path.endswith("/hex") for path in sim.woc_requests)
        # a wrong amount on the input is sent as given, and ARC's script check says no
        other = mint(sim.ledger, 9_000, key)
        lying, _ = pay(other)
        lying = Transaction.from_hex(lying.serialize())
        lying.inputs[0].satoshis = 9_001
        lying.inputs[0].locking_script = Script(p2pkh(key))
        with pytest.raises(TxRejected) as caught:
            await arc.broadcast(lying)
        assert caught.value.rule == "script" and sim.posts[-1].status == 461


async def test_a_parent_nobody_knows_is_refused_before_sending(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim.url)
        inp = TransactionInput(source_txid="ef" * 32, source_output_index=0)
        inp.unlocking_script = Script(push(b"\x01" * 71) + push(b"\x02" * 33))
        tx = Transaction([inp], [TransactionOutput(Script(p2pkh(PrivateKey())), 1_000)])
        with pytest.raises(TxRejected) as caught:
            await arc.broadcast(tx)
        assert caught.value.rule == "missing-input" and "ef" * 32 in caught.value.detail
        assert sim.posts == []


async def test_double_spend_is_http_200_and_raises_naming_the_competitor(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim.url)
        coin = mint(sim.ledger, 50_000)
        first, _ = pay(coin)
        second, _ = pay(coin, fee=900)
        await arc.broadcast(first)
        with pytest.raises(TxRejected) as caught:
            await arc.broadcast(second)
        assert caught.value.rule == "double-spend" and caught.value.txid == tx_id(second)
        assert tx_id(first) in caught.value.detail
        assert sim.posts[-1].status == 200  # ARC said 200: the status had to be read
        status = await arc.status(tx_id(second))
        assert status.state is TxState.PENDING
        assert status.detail.startswith("DOUBLE_SPEND_ATTEMPTED") and tx_id(first) in status.detail


async def test_rule_failures_map_to_rules(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db", fee_rate=50) as sim:
        arc = _arc(sim.url)
        coin = mint(sim.ledger, 50_000)
        other = mint(sim.ledger, 50_000)
        cheap, _ = pay(coin, fee=1)
        stolen, _ = pay(Coin(coin.tx, coin.vout, PrivateKey()))
        twice = spend([other, other], [(p2pkh(PrivateKey()), 40_000)])
        for tx, rule, code in (
            (cheap, "fee", 465),
            (stolen, "script", 461),
            (twice, "malformed", 463),
        ):
            with pytest.raises(TxRejected) as caught:
                await arc.broadcast(tx)
            assert (caught.value.rule, caught.value.txid) == (rule, tx_id(tx))
            assert sim.posts[-1].status == code and f"ARC {code}" in caught.value.detail
        assert len(sim.posts) == 3  # rejections are not retried
        policy = await arc.policy()
        fair, _ = pay(coin, fee=policy.required_fee(len(cheap.serialize())))
        assert await arc.broadcast(fair) == tx_id(fair)


async def test_raw_submission_is_refused_when_ef_is_required(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        tx, _ = pay(mint(sim.ledger, 10_000))
        http = SyncHttpClient()
        for require_ef, expected in ((True, 460), (False, 200)):
            sim.require_ef = require_ef
            answer = http.post(f"{sim.url}/v1/tx", data={"rawTx": tx.hex()})
            assert answer.status_code == expected


async def test_refused_credentials_are_an_auth_error_not_retried(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db", api_key="right-key") as sim:
        arc = _arc(sim.url, key="wrong-key")
        tx, _ = pay(mint(sim.ledger, 10_000))
        with pytest.raises(ChainAuthError, match="M2MESH_ARC_API_KEY"):
            await arc.broadcast(tx)
        assert [p.status for p in sim.posts] == [401]
        with pytest.raises(ChainAuthError):
            await arc.status(tx_id(tx))
        with pytest.raises(ChainAuthError):
            await arc.policy()
        assert await _arc(sim.url, key="right-key").broadcast(tx) == tx_id(tx)


async def test_policy_is_read_mapped_and_cached(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db", fee_rate=50) as sim:
        arc = _arc(sim.url)
        policy = await arc.policy()
        assert (policy.fee_rate, policy.min_fee) == (50, 1)
        assert (policy.max_tx_size, policy.max_script_size) == (10_000_000, 500_000)
        sim.mining_fee = (5, 10_000)  # 0.5 sat/kB
        assert await arc.policy() == policy  # cached
        assert [r.path for r in sim.requests] == ["/v1/policy"]
        fresh = _arc(sim.url, ttl=0)
        assert (await fresh.policy()).fee_rate == 1  # rounded up from 0.5
        sim.fail_next = ["garbage"]
        with pytest.raises(ChainUnavailable):
            await fresh.policy()
        sim.fail_next = [503]
        with pytest.raises(ChainUnavailable):
            await fresh.policy()


async def test_the_height_is_reused_for_a_few_seconds(tmp_path: Path) -> None:
    """An agent asks for the height at every channel watch (each second): WhatsOnChain
    is asked at most once per `height_ttl`."""
    with serve(tmp_path / "arc.db") as sim:
        settings = ArcSettings(arc_url=sim.url, network="test", woc_url=f"{sim.url}/woc")
        arc = ArcChain(settings, schedule=FAST, height_ttl=60)
        first = await arc.height()
        sim.mine()
        assert [await arc.height() for _ in range(5)] == [first] * 5
        assert sim.woc_requests.count("/chain/info") == 1
        fresh = ArcChain(settings, schedule=FAST, height_ttl=0)
        assert await fresh.height() == first + 1


async def test_output_through_woc_tx_and_spent_lookups(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim.url)
        key = PrivateKey()
        coin = mint(sim.ledger, 50_000, key)
        funding = tx_id(coin.tx)
        missing = "ab" * 32
        assert await arc.output(missing, 0) == OutputStatus(missing, 0, OutputState.UNKNOWN)
        assert await arc.output(funding, 1) == OutputStatus(funding, 1, OutputState.UNKNOWN)
        for bad in ("not-a-txid", funding.upper(), "../" + funding[3:]):  # no request sent
            assert (await arc.output(bad, 0)).state is OutputState.UNKNOWN
        assert (await arc.output(funding, -1)).state is OutputState.UNKNOWN

        unspent = OutputStatus(funding, 0, OutputState.UNSPENT, 50_000, p2pkh(key))
        assert await arc.output(funding, 0) == unspent  # in the mempool
        sim.mine()
        assert await arc.output(funding, 0) == unspent  # mined

        data = b"\x00\x6a" + push(b"anchor")
        tx = spend([coin], [(p2pkh(key), 49_000), (data, 0)])
        await arc.broadcast(tx)
        spent = OutputStatus(funding, 0, OutputState.SPENT, 50_000, p2pkh(key), tx_id(tx))
        assert await arc.output(funding, 0) == spent  # spent by a mempool tx
        assert (await arc.output(tx_id(tx), 1)).state is OutputState.UNKNOWN  # data output
        sim.mine()
        assert await arc.output(funding, 0) == spent  # spent and mined
        assert await arc.output(tx_id(tx), 0) == sim.ledger.output(tx_id(tx), 0)


async def test_output_amounts_convert_exactly_from_bsv(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        arc = _arc(sim.url)
        for satoshis in (1, 99_999_999, 123_456_789, MAX_MONEY - 1, MAX_MONEY):
            coin = mint(sim.ledger, satoshis)
            status = await arc.output(tx_id(coin.tx), 0)
            assert (status.state, status.satoshis) == (OutputState.UNSPENT, satoshis)


def test_woc_output_refuses_what_it_cannot_read_exactly() -> None:
    txid = "ef" * 32

    def answer(value: object, truncated: bool = False) -> dict[str, object]:
        spk = {"hex": "51", "isTruncated": truncated}
        return {"txid": txid, "vout": [{"n": 0, "value": value, "scriptPubKey": spk}]}

    assert woc_output(answer(0.00012345), txid, 0) == (12_345, b"\x51")
    assert woc_output(answer(0.1), txid, 1) is None
    for bad in (answer(0.000000015), answer(-1), answer(True), answer(1, truncated=True)):
        with pytest.raises(ChainUnavailable):
            woc_output(bad, txid, 0)
    with pytest.raises(ChainUnavailable):
        woc_output({"txid": "00" * 32, "vout": []}, txid, 0)


async def test_unreachable_service_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    arc = _arc(f"http://127.0.0.1:{port}")
    with serve(tmp_path / "arc.db") as sim:
        tx, _ = pay(mint(sim.ledger, 10_000))  # parent linked: no lookup needed
    with pytest.raises(ChainUnavailable, match="unreachable"):
        await arc.broadcast(tx)
    with pytest.raises(ChainUnavailable):
        await arc.height()
    with pytest.raises(ChainUnavailable):
        await arc.status(tx_id(tx))
    with pytest.raises(ChainUnavailable):
        await arc.output(tx_id(tx), 0)
    with pytest.raises(ChainUnavailable):
        await arc.policy()
    with pytest.raises(ChainUnavailable):
        await arc.broadcast(Transaction.from_hex(tx.serialize()))  # the parent lookup fails


async def test_bsv_sdk_woc_tracker_height_is_broken_so_we_do_not_use_it(tmp_path: Path) -> None:
    with serve(tmp_path / "arc.db") as sim:
        sim.mine(2)
        tracker = WhatsOnChainTracker("test", http_client=TrioHttpClient(SyncHttpClient()))
        tracker.URL = f"{sim.url}/woc"
        assert await tracker.current_height() == 0  # reads the wrapper, not its data
        assert await _arc(sim.url).height() == 2


def test_settings_from_env() -> None:
    settings = ArcSettings.from_env({"M2MESH_NETWORK": "test", "M2MESH_ARC_API_KEY": "k"})
    assert settings.arc_url == DEFAULT_ARC_URLS["test"] and settings.api_key == "k"
    assert settings.woc_url is None
    custom = ArcSettings.from_env({"M2MESH_ARC_URL": "http://127.0.0.1:9", "M2MESH_WOC_URL": "x"})
    assert (custom.network, custom.arc_url, custom.woc_url) == ("main", "http://127.0.0.1:9", "x")
    with pytest.raises(ChainError):
        ArcSettings.from_env({"M2MESH_NETWORK": "regtest"})
