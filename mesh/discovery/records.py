"""The signed mDNS announcement: TXT record set, instance names, verification.

This module is the pure core of discovery. It builds the TXT record an agent
advertises and checks one received from the network; it does no I/O and knows
nothing about zeroconf or Trio.

Service type and names
----------------------
Agents advertise ``_m2mesh._tcp.local.``. The instance label is derived from the
peer id, so it is unique by construction and probing can be skipped::

    label    = "m2mesh-" + sha256(peer_id_bytes).hexdigest()[:16]
    instance = label + "._m2mesh._tcp.local."      (the SRV/TXT owner name)
    host     = label + ".local."                   (the SRV target / A record owner)

where ``peer_id_bytes`` are the 33 bytes of the compressed public key (not its hex).
64 bits of hash make an accidental clash between agents on one LAN negligible; a
deliberate clash needs a key whose hash collides *and* a valid signature by the
victim's key, so it cannot produce an accepted announcement.

TXT record (RFC 6763 §6: length-prefixed ``key=value`` strings)
----------------------------------------------------------------
In this order, every key present, each string at most 255 bytes and the whole
record at most 1300 bytes (RFC 6763 §6.2)::

    v=9                          protocol version (decimal, mesh.wire.PROTOCOL_VERSION)
    id=02ab…(66 hex)             peer id, lowercase hex
    addr=tcp://10.0.0.5:5555     mailbox URL (nng listener of the agent)
    name=Mill 3                  human name, UTF-8, may be empty
    svc=spindle-time=5/s,…       short service summary, UTF-8, may be empty
    site=plant-7/line-2          the operator's site, 1-64 printable ASCII, no spaces
    net=0000…(64 hex)            the network: its chain's genesis block hash (may be empty)
    sig=3045…(hex)               DER ECDSA signature, lowercase hex

Signature
---------
``sig`` is a strict-DER low-S ECDSA signature (secp256k1) by the key named in ``id``
over the 32-byte digest::

    digest = SHA-256( "m2mesh-mdns-txt\\x00"
                      || for k in ("v", "id", "addr", "name", "svc", "site", "net"):
                             u8(len(k)) || k || u8(len(value_k)) || value_k )

``value_k`` is the exact value bytes as they appear in the TXT string (after the
first ``=``). The fixed key order and length prefixes make the encoding
unambiguous; the domain prefix keeps this signature from being valid for any other
m2mesh message. The instance name is bound through ``id`` (it is derived from it).

Receivers follow RFC 6763 §6.4: keys are case-insensitive, only the first
occurrence of a key counts, unknown keys are ignored (they are not signed).

What verification does *not* prove: the announcement is fresh (a signed TXT can be
replayed, e.g. from another address) or that the agent is reachable. mDNS data is a
hint; identity is trusted only after the session handshake. (docs/ARCHITECTURE.md §8, §10)
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.identity import Identity, parse_peer_id, verify_digest
from mesh.session import DEFAULT_SITE, site_problem
from mesh.wire import PROTOCOL_VERSION

SERVICE_TYPE = "_m2mesh._tcp.local."
"""The DNS-SD service type every agent advertises and browses."""

INSTANCE_PREFIX = "m2mesh-"
"""Instance labels are this prefix plus 16 hex digits of sha256(peer id)."""

SIGNED_KEYS = ("v", "id", "addr", "name", "svc", "site", "net")
"""The TXT keys covered by `sig`, in signing (and advertising) order."""

TXT_KEYS = (*SIGNED_KEYS, "sig")
"""Every TXT key of an announcement, in the order they are advertised."""

SIG_DOMAIN = b"m2mesh-mdns-txt\x00"
"""Domain-separation prefix of the signed digest."""

MAX_TXT_STRING = 255
"""Largest ``key=value`` string (one length byte, RFC 6763 §6.1)."""

MAX_TXT_RECORD = 1300
"""Largest whole TXT record we send or accept (RFC 6763 §6.2)."""

MAX_SIGNATURE = 72
"""Largest DER ECDSA signature over secp256k1."""

MAILBOX_SCHEMES = ("tcp", "tcp4", "tcp6", "tls+tcp", "ws", "wss", "ipc")
"""nng transports a mailbox URL may use."""

_MAILBOX = re.compile(r"^(?:" + "|".join(re.escape(s) for s in MAILBOX_SCHEMES) + r")://\S+$")
_HEX = re.compile(r"[0-9a-f]*\Z")  # \Z, not $: $ also matches before a final newline


class RejectReason(enum.Enum):
    """Why a received announcement was ignored (one counter each in statistics)."""

    MALFORMED = "malformed"
    """Not parseable: missing key, bad encoding, a field out of its size bounds."""
    VERSION = "version"
    """A protocol version we do not speak."""
    INSTANCE = "instance"
    """The instance name is not the one derived from `id` (someone else's id)."""
    SIGNATURE = "signature"
    """`sig` does not verify against the `id` key."""
    FOREIGN = "foreign"
    """A valid announcement of another site or network: another deployment on the LAN
    (counted by discovery, which knows ours; `verify_announcement` never raises it)."""


class AnnouncementRejected(RemoteProtocolError):
    """A received TXT record set that must be ignored; `why` says which check failed."""

    def __init__(self, why: RejectReason, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.why = why


def _peer_id_bytes(peer_id: str | bytes) -> bytes:
    return parse_peer_id(peer_id) if isinstance(peer_id, str) else peer_id


def instance_label(peer_id: str | bytes) -> str:
    """The DNS label of an agent's instance: ``m2mesh-`` + 16 hex of sha256(peer id)."""
    return INSTANCE_PREFIX + hashlib.sha256(_peer_id_bytes(peer_id)).hexdigest()[:16]


def instance_name(peer_id: str | bytes) -> str:
    """The full service instance name, e.g. ``m2mesh-1a2b….`` + `SERVICE_TYPE`."""
    return f"{instance_label(peer_id)}.{SERVICE_TYPE}"


def host_name(peer_id: str | bytes) -> str:
    """The host name an agent's SRV record points at (owner of its A records)."""
    return f"{instance_label(peer_id)}.local."


def signing_digest(values: dict[str, bytes]) -> bytes:
    """The digest `sig` signs: SHA-256 over the domain and the signed fields.

    `values` maps each of `SIGNED_KEYS` to its exact TXT value bytes (each < 256).
    """
    h = hashlib.sha256(SIG_DOMAIN)
    for key in SIGNED_KEYS:
        value = values[key]
        if len(value) > MAX_TXT_STRING:
            raise ValueError(f"TXT value {key!r} is longer than {MAX_TXT_STRING} bytes")
        h.update(bytes([len(key)]) + key.encode() + bytes([len(value)]) + value)
    return h.digest()


@dataclass(frozen=True)
class Announcement:
    """One agent's advertised facts, as signed in its TXT record."""

    version: int
    peer_id: str
    mailbox: str
    name: str
    services: str
    site: str
    network: str
    signature: bytes

    @property
    def instance(self) -> str:
        """The full instance name this announcement must be published under."""
        return instance_name(self.peer_id)

    def signed_values(self) -> dict[str, bytes]:
        """The value bytes of each signed TXT key."""
        return {
            "v": str(self.version).encode(),
            "id": self.peer_id.encode(),
            "addr": self.mailbox.encode(),
            "name": self.name.encode(),
            "svc": self.services.encode(),
            "site": self.site.encode(),
            "net": self.network.encode(),
        }

    def digest(self) -> bytes:
        """The digest `signature` is over (see the module docstring)."""
        return signing_digest(self.signed_values())

    def txt_strings(self) -> tuple[bytes, ...]:
        """The ``key=value`` strings of the TXT record, in `TXT_KEYS` order."""
        values = self.signed_values() | {"sig": self.signature.hex().encode()}
        return tuple(key.encode() + b"=" + values[key] for key in TXT_KEYS)

    def to_txt(self) -> bytes:
        """The TXT record data (RDATA): each string prefixed with its length byte."""
        return b"".join(bytes([len(s)]) + s for s in self.txt_strings())


def _check_text(field: str, value: str, *, allow_empty: bool = True) -> None:
    if not allow_empty and not value:
        raise ValueError(f"{field} must not be empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{field} contains control characters")


def _check_site(site: str) -> None:
    problem = site_problem(site)
    if problem is not None:
        raise ValueError(f"site {problem}")


def _check_network(network: str) -> None:
    if network and not (len(network) == 64 and _HEX.match(network)):
        raise ValueError("network must be a block hash: 64 lowercase hex digits")


def _check_mailbox(mailbox: str) -> None:
    if not _MAILBOX.match(mailbox):
        raise ValueError(
            f"mailbox {mailbox!r} is not a URL with a scheme in {', '.join(MAILBOX_SCHEMES)}"
        )


def announce(
    identity: Identity,
    *,
    mailbox: str,
    name: str = "",
    services: str = "",
    site: str = DEFAULT_SITE,
    network: str = "",
    version: int = PROTOCOL_VERSION,
) -> Announcement:
    """Build and sign our announcement; `LocalProtocolError` if a field cannot be sent."""
    try:
        _check_mailbox(mailbox)
        _check_text("name", name)
        _check_text("services", services)
        _check_site(site)
        _check_network(network)
        unsigned = Announcement(
            version, identity.peer_id, mailbox, name, services, site, network, b""
        )
        digest = unsigned.digest()
    except ValueError as exc:
        raise LocalProtocolError(f"cannot announce: {exc}") from None
    signed = replace(unsigned, signature=identity.sign_digest(digest))
    for string in signed.txt_strings():
        if len(string) > MAX_TXT_STRING:
            key = string.split(b"=", 1)[0].decode()
            raise LocalProtocolError(
                f"cannot announce: TXT string {key!r} is {len(string)} bytes "
                f"(max {MAX_TXT_STRING}); shorten it"
            )
    if len(signed.to_txt()) > MAX_TXT_RECORD:
        raise LocalProtocolError(f"cannot announce: TXT record exceeds {MAX_TXT_RECORD} bytes")
    return signed


def parse_txt(data: bytes) -> dict[str, bytes]:
    """Split TXT RDATA into ``{key: value}`` following RFC 6763 §6.

    Keys are lowercased; the first occurrence of a key wins; strings without
    ``=`` (boolean attributes) and empty strings are skipped. Raises
    `AnnouncementRejected` (MALFORMED) when the length prefixes do not add up.
    """
    if len(data) > MAX_TXT_RECORD:
        raise AnnouncementRejected(
            RejectReason.MALFORMED, "txt", f"{len(data)} bytes exceeds {MAX_TXT_RECORD}"
        )
    result: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        length = data[i]
        string = data[i + 1 : i + 1 + length]
        if len(string) != length:
            raise AnnouncementRejected(RejectReason.MALFORMED, "txt", "truncated string")
        i += 1 + length
        key, eq, value = string.partition(b"=")
        if not eq or not key:
            continue
        try:
            name = key.decode("ascii").lower()
        except UnicodeDecodeError:
            continue  # not one of ours; RFC 6763 keys are printable ASCII
        result.setdefault(name, value)
    return result


def _text_field(values: dict[str, bytes], key: str) -> str:
    try:
        text = values[key].decode("utf-8")
        _check_text(f"txt.{key}", text)
    except UnicodeDecodeError:
        raise AnnouncementRejected(RejectReason.MALFORMED, f"txt.{key}", "not UTF-8") from None
    except ValueError as exc:
        raise AnnouncementRejected(RejectReason.MALFORMED, f"txt.{key}", str(exc)) from None
    return text


def verify_announcement(txt: bytes, service_name: str) -> Announcement:
    """Check a received TXT record published under `service_name`.

    Checks, in order: the record parses and every key is present (MALFORMED),
    the version (VERSION), the peer id and that `service_name` is the name derived
    from it (INSTANCE), field formats and sizes (MALFORMED), then the signature
    against the `id` key (SIGNATURE). Returns the `Announcement`, or raises
    `AnnouncementRejected` naming the field and the reason. Never raises anything
    else, whatever the bytes.
    """
    values = parse_txt(txt)
    for key in TXT_KEYS:
        if key not in values:
            raise AnnouncementRejected(RejectReason.MALFORMED, f"txt.{key}", "missing")
    raw_version = values["v"]
    if not raw_version.isdigit() or len(raw_version) > 5 or raw_version != b"%d" % int(raw_version):
        raise AnnouncementRejected(RejectReason.MALFORMED, "txt.v", "not a decimal version")
    version = int(raw_version)
    if version != PROTOCOL_VERSION:
        raise AnnouncementRejected(
            RejectReason.VERSION, "txt.v", f"version {version}, we speak {PROTOCOL_VERSION}"
        )
    peer_id = _text_field(values, "id")
    try:
        if not _HEX.match(peer_id):
            raise ValueError("not lowercase hex")
        parse_peer_id(peer_id)
    except ValueError as exc:
        raise AnnouncementRejected(RejectReason.MALFORMED, "txt.id", str(exc)) from None
    if service_name.lower() != instance_name(peer_id):
        raise AnnouncementRejected(
            RejectReason.INSTANCE,
            "instance",
            f"{service_name!r} is not the instance name of peer {peer_id[:16]}…",
        )
    mailbox = _text_field(values, "addr")
    try:
        _check_mailbox(mailbox)
    except ValueError as exc:
        raise AnnouncementRejected(RejectReason.MALFORMED, "txt.addr", str(exc)) from None
    name = _text_field(values, "name")
    services = _text_field(values, "svc")
    site, network = _text_field(values, "site"), _text_field(values, "net")
    for field, value, check in (("site", site, _check_site), ("net", network, _check_network)):
        try:
            check(value)
        except ValueError as exc:
            raise AnnouncementRejected(RejectReason.MALFORMED, f"txt.{field}", str(exc)) from None
    sig_hex = values["sig"]
    if not _HEX.match(sig_hex.decode("latin-1")) or len(sig_hex) % 2:
        raise AnnouncementRejected(RejectReason.MALFORMED, "txt.sig", "not lowercase hex")
    signature = bytes.fromhex(sig_hex.decode("ascii"))
    if not 8 <= len(signature) <= MAX_SIGNATURE:
        raise AnnouncementRejected(
            RejectReason.MALFORMED, "txt.sig", f"{len(signature)} bytes is not a DER signature"
        )
    digest = signing_digest({key: values[key] for key in SIGNED_KEYS})
    if not verify_digest(parse_peer_id(peer_id), digest, signature):
        raise AnnouncementRejected(
            RejectReason.SIGNATURE, "txt.sig", "does not verify against the id key"
        )
    return Announcement(version, peer_id, mailbox, name, services, site, network, signature)


def usable_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """The addresses worth dialing, in order, without duplicates.

    Drops IPv6 link-local addresses (useless without the interface scope that
    mDNS does not carry), multicast, unspecified and unparseable ones. IPv4
    link-local (169.254/16) is kept: it is how hosts without DHCP talk.
    """
    usable: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if address.is_multicast or address.is_unspecified:
            continue
        if address.version == 6 and address.is_link_local:
            continue
        usable.append(str(address))
    return tuple(dict.fromkeys(usable))
