"""`mesh run` with a hostile prover, for the mesh-level certificate tests.

``python -m tests.certs.hostile_prover CASE -- MESH-ARGS...`` runs the real agent
(`agents.cli.main(MESH-ARGS)`) with its answer to a peer's `ProofRequest` patched: it
speaks valid frames over its real session, with bad intent. The certificate it holds
is genuine (it passes the checks at start); what it *offers* is not:

forged     its certificate from an untrusted certifier, renamed as signed by the
           first certifier the verifier trusts (the signature stays the real one's)
swapped    its own certificate with the asked fields swapped in from another one it
           holds (``DATA_DIR/other.json``), each with a keyring entry that opens it
foreign    its certificate with a keyring made for another verifier
rogue      its certificate from a certifier the verifier does not trust, offered as
           it is (an honest agent would refuse: ``certifier``)

So each time it is the *verifier's* check that must refuse (`mesh.certs.policy`).
(docs/ARCHITECTURE.md §3)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bsv.keys import PrivateKey, PublicKey

from agents import cli, proofs
from mesh.certs import Certificate, keyring_for
from mesh.certs.frames import ProofOffer, ProofRefused, ProofRequest, RevealedKey
from mesh.certs.policy import Held, answer_request

Answer = ProofOffer | ProofRefused


def forged(request: ProofRequest, held: Sequence[Held], subject: PrivateKey, verifier: str,
           data: Path) -> Answer:  # fmt: skip
    answer = answer_request(replace(request, certifiers=()), held, subject, verifier)
    if not isinstance(answer, ProofOffer) or not request.certifiers:
        return answer
    cert = Certificate.from_binary(answer.certificate)
    claimed = replace(cert, certifier=request.certifiers[0])
    return replace(answer, certificate=claimed.to_binary())


def swapped(request: ProofRequest, held: Sequence[Held], subject: PrivateKey, verifier: str,
            data: Path) -> Answer:  # fmt: skip
    answer = answer_request(request, held, subject, verifier)
    if not isinstance(answer, ProofOffer):
        return answer
    own = Certificate.from_binary(answer.certificate)
    document = json.loads((data / "other.json").read_text())
    other = Certificate.from_json(document)
    names = [name for name in request.fields if name in other.fields]
    # The other certificate's field keys, re-sealed for the verifier under our serial
    # number, so that the swapped values open as if they were ours.
    ring = keyring_for(
        subject,
        replace(other, serial_number=own.serial_number),
        document["masterKeyring"],
        PublicKey(verifier),
        names,
    )
    fields = {**own.fields, **{name: other.fields[name] for name in names}}
    keys = tuple(RevealedKey(k.name, ring.get(k.name, k.key)) for k in answer.keyring)
    return replace(answer, certificate=replace(own, fields=fields).to_binary(), keyring=keys)


def foreign(request: ProofRequest, held: Sequence[Held], subject: PrivateKey, verifier: str,
            data: Path) -> Answer:  # fmt: skip
    someone_else = PrivateKey().public_key().hex()
    answer = answer_request(request, held, subject, someone_else)
    return answer


def rogue(request: ProofRequest, held: Sequence[Held], subject: PrivateKey, verifier: str,
          data: Path) -> Answer:  # fmt: skip
    return answer_request(replace(request, certifiers=()), held, subject, verifier)


CASES = {"forged": forged, "swapped": swapped, "foreign": foreign, "rogue": rogue}


def main() -> None:
    case, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: hostile_prover CASE -- MESH-ARGS..."
    data = Path(args[args.index("--data-dir") + 1])
    hostile = CASES[case]

    def answer(request: ProofRequest, held: Sequence[Held], subject: PrivateKey,
               verifier: str) -> Answer:  # fmt: skip
        return hostile(request, held, subject, verifier, data)

    setattr(proofs, "answer_request", answer)  # noqa: B010 - the patch itself
    sys.exit(cli.main(args))


if __name__ == "__main__":
    main()
