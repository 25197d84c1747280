"""Machine certificates with selective disclosure (BRC-52): the format and signature
(`certificate`), encrypted fields and keyrings (`fields`), issuing (`issue`). No I/O.

(docs/ARCHITECTURE.md §3)
"""

from mesh.certs.certificate import NO_REVOCATION, Certificate, CertificateError, type_id
from mesh.certs.fields import keyring_for, open_fields, seal_fields
from mesh.certs.issue import Issued, issue

__all__ = [
    "NO_REVOCATION",
    "Certificate",
    "CertificateError",
    "Issued",
    "issue",
    "keyring_for",
    "open_fields",
    "seal_fields",
    "type_id",
]
