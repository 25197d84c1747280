"""Who must prove what, and the checks on both ends of a proof (no I/O).

A `Requirement` is a profile's policy: a certificate of one type, signed by one of the
listed certifiers, revealing the listed fields, whose values meet the conditions
(``calibrated_until >= today``). The *verifier* asks (`ProofRequest`) and checks what
comes back (`check_offer`): the certificate is the prover's own, of that type and
certifier, signed, and the keyring opens the asked fields for this verifier, whose
values meet the conditions; then the shell looks up the revocation outpoint (spent
means revoked). The *subject* answers (`answer_request`) with one of the certificates
it holds, revealing exactly the fields asked for and never one its profile does not
disclose. Every refusal is a `CertificateError` whose code names it. (docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from bsv.keys import PrivateKey, PublicKey

from mesh.certs.certificate import NO_REVOCATION, Certificate, CertificateError
from mesh.certs.conditions import Condition
from mesh.certs.fields import keyring_for, open_fields
from mesh.certs.frames import MAX_ASKED, ProofOffer, ProofRefused, ProofRequest, RevealedKey


@dataclass(frozen=True)
class Requirement:
    """What a peer must prove (a profile's ``[requirements.NAME]``)."""

    name: str
    type: str
    """The certificate type (base64 of 32 bytes)."""
    type_name: str
    certifiers: tuple[str, ...]
    reveal: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()

    def request(self, request_id: bytes) -> ProofRequest:
        """The frame that asks for it."""
        return ProofRequest(request_id, self.type, self.certifiers, self.reveal)


@dataclass(frozen=True)
class Proven:
    """What a peer proved: its certificate and the revealed values."""

    requirement: str
    type_name: str
    certifier: str
    serial_number: str
    values: Mapping[str, str]
    revocation_outpoint: str
    certificate: Certificate | None = field(default=None, compare=False)
    """The certificate itself (its fields encrypted: it reveals nothing by itself, and
    anyone can check its certifier's signature, e.g. in a part passport)."""

    @property
    def revocable(self) -> bool:
        """Whether the certifier can revoke it (a revocation outpoint to look up)."""
        return self.revocation_outpoint != NO_REVOCATION


@dataclass(frozen=True)
class Held:
    """A certificate this agent holds, its master keyring, and the fields its profile
    lets it disclose."""

    certificate: Certificate
    master_keyring: Mapping[str, str]
    disclose: tuple[str, ...] = field(default_factory=tuple)


def check_offer(
    requirement: Requirement,
    offer: ProofOffer,
    prover: str,
    verifier: PrivateKey,
    today: date,
) -> Proven:
    """The verifier's checks of `prover`'s answer (`CertificateError` naming the first
    that fails); the revocation outpoint is left to the caller, who has the chain."""
    cert = Certificate.from_binary(offer.certificate)
    if cert.subject != prover:
        raise CertificateError("subject", "the certificate is not the prover's")
    if cert.type != requirement.type:
        raise CertificateError("type", f"not a {requirement.type_name} certificate")
    if requirement.certifiers and cert.certifier not in requirement.certifiers:
        raise CertificateError(
            "certifier", f"certified by {cert.certifier[:16]}…, not one we trust"
        )
    cert.verify()
    keyring = {entry.name: entry.key for entry in offer.keyring}
    absent = [name for name in requirement.reveal if name not in keyring]
    if absent:
        raise CertificateError("missing", f"field(s) {', '.join(absent)} not revealed")
    values = open_fields(verifier, PublicKey(prover), cert, keyring, master=False)
    for condition in requirement.conditions:
        why = condition.check(values, today)
        if why is not None:
            raise CertificateError("expired" if condition.today else "condition", why)
    return Proven(
        requirement.name,
        requirement.type_name,
        cert.certifier,
        cert.serial_number,
        {name: values[name] for name in requirement.reveal},
        cert.revocation_outpoint,
        cert,
    )


def answer_request(
    request: ProofRequest,
    held: Sequence[Held],
    subject: PrivateKey,
    verifier: str,
) -> ProofOffer | ProofRefused:
    """The subject's answer: one held certificate of the asked type and a trusted
    certifier, revealing exactly the asked fields to `verifier` -- or why not."""
    rid = request.request_id
    if len(request.fields) > MAX_ASKED or len(request.certifiers) > MAX_ASKED:
        return ProofRefused(rid, "format", f"at most {MAX_ASKED} fields and certifiers")
    if len(set(request.fields)) != len(request.fields):
        return ProofRefused(rid, "format", "a field asked twice")
    of_type = [h for h in held if h.certificate.type == request.type]
    if not of_type:
        return ProofRefused(rid, "missing", "no certificate of that type here")
    trusted = [
        h
        for h in of_type
        if not request.certifiers or h.certificate.certifier in request.certifiers
    ]
    if not trusted:
        return ProofRefused(rid, "certifier", "no certificate of that type from those certifiers")
    for h in trusted:
        hidden = [name for name in request.fields if name not in h.disclose]
        if hidden:
            reason = f"field(s) {', '.join(hidden)} not disclosed by this agent's profile"
            return ProofRefused(rid, "undisclosed", reason)
        if any(name not in h.certificate.fields for name in request.fields):
            continue
        try:
            verifier_key = PublicKey(verifier)
            ring = keyring_for(
                subject, h.certificate, h.master_keyring, verifier_key, request.fields
            )
        except CertificateError as exc:
            return ProofRefused(rid, exc.code, exc.reason)
        keys = tuple(RevealedKey(name, key) for name, key in ring.items())
        return ProofOffer(rid, h.certificate.to_binary(), keys)
    return ProofRefused(rid, "missing", "no certificate here has every field asked for")


__all__ = ["Held", "Proven", "Requirement", "answer_request", "check_offer"]
