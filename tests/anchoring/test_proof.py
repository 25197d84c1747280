"""Proofs: a real anchored proof verifies offline; every tampered link fails with its reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.anchoring.errors import REASONS, HeadersError, ProofFailed
from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.proof import Proof, load_proof, parse_proof, single_tx_bump, verify_proof
from mesh.chain.ledger import LocalLedger
from mesh.chain.merkle import BlockHeader, mine_header
from tests.anchoring.conftest import Anchored
from tests.anchoring.helpers import edited, flip

MASKS = (0x01, 0x80)


def _reason(proof: Proof, headers: HeaderChain) -> str:
    with pytest.raises(ProofFailed) as caught:
        verify_proof(proof, headers)
    assert caught.value.reason in REASONS
    return caught.value.reason


def _samples(anchored: Anchored) -> list[Proof]:
    """Proofs covering both blocks, first/last/odd leaves, and a self-paired anchor."""
    keys = [("vibration", 0), ("vibration", 99), ("vibration", 122), ("meter", 6)]
    return [anchored.proofs[k] for k in keys]


def test_every_anchored_record_verifies_against_the_ledger_and_a_headers_file(
    anchored: Anchored,
) -> None:
    from_file = HeaderChain.load(anchored.headers_file)
    assert len(anchored.proofs) == 130
    for (stream, seq), proof in anchored.proofs.items():
        for headers in (anchored.headers, from_file):
            verified = verify_proof(proof, headers)
            assert (verified.record.stream, verified.record.seq) == (stream, seq)
            assert verified.block_height in (1, 2)
            assert verified.block_time == headers.at(verified.block_height).time  # type: ignore[union-attr]
    # The proof file round-trips through JSON.
    proof = anchored.proofs[("meter", 3)]
    assert parse_proof(json.loads(proof.to_json())) == proof


def _flip_each_byte(
    anchored: Anchored, section: str, key: str, expected: str, item: int | None = None
) -> None:
    for proof in _samples(anchored):
        document = proof.to_document()
        value = document[section][key] if item is None else document[section][key][item]
        for index in range(len(value) // 2):
            for mask in MASKS:

                def change(doc: dict[str, Any], index: int = index, mask: int = mask) -> None:
                    if item is None:
                        doc[section][key] = flip(doc[section][key], index, mask)
                    else:
                        doc[section][key][item] = flip(doc[section][key][item], index, mask)

                reason = _reason(edited(proof, change), anchored.headers)
                assert reason == expected, (section, key, item, index, mask)


def test_any_changed_byte_of_the_record_is_record_hash(anchored: Anchored) -> None:
    _flip_each_byte(anchored, "record", "body", "record-hash")
    _flip_each_byte(anchored, "record", "hash", "record-hash")


def test_any_changed_byte_of_the_signature_is_record_signature(anchored: Anchored) -> None:
    _flip_each_byte(anchored, "record", "signature", "record-signature")


def test_any_changed_byte_of_the_path_is_merkle_path(anchored: Anchored) -> None:
    for level in range(2):  # every proof has at least two levels; all levels below
        _flip_each_byte(anchored, "batch", "path", "merkle-path", item=level)
    proof = anchored.proofs[("vibration", 17)]
    for level in range(len(proof.path)):
        for mask in MASKS:

            def change(doc: dict[str, Any], level: int = level, mask: int = mask) -> None:
                doc["batch"]["path"][level] = flip(doc["batch"]["path"][level], 31, mask)

            assert _reason(edited(proof, change), anchored.headers) == "merkle-path"


def test_any_changed_byte_of_the_root_is_anchor_root_mismatch(anchored: Anchored) -> None:
    _flip_each_byte(anchored, "batch", "root", "anchor-root-mismatch")


def test_any_changed_byte_of_the_anchor_tx_is_anchor_tx(anchored: Anchored) -> None:
    _flip_each_byte(anchored, "anchor", "tx", "anchor-tx")
    _flip_each_byte(anchored, "anchor", "txid", "anchor-tx")


def test_any_changed_byte_of_the_block_proof_is_block_proof(anchored: Anchored) -> None:
    _flip_each_byte(anchored, "block", "bump", "block-proof")


def test_any_changed_byte_of_the_block_hash_is_header_unknown(anchored: Anchored) -> None:
    _flip_each_byte(anchored, "block", "hash", "header-unknown")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d["record"]["fields"].update(seq=5), "record-hash"),
        (lambda d: d["record"]["fields"].update(payload="00"), "record-hash"),
        (lambda d: d["record"]["fields"].update(extra=1), "record-hash"),
        (lambda d: d["batch"]["path"].pop(), "merkle-path"),
        (lambda d: d["batch"]["path"].append("00" * 32), "merkle-path"),
        (lambda d: d["block"].update(height=1), "header-unknown"),
        (lambda d: d["block"].update(height=999), "header-unknown"),
        (lambda d: d["block"].update(bump=d["block"]["bump"] + "00"), "block-proof"),
        (lambda d: d["block"].update(bump=d["block"]["bump"][:-2]), "block-proof"),
        (lambda d: d["block"].update(bump=""), "block-proof"),
    ],
)
def test_structural_edits_fail_with_their_reason(
    anchored: Anchored, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    proof = anchored.proofs[("vibration", 110)]  # mined in block 2
    assert _reason(edited(proof, change), anchored.headers) == reason


def test_a_valid_anchor_of_another_batch_is_anchor_tx(anchored: Anchored) -> None:
    proofs = anchored.proofs
    for record, donor in (
        (proofs[("vibration", 10)], proofs[("vibration", 110)]),  # same stream, other range
        (proofs[("meter", 1)], proofs[("vibration", 10)]),  # a transaction of another stream
    ):
        assert record.anchor_txid != donor.anchor_txid

        def change(doc: dict[str, Any], donor: Proof = donor) -> None:
            doc["anchor"] = donor.to_document()["anchor"]
            doc["block"] = donor.to_document()["block"]

        assert _reason(edited(record, change), anchored.headers) == "anchor-tx"


def test_one_transaction_anchors_the_batches_cut_together(anchored: Anchored) -> None:
    """Two batches of one stream, and two streams' batches, each share a transaction
    (an output each); every record's proof verifies against its own output."""
    proofs = anchored.proofs
    assert proofs[("vibration", 10)].anchor_txid == proofs[("vibration", 60)].anchor_txid
    assert proofs[("vibration", 110)].anchor_txid == proofs[("meter", 1)].anchor_txid
    outputs = {verify_proof(proofs[k], anchored.headers).vout for k in proofs}
    assert len(outputs) == 2  # two outputs in each transaction


def test_the_same_proof_against_another_chain_is_header_unknown(
    anchored: Anchored, tmp_path: Path
) -> None:
    with LocalLedger.create(tmp_path / "other.db") as other:
        other.mine(3)
        headers = HeaderChain.from_ledger(other)
    for proof in _samples(anchored):
        assert _reason(proof, headers) == "header-unknown"
    short = HeaderChain.checked(anchored.headers.headers[:2], 0, "short")  # heights 0..1
    assert _reason(anchored.proofs[("meter", 0)], short) == "header-unknown"
    assert verify_proof(anchored.proofs[("vibration", 0)], short).block_height == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"not json at all", "not JSON"),
        (b'{"m2mesh_proof": 1, "record": {"body": "00"', "not JSON"),
        (b"\xff\xfe\x00garbage", "not"),
        (b"[]", "not an m2mesh proof"),
        (b'{"m2mesh_proof": 2}', "not an m2mesh proof"),
        (b'{"m2mesh_proof": 1}', "proof.record is missing"),
    ],
)
def test_files_that_are_not_proofs_are_format_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "proof.json"
    path.write_bytes(content)
    with pytest.raises(ProofFailed) as caught:
        load_proof(path)
    assert caught.value.reason == "format" and message in caught.value.detail
    with pytest.raises(ProofFailed, match="no such file"):
        load_proof(tmp_path / "missing.json")


def test_truncating_a_real_proof_file_is_a_format_error(anchored: Anchored, tmp_path: Path) -> None:
    text = anchored.proofs[("vibration", 3)].to_json()
    path = tmp_path / "proof.json"
    for cut in (1, len(text) // 3, len(text) // 2, len(text) - 3):
        path.write_text(text[:cut])
        with pytest.raises(ProofFailed) as caught:
            load_proof(path)
        assert caught.value.reason == "format"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["record"].pop("signature"), "record.signature is missing"),
        (lambda d: d["record"].update(body=7), "record.body must be str"),
        (lambda d: d["record"].update(hash="zz"), "record.hash is not hex"),
        (lambda d: d["batch"].update(root="00"), "batch.root must be 32 bytes"),
        (lambda d: d["batch"].update(path="00"), "batch.path must be list"),
        (lambda d: d["block"].update(height="5"), "block.height must be int"),
        (lambda d: d["block"].update(height=-1), "must not be negative"),
        (lambda d: d.update(anchor=[]), "proof.anchor must be dict"),
    ],
)
def test_malformed_fields_are_named(
    anchored: Anchored, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    document = anchored.proofs[("meter", 2)].to_document()
    change(document)
    with pytest.raises(ProofFailed) as caught:
        parse_proof(document)
    assert caught.value.reason == "format" and message in caught.value.detail


def test_headers_files_are_checked(anchored: Anchored, tmp_path: Path) -> None:
    document = json.loads(anchored.headers_file.read_text())
    path = tmp_path / "headers.json"

    def load(doc: Any) -> HeaderChain:
        path.write_text(json.dumps(doc))
        return HeaderChain.load(path)

    assert load(document).tip_height == anchored.headers.tip_height
    # A checkpointed chain (from height 1 on) still proves blocks 1 and 2.
    partial = load({**document, "start_height": 1, "headers": document["headers"][1:]})
    verify_proof(anchored.proofs[("meter", 0)], partial)
    real = BlockHeader.parse(bytes.fromhex(document["headers"][2]))
    unlinked = mine_header(b"\x01" * 32, real.merkle_root, real.time)
    no_work = BlockHeader(real.version, real.prev_hash, real.merkle_root, real.time, 0x1D00FFFF, 0)
    for bad, message in [
        ({**document, "m2mesh_headers": 9}, "not an m2mesh headers file"),
        ({**document, "headers": [*document["headers"][:1], "00"]}, "header 1"),
        ({**document, "headers": []}, "no headers"),
        ({**document, "start_height": -1}, "start_height"),
        (
            {**document, "headers": [*document["headers"][:2], unlinked.serialize().hex()]},
            "header 2 does not link to header 1",
        ),
        (
            {**document, "headers": [*document["headers"][:2], no_work.serialize().hex()]},
            "header 2 does not meet its proof-of-work",
        ),
    ]:
        with pytest.raises(HeadersError, match=message):
            load(bad)
    path.write_text("{truncated")
    with pytest.raises(HeadersError, match="not JSON"):
        HeaderChain.load(path)
    with pytest.raises(HeadersError, match="no such file"):
        HeaderChain.load(tmp_path / "nope.json")


def test_a_compound_bump_is_reduced_to_the_single_tx_form(anchored: Anchored) -> None:
    block2 = [b for b in anchored.batches if b.block_height == 2]
    txids = [b.txid for b in block2]
    assert len(txids) == 2 and all(txids)
    with LocalLedger.open(anchored.ledger) as ledger:
        singles = {t: ledger.merkle_proof(t) for t in txids if t}
        compound = ledger.merkle_proof(txids[0] or "")
    assert compound is not None
    compound.combine(singles[txids[1] or ""])  # both anchors of block 2 in one BUMP
    for txid, single in singles.items():
        assert single is not None
        assert single_tx_bump(compound, txid) == single.to_binary()
    with pytest.raises(ValueError, match="does not contain"):
        single_tx_bump(compound, "00" * 32)
