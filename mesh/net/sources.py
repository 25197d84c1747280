"""How much of a node one network source may take (no I/O, no Trio).

TCP's own handshake proves the address a connection comes from (an attacker off the
path cannot forge it), so a node can bound what each *source* -- an IPv4 address, or
an IPv6 /64, which one host may hold whole -- takes of it, and one misbehaving machine
on the LAN cannot starve the others:

* `SourceTable`: the connections held per source, at most `per_source` (nng admits
  and removes them from its own threads, so the table takes a lock);
* `eviction_victim`: when the handshakes in progress fill their table, the one to
  evict is the oldest of the source holding the most slots -- a flood evicts itself;
* the handshakes a source may start per second are `mesh.net.ratelimit.PeerBudgets`
  keyed by `source_of`.

Connections over other transports (``ipc://``) have no source and are not limited.
(docs/ARCHITECTURE.md §2, §10)
"""

from __future__ import annotations

import ipaddress
import struct
import threading
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import TypeVar

import pynng.sockaddr

K = TypeVar("K", bound=Hashable)

UNKNOWN = "unknown"  # the source of a packet whose connection is already gone


def source_of(address: object) -> str | None:
    """The source a connection's remote address (a `pynng.sockaddr`) counts under."""
    if isinstance(address, pynng.sockaddr.InAddr):
        # nng keeps the address in network order in a native-order integer.
        return str(ipaddress.IPv4Address(struct.pack("=I", address.addr)))
    if isinstance(address, pynng.sockaddr.In6Addr):
        ip = ipaddress.IPv6Address(bytes(address.addr))
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return None


class SourceTable:
    """The connections a node holds, by source; at most `per_source` from each."""

    def __init__(self, per_source: int) -> None:
        if per_source < 1:
            raise ValueError("per_source must be at least 1")
        self.per_source = per_source
        self.refused = 0  # connections turned away, all sources
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._source: dict[int, str | None] = {}

    def admit(self, connection: int, source: str | None) -> bool:
        """Take in `connection` from `source` unless that source holds its share."""
        with self._lock:
            if source is not None:
                if self._held[source] >= self.per_source:
                    self.refused += 1
                    return False
                self._held[source] += 1
            self._source[connection] = source
            return True

    def remove(self, connection: int) -> None:
        """Forget `connection` (closed); unknown ones (refused) are ignored."""
        with self._lock:
            if connection not in self._source:
                return
            source = self._source.pop(connection)
            if source is not None:
                self._held[source] -= 1
                if self._held[source] == 0:
                    del self._held[source]

    def source(self, connection: int) -> str | None:
        """The source of a connection held, `UNKNOWN` for one no longer held."""
        with self._lock:
            return self._source.get(connection, UNKNOWN)

    def held(self, source: str) -> int:
        """How many connections `source` holds now."""
        with self._lock:
            return self._held[source]

    def count(self) -> int:
        """How many connections are held, all sources (and those without one)."""
        with self._lock:
            return len(self._source)


def eviction_victim(pending: Iterable[tuple[K, str | None]]) -> K:
    """Which of the `(key, source)` pending entries, oldest first, to evict: the oldest
    entry of the source holding the most (among equals, the one with the oldest)."""
    entries = list(pending)
    if not entries:
        raise ValueError("nothing to evict")
    counts = Counter(source for _, source in entries)
    most = max(counts.values())
    biggest = next(source for _, source in entries if counts[source] == most)
    return next(key for key, source in entries if source == biggest)


__all__ = ["UNKNOWN", "SourceTable", "eviction_victim", "source_of"]
