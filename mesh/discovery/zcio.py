"""The zeroconf calls discovery makes below its usual API, from any thread.

Raw queries (the rescue TXT question and the opt-in known-answer browse), the
receive buffers of zeroconf's sockets, and the cache-first resolve. They take a
running `Zeroconf` and never touch Trio: service.py calls the blocking ones
through `trio.to_thread`. (docs/ARCHITECTURE.md §8)
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterable

from zeroconf import DNSQuestionType, ServiceInfo, Zeroconf

# zeroconf re-exports these "for backwards compat" outside __all__, so mypy --strict
# needs the defining modules. Needed to send raw refresh and known-answer queries.
from zeroconf._dns import DNSPointer, DNSQuestion
from zeroconf._protocol.outgoing import DNSOutgoing

from mesh.discovery.records import SERVICE_TYPE
from mesh.discovery.table import Peer

RESOLVE_TIMEOUT_MS = 2000
"""How long a resolve waits for SRV/TXT/A answers when they are not cached."""

RECEIVE_BUFFER = 4 * 1024 * 1024
"""Bytes of kernel receive buffer asked for each mDNS socket (SO_RCVBUFFORCE, else
SO_RCVBUF, which the kernel caps at net.core.rmem_max)."""

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python does not name it
_TYPE_PTR = 12
_TYPE_TXT = 16
_CLASS_IN = 1
_FLAGS_QUERY = 0x0000


def enlarge_receive_buffers(zc: Zeroconf) -> list[int]:
    """Ask for `RECEIVE_BUFFER` bytes on every socket zeroconf reads (waiting for it to
    start); failures are ignored. Returns the sizes the kernel granted (getsockopt)."""
    if zc.loop is None:
        return []
    try:
        asyncio.run_coroutine_threadsafe(zc.async_wait_for_start(), zc.loop).result(5)
    except Exception:
        return []  # not started: registering will say why
    granted = []
    for reader in zc.engine.readers:
        for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                reader.sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
                break
            except OSError:
                continue
        granted.append(reader.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return granted


def resolve(zc: Zeroconf, key: str) -> tuple[ServiceInfo | None, float | None, bool]:
    """Resolve instance `key` -- from the cache when it holds SRV, TXT and A, else by
    asking (QM, `RESOLVE_TIMEOUT_MS`) -- as (info or None, the TTL of the cached TXT
    record if any, whether it came from the cache). Blocks: run it in a worker thread.

    `get_service_info` looks in the cache first too, but on zeroconf's loop thread,
    the one reading the sockets; `load_from_cache` is threadsafe and stays here.
    """
    if zc.done:
        return None, None, False
    info = ServiceInfo(SERVICE_TYPE, key)
    cached = info.load_from_cache(zc)
    if not cached:
        found = zc.get_service_info(
            SERVICE_TYPE, key, RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM
        )
        if found is None:
            return None, None, False
        info = found
    record = zc.cache.get_by_details(key, _TYPE_TXT, _CLASS_IN)
    return info, (None if record is None else float(record.ttl)), cached


def send_txt_queries(zc: Zeroconf, instances: Iterable[str]) -> None:
    """Ask (QM, one packet) for the TXT records of `instances`; non-blocking."""
    out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
    for instance in instances:
        out.add_question(DNSQuestion(instance, _TYPE_TXT, _CLASS_IN))
    zc.send(out)


def send_known_answer_browse(zc: Zeroconf, peers: Iterable[Peer]) -> None:
    """A PTR query for our type carrying `peers` as known answers; non-blocking."""
    out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
    out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
    for peer in peers:
        if peer.instance is not None and peer.ttl is not None:
            ttl = math.ceil(peer.ttl)
            pointer = DNSPointer(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN, ttl, peer.instance)
            out.add_answer_at_time(pointer, 0)
    zc.send(out)


__all__ = [
    "RECEIVE_BUFFER",
    "RESOLVE_TIMEOUT_MS",
    "enlarge_receive_buffers",
    "resolve",
    "send_known_answer_browse",
    "send_txt_queries",
]
