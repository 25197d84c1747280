"""Fuzzing offline proof verification: a forged or damaged proof never verifies.

Genuine proofs come from a real run: an `Anchorer` logs records on two streams,
anchors them in three batches (odd and even sizes) on a LocalLedger file, and the
ledger's header chain is the verifier's trust anchor. Each input then starts from a
genuine proof and applies one to three edits: flip a byte of any hex field, change a
number or a string, delete a key, put a value of the wrong type, graft a field from
another genuine proof (its path, its anchor transaction, its block proof, its
signature), or damage the file's text itself (truncation, byte edits, not UTF-8).

The property: `load_proof` + `verify_proof` either raise `ProofFailed` whose reason
is one of `REASONS`, or return a verification of a record that really was anchored
-- the same record hash, agent, stream and seq as a genuine proof. Nothing else is
ever raised, and no edit makes one record's proof prove another.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from mesh.anchoring import REASONS, BatchPolicy, HeaderChain, ProofFailed, load_proof, verify_proof
from mesh.anchoring.proof import Proof, clear_caches
from mesh.anchoring.service import AnchorConfig
from mesh.chain.ledger import LocalLedger
from tests.anchoring.helpers import create_ledger, running_anchorer
from tests.reliability.budget import CI_EXAMPLES, SLOW_EXAMPLES, fuzz_settings

HEX_FIELDS = (
    ("record", "body"),
    ("record", "hash"),
    ("record", "signature"),
    ("batch", "root"),
    ("anchor", "txid"),
    ("anchor", "tx"),
    ("block", "hash"),
    ("block", "bump"),
)
GRAFTS = (
    ("record", "signature"),
    ("batch", "path"),
    ("batch", "root"),
    ("anchor", "tx"),
    ("anchor", "txid"),
    ("block", "bump"),
    ("block", "height"),
    ("block", "hash"),
    ("record", "fields"),
)


@functools.cache
def genuine(base: Path) -> tuple[tuple[dict[str, Any], ...], HeaderChain]:
    """Proof documents of records anchored on a real ledger, and its header chain."""
    ledger = create_ledger(base / "ledger.db")
    config = AnchorConfig(batch=BatchPolicy(max_records=7, max_age=3600))

    async def go() -> list[Proof]:
        async with running_anchorer(base / "producer", ledger, config=config) as run:
            await run.anchorer.log_many("vibration", [b"rms=%d" % i for i in range(11)])
            await run.anchorer.log_many("meter", [b"paid %d" % i for i in range(4)])
            await run.anchorer.anchor_now()
            await run.chain.mine()
            await run.anchorer.wait_mined()
            return [
                p
                for b in run.anchorer.records.batches()
                for p in run.anchorer.records.batch_proofs(b.id)
            ]

    proofs = trio.run(go)
    with LocalLedger.open(ledger) as opened:
        headers = HeaderChain.from_ledger(opened)
    return tuple(p.to_document() for p in proofs), headers


def identity_of(document: dict[str, Any]) -> tuple[str, str, str, int]:
    record = document["record"]
    return (
        record["hash"],
        record["fields"]["agent"],
        record["fields"]["stream"],
        record["fields"]["seq"],
    )


@st.composite
def edited(draw: st.DrawFn, documents: tuple[dict[str, Any], ...]) -> tuple[int, bytes]:
    """A genuine proof (its index) and the bytes of an edited proof file."""
    index = draw(st.integers(0, len(documents) - 1))
    document = copy.deepcopy(documents[index])
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "number", "string", "delete", "type", "graft", "path"]))
        section, key = draw(st.sampled_from(HEX_FIELDS if op == "flip" else GRAFTS))
        holder = document.get(section)
        if not isinstance(holder, dict):
            continue
        value = holder.get(key)
        if op == "flip" and isinstance(value, str) and value:
            raw = bytearray(bytes.fromhex(value)) if _is_hex(value) else bytearray(b"\x00")
            raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
            holder[key] = raw.hex()
        elif op == "number":
            block, fields = _sub(document, "block"), _sub(_sub(document, "record"), "fields")
            target, name = (block, "height") if draw(st.booleans()) else (fields, "seq")
            target[name] = draw(st.integers(-(2**64), 2**64))
        elif op == "string":
            fields = _sub(_sub(document, "record"), "fields")
            fields[draw(st.sampled_from(["stream", "agent", "payload", "prev"]))] = draw(
                st.text(max_size=70)
            )
        elif op == "delete":
            holder.pop(key, None)
        elif op == "type":
            holder[key] = draw(st.sampled_from([None, 0, 1.5, [], {}, "zz", True]))
        elif op == "graft":
            other = documents[draw(st.integers(0, len(documents) - 1))]
            holder[key] = copy.deepcopy(other[section][key])
        else:
            path = _sub(document, "batch").get("path")
            if isinstance(path, list) and path:
                spot = draw(st.integers(0, len(path) - 1))
                choice = draw(st.sampled_from(["drop", "dup", "swap"]))
                if choice == "drop":
                    del path[spot]
                elif choice == "dup":
                    path.insert(spot, path[spot])
                else:
                    path[spot] = path[-1 - spot]
    text = json.dumps(document).encode()
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "byte", "latin"]))
    if damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "byte":
        buf = bytearray(text)
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        text = bytes(buf)
    elif damage == "latin":
        text = text.replace(b'"', b"\xff", 1)
    return index, text


def _sub(document: dict[str, Any], key: str) -> dict[str, Any]:
    """document[key] if it is still an object (an earlier edit may have replaced it)."""
    value = document.get(key)
    return value if isinstance(value, dict) else {}


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def run_proof_fuzz(examples: int, folder: Path) -> dict[str, int]:
    documents, headers = genuine(folder)
    known = {identity_of(d) for d in documents}
    outcomes: dict[str, int] = {}
    path = folder / "proof.json"

    @fuzz_settings(examples)
    @given(edited(documents))
    def fuzz(case: tuple[int, bytes]) -> None:
        _, text = case
        path.write_bytes(text)
        clear_caches()  # a cached parse of a genuine anchor must not mask an edited one
        try:
            verified = verify_proof(load_proof(path), headers)
        except ProofFailed as exc:
            assert exc.reason in REASONS, exc
            outcome = exc.reason
        else:
            got = (
                verified.record_hash.hex(),
                verified.record.agent.hex(),
                verified.record.stream,
                verified.record.seq,
            )
            assert got in known, f"an edited proof verified a record never anchored: {got}"
            outcome = "verified"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    for document in documents:  # the genuine ones verify, or the fuzz proves nothing
        path.write_text(json.dumps(document))
        verify_proof(load_proof(path), headers)
    fuzz()
    print(f"\nproofs: {sum(outcomes.values())} edited proofs {outcomes}")
    return outcomes


def test_edited_proofs_fail_with_a_reason_or_prove_only_the_real_record(tmp_path: Path) -> None:
    """1 000 edited proof files: each fails with one of the documented reasons or still
    proves exactly the genuine record; most reasons are reached."""
    outcomes = run_proof_fuzz(CI_EXAMPLES, tmp_path)
    assert len(set(outcomes) - {"verified"}) >= 6, outcomes


@pytest.mark.slow
def test_proof_fuzz_slow(tmp_path: Path) -> None:
    """The same over 100 000 edited proofs."""
    outcomes = run_proof_fuzz(SLOW_EXAMPLES, tmp_path)
    assert sum(outcomes.values()) >= SLOW_EXAMPLES
