"""Both ends of a proof, without a network: what a subject reveals when asked, and the
verifier's checks, each refusal by its code (`mesh.certs.policy`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest
from bsv.keys import PrivateKey

from mesh.certs import CertificateError, issue, type_id
from mesh.certs.conditions import parse_condition
from mesh.certs.frames import ProofOffer, ProofRefused, ProofRequest
from mesh.certs.policy import Held, Requirement, answer_request, check_offer

CALIBRATION = type_id("m2mesh.calibration")
TODAY = date(2026, 12, 6)
VALUES = {"calibrated_until": "2027-06-30", "serial": "SN-1", "owner": "ACME", "accuracy": "0.5"}
LAB, SENSOR, BUYER, ROGUE = (PrivateKey() for _ in range(4))


def held(values: dict[str, str] = VALUES, certifier: PrivateKey = LAB) -> Held:
    got = issue(certifier, SENSOR.public_key(), CALIBRATION, values)
    return Held(got.certificate, got.master_keyring, ("calibrated_until", "accuracy"))


def requirement(*conditions: str, certifiers: tuple[str, ...] | None = None) -> Requirement:
    trusted = (LAB.public_key().hex(),) if certifiers is None else certifiers
    return Requirement(
        "calibrated",
        CALIBRATION,
        "m2mesh.calibration",
        trusted,
        ("calibrated_until",),
        tuple(parse_condition(c) for c in conditions),
    )


def ask(req: Requirement, holding: list[Held], verifier: PrivateKey = BUYER) -> ProofOffer:
    answer = answer_request(req.request(b"r" * 16), holding, SENSOR, verifier.public_key().hex())
    assert isinstance(answer, ProofOffer), answer
    return answer


def test_a_proof_reveals_only_the_fields_asked_and_meets_the_conditions() -> None:
    req = requirement("calibrated_until >= today", "calibrated_until <= 2030-01-01")
    offer = ask(req, [held()])
    assert [k.name for k in offer.keyring] == ["calibrated_until"]
    proven = check_offer(req, offer, SENSOR.public_key().hex(), BUYER, TODAY)
    assert proven.values == {"calibrated_until": "2027-06-30"}
    assert not proven.revocable


@pytest.mark.parametrize(
    ("fields", "code"),
    [(("owner",), "undisclosed"), (("calibrated_until", "calibrated_until"), "format")],
)
def test_a_subject_never_reveals_what_its_profile_does_not_disclose(
    fields: tuple[str, ...], code: str
) -> None:
    request = ProofRequest(b"r" * 16, CALIBRATION, (LAB.public_key().hex(),), fields)
    answer = answer_request(request, [held()], SENSOR, BUYER.public_key().hex())
    assert isinstance(answer, ProofRefused) and answer.code == code


def test_a_subject_without_a_matching_certificate_says_so() -> None:
    other_type = ProofRequest(b"r" * 16, type_id("other"), (), ("calibrated_until",))
    assert answer_request(other_type, [held()], SENSOR, BUYER.public_key().hex()).code == "missing"  # type: ignore[union-attr]
    rogue_only = ProofRequest(b"r" * 16, CALIBRATION, (ROGUE.public_key().hex(),), ())
    answer = answer_request(rogue_only, [held()], SENSOR, BUYER.public_key().hex())
    assert isinstance(answer, ProofRefused) and answer.code == "certifier"


def test_an_expired_calibration_is_refused_as_expired() -> None:
    stale = held({**VALUES, "calibrated_until": "2026-12-05"})
    req = requirement("calibrated_until >= today")
    with pytest.raises(CertificateError, match="expired: calibrated_until is 2026-12-05"):
        check_offer(req, ask(req, [stale]), SENSOR.public_key().hex(), BUYER, TODAY)


def test_a_certificate_from_an_untrusted_certifier_is_refused() -> None:
    req = requirement(certifiers=(ROGUE.public_key().hex(),))
    offer = ask(requirement(), [held()])  # (the subject showed the lab's anyway)
    with pytest.raises(CertificateError, match="certifier"):
        check_offer(req, offer, SENSOR.public_key().hex(), BUYER, TODAY)


def test_a_certificate_shown_by_another_peer_is_refused() -> None:
    offer = ask(requirement(), [held()])
    with pytest.raises(CertificateError, match="subject"):
        check_offer(requirement(), offer, ROGUE.public_key().hex(), BUYER, TODAY)


def test_a_keyring_made_for_another_verifier_opens_nothing() -> None:
    offer = ask(requirement(), [held()], verifier=ROGUE)
    with pytest.raises(CertificateError, match="keyring"):
        check_offer(requirement(), offer, SENSOR.public_key().hex(), BUYER, TODAY)


def test_a_forged_certificate_is_refused_before_its_fields_are_read() -> None:
    real = held()
    forged = issue(ROGUE, SENSOR.public_key(), CALIBRATION, VALUES).certificate
    forged = replace(forged, certifier=LAB.public_key().hex())  # the lab's name, not its key
    offer = ask(requirement(), [Held(forged, real.master_keyring, real.disclose)])
    with pytest.raises(CertificateError, match="signature"):
        check_offer(requirement(), offer, SENSOR.public_key().hex(), BUYER, TODAY)


def test_a_field_not_revealed_is_missing() -> None:
    offer = ask(requirement(), [held()])
    wanting_more = replace(requirement(), reveal=("calibrated_until", "accuracy"))
    with pytest.raises(CertificateError, match="missing"):
        check_offer(wanting_more, offer, SENSOR.public_key().hex(), BUYER, TODAY)
