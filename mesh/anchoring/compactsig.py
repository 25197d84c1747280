"""ECDSA signatures in 64 bytes: strict DER to r || s and back, exactly.

A record's signature is strict DER (`mesh.identity` signs so): up to 72 bytes, of which
only r and s (32 bytes each) carry anything; the rest is framing DER rebuilds. The cold
archive (`mesh.anchoring.coldcodec`) stores r || s when the DER bytes are exactly what
`der_signature` rebuilds from them, and the DER bytes as they are otherwise, so the
archive always gives back the very bytes that were signed. Bytes in, bytes out; no
curve arithmetic, no check that a signature verifies. (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations


def compact_signature(der: bytes) -> bytes | None:
    """r || s (32 bytes each) of a strict-DER signature; None when `der` is not exactly
    what `der_signature` rebuilds from them (an archive block then keeps the DER bytes)."""
    try:
        r_end = 4 + der[3]
        r, s = der[4:r_end], der[r_end + 2 :]
        compact = int.from_bytes(r, "big").to_bytes(32, "big")
        compact += int.from_bytes(s, "big").to_bytes(32, "big")
    except (IndexError, OverflowError):
        return None
    return compact if der_signature(compact) == der else None


def der_signature(compact: bytes) -> bytes:
    """The strict-DER signature of r || s."""
    parts = b""
    for half in (compact[:32], compact[32:]):
        value = half.lstrip(b"\x00") or b"\x00"
        if value[0] & 0x80:
            value = b"\x00" + value
        parts += bytes([0x02, len(value)]) + value
    return bytes([0x30, len(parts)]) + parts
