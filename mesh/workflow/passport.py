"""A part passport: one self-contained bundle that proves a part's story offline (no I/O).

What was ordered (the escrow's terms: buyer, machine, inspector, the completion
payment), who made it (the machine's identity, and its certificate where there is
one), what was measured and metered while it was made (signed records of the
machine's meter statements and the sensors' readings), what the inspector decided
(its signed verdict record), and where the money went (the escrow's funding and its
settlement, each proven mined). Every record carries its anchor proof
(`mesh.anchoring.proof`); every transaction its BUMP. `verify_passport` checks each
link against a header chain the verifier trusts and names the first that fails
(`PassportFailed.link`); what holds is told as the part's story.

The JSON document (format 1)::

    {"m2mesh_passport": 1, "part": str, "order_id": hex,
     "buyer": hex, "machine": hex, "inspector": hex,
     "amount": int, "fee": int, "refund_height": int,
     "buyer_payout": hex, "machine_payout": hex,
     "funding": {"tx": hex, "height": int, "block": hex, "bump": hex},
     "settlement": {...the same...},
     "records": [proof, ...],           (mesh.anchoring.proof documents)
     "certificates": {"machine": {...BRC-52...} | null, "inspector": ... | null}}

(docs/ARCHITECTURE.md §4, §7)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mesh.anchoring.errors import ProofFailed
from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.proof import Proof, Verified, parse_proof, tx_in_block, verify_proof
from mesh.certs.certificate import Certificate, CertificateError
from mesh.chain.errors import TxRejected
from mesh.chain.rules import Prevout, check_scripts
from mesh.chain.tx import Outpoint, parse_exact, txid_of
from mesh.errors import RemoteProtocolError
from mesh.workflow.escrow import EscrowError, EscrowTerms, Way, escrow_tx
from mesh.workflow.orders import service_order_prefix, terms_of
from mesh.workflow.verdict import STREAM, VerdictBody, VerdictError

FORMAT = 1


class PassportFailed(RemoteProtocolError):
    """A link of a passport that does not hold: `link` names it, `reason` says why."""

    def __init__(self, link: str, reason: str) -> None:
        super().__init__(link, reason)
        self.link = link
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.link}: {self.reason}"


@dataclass(frozen=True)
class MinedTx:
    """A transaction and the proof it was mined."""

    raw: bytes
    height: int
    block_hash: str
    bump: bytes

    def to_document(self) -> dict[str, Any]:
        """Its JSON form."""
        return {"tx": self.raw.hex(), "height": self.height, "block": self.block_hash,
                "bump": self.bump.hex()}  # fmt: skip


@dataclass(frozen=True)
class Passport:
    """Everything one part's story needs (see the module doc)."""

    part: str
    order_id: bytes
    buyer: str
    machine: str
    inspector: str
    amount: int
    fee: int
    refund_height: int
    buyer_payout: bytes
    machine_payout: bytes
    funding: MinedTx
    settlement: MinedTx
    records: tuple[Proof, ...]
    machine_certificate: Certificate | None = None
    inspector_certificate: Certificate | None = None

    def terms(self) -> EscrowTerms:
        """The escrow's terms, keys derived from the three identities."""
        return terms_of(self.order_id, self.buyer, self.machine, self.inspector, self.amount,
                        self.fee, self.refund_height, self.buyer_payout, self.machine_payout,
                        txid_of(self.funding.raw))  # fmt: skip

    def to_document(self) -> dict[str, Any]:
        """The JSON document."""
        certs = {
            "machine": self.machine_certificate.to_json() if self.machine_certificate else None,
            "inspector": (
                self.inspector_certificate.to_json() if self.inspector_certificate else None
            ),
        }
        return {
            "m2mesh_passport": FORMAT,
            "part": self.part,
            "order_id": self.order_id.hex(),
            "buyer": self.buyer,
            "machine": self.machine,
            "inspector": self.inspector,
            "amount": self.amount,
            "fee": self.fee,
            "refund_height": self.refund_height,
            "buyer_payout": self.buyer_payout.hex(),
            "machine_payout": self.machine_payout.hex(),
            "funding": self.funding.to_document(),
            "settlement": self.settlement.to_document(),
            "records": [proof.to_document() for proof in self.records],
            "certificates": certs,
        }


def parse_passport(document: Any) -> Passport:
    """A passport from its JSON document; `PassportFailed("format")` names what is wrong."""
    try:
        if not isinstance(document, Mapping) or document.get("m2mesh_passport") != FORMAT:
            raise ValueError(f"not an m2mesh passport (format {FORMAT})")
        certs = document.get("certificates") or {}
        return Passport(
            part=_str(document["part"]),
            order_id=bytes.fromhex(_str(document["order_id"])),
            buyer=_str(document["buyer"]),
            machine=_str(document["machine"]),
            inspector=_str(document["inspector"]),
            amount=_int(document["amount"]),
            fee=_int(document["fee"]),
            refund_height=_int(document["refund_height"]),
            buyer_payout=bytes.fromhex(_str(document["buyer_payout"])),
            machine_payout=bytes.fromhex(_str(document["machine_payout"])),
            funding=_mined(document["funding"]),
            settlement=_mined(document["settlement"]),
            records=tuple(parse_proof(p) for p in document["records"]),
            machine_certificate=_certificate(certs.get("machine")),
            inspector_certificate=_certificate(certs.get("inspector")),
        )
    except (KeyError, TypeError, ValueError, ProofFailed, CertificateError) as exc:
        raise PassportFailed("format", f"{type(exc).__name__}: {exc}") from None


def verify_passport(passport: Passport, headers: HeaderChain) -> list[str]:
    """Check every link against trusted `headers`; the part's story, one line each.
    `PassportFailed` names the first link that does not hold."""
    p = passport
    try:
        terms = p.terms()
    except (EscrowError, ValueError) as exc:
        raise PassportFailed("work-order", str(exc)) from None
    story = [f"part {p.part}, work order {p.order_id.hex()}"]
    # The certificates, where given: the certifier's signature, issued to that party.
    for role, cert, who in (
        ("machine", p.machine_certificate, p.machine),
        ("inspector", p.inspector_certificate, p.inspector),
    ):
        if cert is None:
            continue
        try:
            cert.verify()
        except CertificateError as exc:
            raise PassportFailed(f"{role}-certificate", str(exc)) from None
        if cert.subject != who:
            raise PassportFailed(f"{role}-certificate", f"issued to another key, not the {role}")
        story.append(f"  {role} {who[:16]}… certified by {cert.certifier[:16]}…")
    # The money in: the escrow's funding, mined, paying the agreed 2-of-3.
    funding_txid = txid_of(p.funding.raw)
    header = _mined_in(p.funding, funding_txid, "funding", headers)
    out = _output(p.funding.raw, terms.funding_vout, "funding")
    if (out.satoshis, out.locking_script.serialize()) != (terms.amount, terms.script):
        raise PassportFailed("funding", "the funding does not pay the amount to the 2-of-3")
    story.append(
        f"  escrow {terms.amount} sat funded by the buyer {p.buyer[:16]}… in block "
        f"{p.funding.height} ({_when(header.time)})"
    )
    # The records: each signed by its agent and anchored in a trusted block.
    verified = [_record(proof, i, headers) for i, proof in enumerate(p.records)]
    by_stream: dict[str, list[Verified]] = {}
    for v in verified:
        by_stream.setdefault(v.record.stream, []).append(v)
    tag = service_order_prefix(p.order_id).hex()
    meters = [
        m
        for v in by_stream.get("meters", [])
        if v.record.agent.hex() == p.machine and (m := _meter(v.record.payload, p.buyer, tag))
    ]
    if not meters:
        raise PassportFailed("meters", "no meter statement of the machine for this work order")
    units, paid = sum(m[0] for m in meters), sum(m[1] for m in meters)
    story.append(f"  {len(meters)} meter statement(s) of the machine for this order, anchored:"
                 f" {units} unit(s) of tool time, {paid} sat paid over a channel")  # fmt: skip
    readings = [v for v in verified if v.record.stream.startswith("readings/")]
    if readings:
        agents = {v.record.agent.hex()[:16] for v in readings}
        story.append(f"  {len(readings)} process reading(s) signed by {', '.join(sorted(agents))}…")
    # The verdict: the inspector's record, about this order and this escrow.
    verdicts = [v for v in by_stream.get(STREAM, []) if v.record.agent.hex() == p.inspector]
    if len(verdicts) != 1:
        raise PassportFailed("verdict", f"{len(verdicts)} verdicts of the inspector, not one")
    try:
        body = VerdictBody.decode(verdicts[0].record.payload)
    except VerdictError as exc:
        raise PassportFailed("verdict", str(exc)) from None
    bound = (body.order_id, body.part, body.buyer, body.machine, body.escrow)
    if bound != (p.order_id, p.part, p.buyer, p.machine, f"{funding_txid}.{terms.funding_vout}"):
        raise PassportFailed("verdict", "the verdict is about another order, part or escrow")
    if body.terms != terms.digest():
        raise PassportFailed("work-order", "the terms are not those the verdict signed")
    values = ", ".join(f"{k} {v}" for k, v in body.values)
    story.append(
        f"  inspected by {p.inspector[:16]}…: {'PASS' if body.passed else 'FAIL'} ({values})"
    )
    # The money out: the settlement spends the escrow the way the verdict says.
    settlement_txid = txid_of(p.settlement.raw)
    _mined_in(p.settlement, settlement_txid, "settlement", headers)
    way = _way(p.settlement.raw, terms)
    if way is not (Way.RELEASE if body.passed else Way.RETURN) and way is not Way.REFUND:
        raise PassportFailed("settlement", f"the escrow was settled by the {way.value[0]}, "
                                           f"against the verdict")  # fmt: skip
    paid = terms.amount - terms.fee
    to = "the machine" if way is Way.RELEASE else "the buyer"
    story.append(f"  escrow settled by the {way.value[0]}: {paid} sat to {to} in block "
                 f"{p.settlement.height}")  # fmt: skip
    return story


def _meter(payload: bytes, buyer: str, tag: str) -> tuple[int, int] | None:
    """(units, paid) of a machine's final meter statement to `buyer` of a service
    order whose id starts with the work order's `tag`; None for any other record."""
    try:
        fields = json.loads(payload)
        if (
            isinstance(fields, dict)
            and fields.get("role") == "provider"
            and fields.get("final") is True
            and fields.get("peer") == buyer
            and str(fields.get("order", "")).startswith(tag)
        ):
            return int(fields["units"]), int(fields["paid"])
    except (ValueError, KeyError, TypeError):
        pass
    return None


def _way(raw: bytes, terms: EscrowTerms) -> Way:
    """Which way out `raw` is: its outputs are exactly one way's, and its input's
    unlocking script passes the interpreter against the escrow output."""
    try:
        tx = parse_exact(raw)
    except TxRejected as exc:
        raise PassportFailed("settlement", f"not a transaction ({exc.detail})") from None
    spent = Outpoint(terms.funding_txid, terms.funding_vout)
    try:
        check_scripts(tx, {spent: Prevout(terms.amount, terms.script)})
    except TxRejected as exc:
        raise PassportFailed("settlement", f"does not spend the escrow ({exc.detail})") from None
    for way in Way:
        expected = escrow_tx(terms, way)
        if [(o.satoshis, o.locking_script.serialize()) for o in tx.outputs] == [
            (o.satoshis, o.locking_script.serialize()) for o in expected.outputs
        ] and tx.locktime == expected.locktime:
            return way
    raise PassportFailed("settlement", "the escrow was spent to something no way out pays")


def _mined_in(mined: MinedTx, txid: str, link: str, headers: HeaderChain) -> Any:
    try:
        return tx_in_block(txid, mined.bump, mined.height, mined.block_hash, headers)
    except ProofFailed as exc:
        raise PassportFailed(link, f"{exc.reason}: {exc.detail}") from None


def _record(proof: Proof, index: int, headers: HeaderChain) -> Verified:
    try:
        return verify_proof(proof, headers)
    except ProofFailed as exc:
        raise PassportFailed(f"record {index}", f"{exc.reason}: {exc.detail}") from None


def _output(raw: bytes, vout: int, link: str) -> Any:
    try:
        return parse_exact(raw).outputs[vout]
    except (TxRejected, IndexError):
        raise PassportFailed(link, f"no output {vout} in the {link} transaction") from None


def _mined(obj: Any) -> MinedTx:
    return MinedTx(
        bytes.fromhex(_str(obj["tx"])), _int(obj["height"]), _str(obj["block"]),
        bytes.fromhex(_str(obj["bump"])),
    )  # fmt: skip


def _certificate(obj: Any) -> Certificate | None:
    return None if obj is None else Certificate.from_json(obj)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


__all__ = ["FORMAT", "MinedTx", "Passport", "PassportFailed", "parse_passport", "verify_passport"]
