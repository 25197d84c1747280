"""The escrow of a part's completion payment: each way out, signed by the right two,
passes bsv-sdk's script interpreter and a LocalLedger; any other pair of signatures,
or a changed byte, does not; the refund waits for its height."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from bsv.keys import PrivateKey

from mesh.chain.errors import TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Prevout, check_scripts
from mesh.chain.tx import Outpoint, parse_exact
from mesh.channel.txs import p2pkh_for_key
from mesh.workflow.escrow import EscrowError, EscrowTerms, Way, escrow_tx, sign, signed

PARTIES = ("buyer", "machine", "inspector")


def keys() -> dict[str, PrivateKey]:
    return {party: PrivateKey() for party in PARTIES}


def terms_for(
    k: dict[str, PrivateKey], txid: str, vout: int, refund_height: int = 50
) -> EscrowTerms:
    pub = {p: k[p].public_key().serialize() for p in PARTIES}
    return EscrowTerms(
        secrets.token_bytes(16),
        pub["buyer"],
        pub["machine"],
        pub["inspector"],
        amount=5_000,
        fee=20,
        refund_height=refund_height,
        buyer_payout=p2pkh_for_key(PrivateKey().public_key().serialize()),
        machine_payout=p2pkh_for_key(PrivateKey().public_key().serialize()),
        funding_txid=txid,
        funding_vout=vout,
    )


def complete(terms: EscrowTerms, way: Way, k: dict[str, PrivateKey]) -> bytes:
    return signed(terms, way, {p: sign(terms, way, p, k[p]) for p in way.signers})


@pytest.mark.parametrize("way", list(Way))
def test_each_way_out_passes_the_interpreter_signed_by_its_two(way: Way) -> None:
    k = keys()
    terms = terms_for(k, secrets.token_hex(32), 1)
    tx = parse_exact(complete(terms, way, k))
    check_scripts(tx, {Outpoint(terms.funding_txid, 1): Prevout(terms.amount, terms.script)})
    payout = terms.machine_payout if way is Way.RELEASE else terms.buyer_payout
    assert tx.outputs[0].locking_script.serialize() == payout
    assert tx.outputs[0].satoshis == terms.amount - terms.fee
    assert (tx.locktime, tx.inputs[0].sequence) == (
        (50, 0xFFFFFFFE) if way is Way.REFUND else (0, 0xFFFFFFFF)
    )


@pytest.mark.parametrize("way", list(Way))
def test_no_other_pair_and_no_changed_signature_unlocks_it(way: Way) -> None:
    k = keys()
    terms = terms_for(k, secrets.token_hex(32), 0)
    outsider = next((p for p in PARTIES if p not in way.may_sign), None)
    if outsider is not None:  # (anyone may sign a release with the inspector)
        with pytest.raises(Exception, match="does not sign"):
            sign(terms, way, outsider, k[outsider])
    good = {p: sign(terms, way, p, k[p]) for p in way.signers}
    # A signature made for another way out, or by another key, is refused.
    other_way = next(w for w in Way if w is not way and way.signers[0] in w.signers)
    swapped = dict(
        good, **{way.signers[0]: sign(terms, other_way, way.signers[0], k[way.signers[0]])}
    )
    with pytest.raises(EscrowError, match="signature"):
        signed(terms, way, swapped)
    bad = bytearray(good[way.signers[1]])
    bad[-3] ^= 1
    with pytest.raises(EscrowError, match="signature"):
        signed(terms, way, dict(good, **{way.signers[1]: bytes(bad)}))
    # The script is 2-of-3: any two can move the coins, which is why each party signs
    # only its own ways out. One party alone, or one signature twice, moves nothing.
    tx = escrow_tx(terms, way)
    alone = good[way.signers[0]] + b"\x41"
    prevouts = {Outpoint(terms.funding_txid, 0): Prevout(terms.amount, terms.script)}
    for sigs in ([alone], [alone, alone]):
        unlock = b"\x00" + b"".join(bytes([len(sig)]) + sig for sig in sigs)
        forged = parse_exact(escrow_tx(terms, way, unlock).serialize())
        with pytest.raises(TxRejected):
            check_scripts(forged, prevouts)
    assert tx.outputs[0].satoshis == terms.amount - terms.fee


def test_on_a_ledger_the_release_spends_at_once_and_the_refund_only_at_its_height(
    tmp_path: Path,
) -> None:
    k = keys()
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        probe = terms_for(k, "00" * 32, 0)
        funding = ledger.faucet(probe.script, probe.amount)
        ledger.mine()
        height = ledger.height()
        terms = terms_for(k, funding.txid, funding.vout, refund_height=height + 5)
        refund = complete(terms, Way.REFUND, k)
        with pytest.raises(TxRejected, match="final"):
            ledger.submit(refund)
        ledger.mine(5)
        assert ledger.submit(refund)
        # A second escrow: released on PASS, and its presigned refund then double-spends.
        second = ledger.faucet(probe.script, probe.amount)
        terms = terms_for(k, second.txid, second.vout, refund_height=ledger.height() + 1)
        assert ledger.submit(complete(terms, Way.RELEASE, k))
        ledger.mine(2)
        with pytest.raises(TxRejected):
            ledger.submit(complete(terms, Way.REFUND, k))


def test_terms_that_no_transaction_can_carry_are_refused() -> None:
    k = keys()
    good = terms_for(k, secrets.token_hex(32), 0)
    for change, rule in (
        ({"machine_key": good.buyer_key}, "keys"),
        ({"fee": 0}, "amount"),
        ({"fee": 5_000}, "amount"),
        ({"refund_height": 600_000_000}, "refund"),
        ({"buyer_payout": b"\x6a"}, "payout"),
    ):
        fields = {**good.__dict__, **change}
        with pytest.raises(EscrowError, match=rule):
            EscrowTerms(**fields)
