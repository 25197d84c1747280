"""The signed TXT record: canonical encoding, every rejection reason, sizes, fuzz."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.discovery.records import (
    MAX_TXT_STRING,
    SERVICE_TYPE,
    SIG_DOMAIN,
    Announcement,
    AnnouncementRejected,
    RejectReason,
    announce,
    host_name,
    instance_label,
    instance_name,
    parse_txt,
    signing_digest,
    usable_addresses,
    verify_announcement,
)
from mesh.errors import LocalProtocolError, RemoteProtocolError
from mesh.identity import Identity, verify_digest
from mesh.wire import PROTOCOL_VERSION

ALICE = Identity.from_secret(bytes(range(1, 33)))
MALLORY = Identity.from_secret(bytes(range(2, 34)))


def txt(*strings: bytes) -> bytes:
    return b"".join(bytes([len(s)]) + s for s in strings)


def alice() -> Announcement:
    return announce(
        ALICE, mailbox="tcp://127.0.0.1:5555", name="Mill 3", services="spindle-time=5/s"
    )


def rejected(data: bytes, name: str) -> RejectReason:
    with pytest.raises(AnnouncementRejected) as info:
        verify_announcement(data, name)
    assert isinstance(info.value, RemoteProtocolError)
    return info.value.why


def test_instance_name_is_derived_from_the_peer_id() -> None:
    digest = hashlib.sha256(ALICE.public_key).hexdigest()
    assert instance_label(ALICE.peer_id) == "m2mesh-" + digest[:16]
    assert instance_label(ALICE.public_key) == instance_label(ALICE.peer_id)
    assert instance_name(ALICE.peer_id) == f"m2mesh-{digest[:16]}.{SERVICE_TYPE}"
    assert host_name(ALICE.peer_id) == f"m2mesh-{digest[:16]}.local."
    assert instance_name(MALLORY.peer_id) != instance_name(ALICE.peer_id)


def test_round_trip_and_field_order() -> None:
    a = alice()
    assert [s.split(b"=", 1)[0] for s in a.txt_strings()] == [
        b"v",
        b"id",
        b"addr",
        b"name",
        b"svc",
        b"site",
        b"net",
        b"sig",
    ]
    assert verify_announcement(a.to_txt(), a.instance) == a
    # DNS names are case-insensitive.
    assert verify_announcement(a.to_txt(), a.instance.upper()) == a


def test_signature_is_over_the_documented_canonical_encoding() -> None:
    a = alice()
    fields = [
        (b"v", str(PROTOCOL_VERSION).encode()),
        (b"id", ALICE.peer_id.encode()),
        (b"addr", b"tcp://127.0.0.1:5555"),
        (b"name", b"Mill 3"),
        (b"svc", b"spindle-time=5/s"),
        (b"site", b"default"),
        (b"net", b""),
    ]
    encoding = SIG_DOMAIN + b"".join(bytes([len(k)]) + k + bytes([len(v)]) + v for k, v in fields)
    digest = hashlib.sha256(encoding).digest()
    assert a.digest() == digest == signing_digest(a.signed_values())
    assert verify_digest(ALICE.public_key, digest, a.signature)
    assert a.signature[0] == 0x30  # DER


def test_receiver_follows_rfc6763_key_rules() -> None:
    a = alice()
    strings = list(a.txt_strings())
    # Upper-case keys, an unknown key, a boolean attribute and a later duplicate
    # (ignored: the first occurrence wins) do not change the verdict.
    shuffled = [
        b"V=" + strings[0].split(b"=", 1)[1],
        b"extra=1",
        b"flag",
        *strings[1:],
        b"name=Someone else",
    ]
    assert verify_announcement(txt(*shuffled), a.instance) == a
    assert parse_txt(txt(b"a=1", b"A=2", b"b", b"=x", b"")) == {"a": b"1"}


def test_wrong_signature_is_rejected() -> None:
    a = alice()
    forged = replace(a, mailbox="tcp://6.6.6.6:1")
    assert rejected(forged.to_txt(), a.instance) is RejectReason.SIGNATURE


def test_someone_elses_id_signed_by_us_is_rejected() -> None:
    mine = announce(MALLORY, mailbox="tcp://6.6.6.6:1")
    claimed = replace(mine, peer_id=ALICE.peer_id, name="", services="")
    assert rejected(claimed.to_txt(), instance_name(ALICE.peer_id)) is RejectReason.SIGNATURE


def test_replayed_txt_under_another_instance_is_rejected() -> None:
    a = alice()
    assert rejected(a.to_txt(), instance_name(MALLORY.peer_id)) is RejectReason.INSTANCE
    assert rejected(a.to_txt(), "printer._ipp._tcp.local.") is RejectReason.INSTANCE


def test_other_version_is_rejected() -> None:
    future = announce(ALICE, mailbox="tcp://127.0.0.1:1", version=PROTOCOL_VERSION + 1)
    assert rejected(future.to_txt(), future.instance) is RejectReason.VERSION


@pytest.mark.parametrize(
    "strings",
    [
        pytest.param([], id="missing key"),
        pytest.param([b"v=01"], id="non-canonical version"),
        pytest.param([b"v=x"], id="version not a number"),
    ],
)
def test_malformed_is_rejected(strings: list[bytes]) -> None:
    a = alice()
    rest = [s for s in a.txt_strings() if not s.startswith(b"v=")]
    assert rejected(txt(*strings, *rest), a.instance) is RejectReason.MALFORMED


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("id", ALICE.peer_id.upper()),
        ("id", ALICE.peer_id[:-2]),
        ("id", "zz" + ALICE.peer_id[2:]),
        ("addr", "http://127.0.0.1:80"),
        ("addr", "tcp://with space"),
        ("name", "bell\x07"),
        ("sig", "3045"),
        ("sig", "not-hex"),
    ],
)
def test_bad_field_is_malformed(key: str, value: str) -> None:
    a = alice()
    strings = [
        s if not s.startswith(key.encode() + b"=") else key.encode() + b"=" + value.encode()
        for s in a.txt_strings()
    ]
    why = rejected(txt(*strings), a.instance)
    # An upper-case id fails the format check before the instance comparison.
    assert why in (RejectReason.MALFORMED, RejectReason.INSTANCE)
    if key != "id":
        assert why is RejectReason.MALFORMED


def test_truncated_and_oversized_records_are_malformed() -> None:
    data = alice().to_txt()
    assert rejected(data[:-1], alice().instance) is RejectReason.MALFORMED
    assert rejected(b"\xff" * 1400, alice().instance) is RejectReason.MALFORMED
    bad_utf8 = txt(
        *[s if not s.startswith(b"name=") else b"name=\xff" for s in alice().txt_strings()]
    )
    assert rejected(bad_utf8, alice().instance) is RejectReason.MALFORMED


def test_sender_refuses_fields_that_do_not_fit() -> None:
    with pytest.raises(LocalProtocolError, match="'name'"):
        announce(ALICE, mailbox="tcp://127.0.0.1:1", name="x" * MAX_TXT_STRING)
    longest = announce(ALICE, mailbox="tcp://127.0.0.1:1", name="x" * (MAX_TXT_STRING - 5))
    assert max(len(s) for s in longest.txt_strings()) == MAX_TXT_STRING
    assert verify_announcement(longest.to_txt(), longest.instance) == longest
    with pytest.raises(LocalProtocolError, match="mailbox"):
        announce(ALICE, mailbox="127.0.0.1:1")
    with pytest.raises(LocalProtocolError, match="control"):
        announce(ALICE, mailbox="tcp://127.0.0.1:1", services="a\nb")


def test_usable_addresses_drops_ipv6_link_local_only() -> None:
    given_addresses = [
        "fe80::1",
        "fe80::2%eth0",
        "169.254.7.1",
        "10.0.0.5",
        "fd00::2",
        "10.0.0.5",
        "224.0.0.251",
        "0.0.0.0",
        "garbage",
    ]
    assert usable_addresses(given_addresses) == ("169.254.7.1", "10.0.0.5", "fd00::2")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_only_ever_raises_announcement_rejected(data: bytes) -> None:
    with pytest.raises(AnnouncementRejected):
        verify_announcement(data, instance_name(ALICE.peer_id))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(alice().to_txt()) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_rejected_or_harmless(index: int, delta: int) -> None:
    a = alice()
    data = bytearray(a.to_txt())
    data[index] = (data[index] + delta) % 256
    try:
        got = verify_announcement(bytes(data), a.instance)
    except AnnouncementRejected:
        return
    # Only an edit outside the signed values can survive (e.g. a key's case).
    assert got == a


@pytest.mark.parametrize("key", [b"sig=", b"id="])
def test_a_hex_value_ending_in_a_newline_is_rejected(key: bytes) -> None:
    """Found by the flipped-byte fuzz: `$` let a final newline through the hex check,
    and `bytes.fromhex` then raised a bare ValueError."""
    a = alice()
    data = bytearray(a.to_txt())
    start = data.index(key)
    end = start - 1 + 1 + data[start - 1]  # the length byte, then the string
    data[end - 1] = ord("\n")
    with pytest.raises(AnnouncementRejected):
        verify_announcement(bytes(data), a.instance)
