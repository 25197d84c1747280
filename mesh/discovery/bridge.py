"""The thread bridge: zeroconf callbacks into a Trio memory channel.

zeroconf calls back on its own threads -- `ServiceBrowser` handlers on the
browser thread, record listeners on its asyncio loop thread. This module turns
those calls into frozen events queued with `TrioToken.run_sync_soon` onto a Trio
memory channel, and must never block those threads or touch Trio state from
them. If the Trio run has ended the events are dropped (`trio.RunFinishedError`);
if the channel is full they are dropped and counted. (docs/ARCHITECTURE.md §8)
"""

from __future__ import annotations

from dataclasses import dataclass

import trio
from zeroconf import RecordUpdate, RecordUpdateListener, ServiceStateChange, Zeroconf

# zeroconf re-exports DNSText "for backwards compat" outside __all__, so mypy
# --strict needs the defining module.
from zeroconf._dns import DNSText

from mesh.discovery.records import SERVICE_TYPE


@dataclass(frozen=True)
class Browsed:
    """A ServiceBrowser callback: `name` was added, updated or removed."""

    name: str
    change: ServiceStateChange


@dataclass(frozen=True)
class Heard:
    """A live TXT record of our service type arrived from the network."""

    name: str
    txt: bytes
    ttl: float


ZcEvent = Browsed | Heard


class Bridge:
    """Carries zeroconf callbacks (any thread) into a Trio memory channel."""

    def __init__(
        self, token: trio.lowlevel.TrioToken, send: trio.MemorySendChannel[ZcEvent]
    ) -> None:
        self._token = token
        self._send = send
        self.dropped = 0  # only touched on the Trio thread
        self.closed = False

    def post(self, event: ZcEvent) -> None:
        """Queue `event` for the Trio side; called from zeroconf's threads."""
        if self.closed:
            return
        try:
            self._token.run_sync_soon(self._deliver, event)
        except trio.RunFinishedError:
            self.closed = True

    def _deliver(self, event: ZcEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """ServiceBrowser handler (runs on the browser's thread)."""
        self.post(Browsed(name, state_change))


class TxtListener(RecordUpdateListener):
    """Sees every record zeroconf receives; forwards live TXT records of our type.

    This is the liveness signal: owners' periodic announcements (and answers to
    rescue queries) update zeroconf's cache without any browser event, so the table
    would otherwise never hear of them.
    """

    def __init__(self, bridge: Bridge) -> None:
        super().__init__()
        self._bridge = bridge
        self._suffix = "." + SERVICE_TYPE

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        """Runs on zeroconf's loop thread, before the cache is updated."""
        for update in records:
            record = update.new
            if (
                isinstance(record, DNSText)
                and record.key.endswith(self._suffix)
                and not record.is_expired(now)
            ):
                self._bridge.post(Heard(record.name, record.text, float(record.ttl)))
