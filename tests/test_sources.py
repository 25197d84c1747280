"""Per-source limits: the table of connections and the eviction rule (no I/O)."""

from __future__ import annotations

import ipaddress
import struct
import threading

import pynng
import pytest
from pynng import ffi, lib

from mesh.net.sources import UNKNOWN, SourceTable, eviction_victim, source_of


def test_a_source_holds_at_most_its_share_and_others_are_unaffected() -> None:
    table = SourceTable(per_source=2)
    assert table.admit(1, "10.0.0.5") and table.admit(2, "10.0.0.5")
    assert not table.admit(3, "10.0.0.5")
    assert table.admit(4, "10.0.0.6")
    assert (table.held("10.0.0.5"), table.held("10.0.0.6"), table.refused) == (2, 1, 1)
    assert table.source(1) == "10.0.0.5" and table.source(3) == UNKNOWN


def test_a_closed_connection_gives_its_place_back_and_unknown_ones_are_ignored() -> None:
    table = SourceTable(per_source=1)
    assert table.admit(1, "10.0.0.5")
    table.remove(1)
    table.remove(1)  # twice: nng may report a close once more
    table.remove(99)  # one that was refused
    assert table.held("10.0.0.5") == 0 and table.count() == 0
    assert table.admit(2, "10.0.0.5")


def test_connections_without_a_source_are_not_limited() -> None:
    table = SourceTable(per_source=1)
    assert all(table.admit(i, None) for i in range(10))
    assert table.refused == 0 and table.count() == 10 and table.source(3) is None


def test_a_share_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SourceTable(per_source=0)


def test_the_share_holds_when_nng_threads_admit_at_once() -> None:
    table = SourceTable(per_source=50)
    barrier = threading.Barrier(8)

    def admit(base: int) -> None:
        barrier.wait()
        for i in range(100):
            table.admit(base + i, "10.0.0.5")

    threads = [threading.Thread(target=admit, args=(n * 1000,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert table.held("10.0.0.5") == 50 and table.refused == 750


def test_eviction_takes_the_oldest_of_the_source_holding_the_most() -> None:
    pending = [("a1", "A"), ("b1", "B"), ("b2", "B"), ("a2", "A"), ("b3", "B")]
    assert eviction_victim(pending) == "b1"
    # Among equal holders, the source whose handshake is oldest gives one up.
    assert eviction_victim([("a1", "A"), ("b1", "B"), ("b2", "B"), ("a2", "A")]) == "a1"
    assert eviction_victim([("x", None), ("y", None), ("a", "A")]) == "x"
    with pytest.raises(ValueError, match="nothing"):
        eviction_victim([])


def nng_address(ip: str) -> object:
    """A `pynng.sockaddr` as nng hands one over, for `ip`."""
    raw = ffi.new("nng_sockaddr *")
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        raw.s_in.sa_family = lib.NNG_AF_INET
        raw.s_in.sa_addr = struct.unpack("=I", address.packed)[0]
        return pynng.sockaddr.InAddr(raw)
    raw.s_in6.sa_family = lib.NNG_AF_INET6
    ffi.memmove(raw.s_in6.sa_addr, address.packed, 16)
    return pynng.sockaddr.In6Addr(raw)


@pytest.mark.parametrize(
    ("ip", "source"),
    [
        ("10.9.8.7", "10.9.8.7"),
        ("fd00:1:2:3:4:5:6:7", "fd00:1:2:3::/64"),  # one host may hold a whole /64
        ("fd00:1:2:3:ffff::1", "fd00:1:2:3::/64"),
        ("::ffff:10.1.2.3", "10.1.2.3"),  # an IPv4 peer on a dual-stack listener
    ],
)
def test_the_source_of_an_address(ip: str, source: str) -> None:
    assert source_of(nng_address(ip)) == source


def test_other_transports_have_no_source() -> None:
    assert source_of(object()) is None
