"""The agent's OT bridges, composed: bridged feeds' sources, the OPC UA server, the
Sparkplug publisher (the profile's `SourceSpec`s and `Surfaces`; `agents.ot`).

`Bridges` is built with the profile (before anything runs: a bridged feed's handler
exists as soon as the provider does) and `run` in the agent's nursery: it opens the
asyncio portal if an OPC UA bridge needs one, starts each source, then the surfaces.
The agent tells it what it sold (`sold`) and what it bought and verified (`bought`);
the OPC UA server shows the latest bought reading of each feed and the Sparkplug
publisher publishes both, a device per feed (``<service>`` for what it sells,
``<service>@<seller 16 hex>`` for what it buys). Nothing here pays or delivers: a
bridge failing never stops the agent's business (a source that is down delivers
nothing, so it bills nothing). (docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import trio

from agents.ot.source import ChangeFeed
from agents.profile import Profile, ServiceSpec
from agents.services.vendor import FeedHandler, ServiceContext
from mesh.anchoring.record import SignedRecord
from mesh.readings import READINGS_PREFIX, Reading, ReadingError, decode_reading

log = logging.getLogger("agents.bridges")
MAX_BOUGHT_FEEDS = 256
"""Bought feeds shown at once (the least recently updated goes first)."""


class Bridges:
    """See the module docstring."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.feeds: dict[str, ChangeFeed] = {
            s.id: ChangeFeed() for s in profile.services if s.source is not None
        }
        self.sources: dict[str, Any] = {}
        self.opcua: Any = None
        self.sparkplug: Any = None
        self._bought: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._status: Callable[[], dict[str, Any]] = dict
        self._anchored: Callable[[bytes, str], int | None] = lambda agent, stream: None

    @property
    def wanted(self) -> bool:
        """Whether the profile names any bridge."""
        s = self.profile.surfaces
        return bool(self.feeds) or s.opcua_server is not None or s.sparkplug is not None

    def handler(self, spec: ServiceSpec) -> FeedHandler:
        """The feed handler of a bridged service: the next reading its source received
        after the order's previous one."""
        feed = self.feeds[spec.id]

        async def read(ctx: ServiceContext) -> Reading:
            return await feed.next(ctx.order_id)

        assert spec.source is not None
        return FeedHandler(f"{spec.source.kind}:{spec.id}", read)

    async def run(
        self,
        status: Callable[[], dict[str, Any]],
        anchored: Callable[[bytes, str], int | None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run every bridge until cancelled. `status()` is the agent's status;
        `anchored(seller key, stream)` the highest seq proven on chain, if any."""
        self._status, self._anchored = status, anchored
        surfaces = self.profile.surfaces
        kinds = {s.source.kind for s in self.profile.services if s.source is not None}
        async with AsyncExitStack() as stack:
            portal: Any = None
            if "opcua" in kinds or surfaces.opcua_server is not None:
                from agents.ot.portal import AsyncioPortal

                portal = await stack.enter_async_context(AsyncioPortal.open())
            nursery = await stack.enter_async_context(trio.open_nursery())
            for spec in self.profile.services:
                if spec.source is not None:
                    source = self._source(spec, portal)
                    self.sources[spec.id] = source
                    nursery.start_soon(source.run)
            if surfaces.opcua_server is not None:
                from agents.ot.opcua_server import OpcUaSurface

                self.opcua = OpcUaSurface(surfaces.opcua_server, portal, status, self._views)
                await nursery.start(self.opcua.run)
            if surfaces.sparkplug is not None:
                from agents.ot.sparkplug_bridge import SparkplugPublisher

                self.sparkplug = SparkplugPublisher(surfaces.sparkplug)
                await nursery.start(self.sparkplug.run)
            task_status.started()

    def _source(self, spec: ServiceSpec, portal: Any) -> Any:
        assert spec.source is not None
        feed = self.feeds[spec.id]
        if spec.source.kind == "opcua":
            from agents.ot.opcua_source import OpcUaSource

            return OpcUaSource(spec.source.config, portal, feed=feed)
        from agents.ot.sparkplug_bridge import SparkplugSource

        return SparkplugSource(spec.source.config, feed=feed)

    def sold(self, service: str, reading: Reading) -> None:
        """A reading the agent signed and delivered (from Trio)."""
        if self.sparkplug is not None:
            self.sparkplug.publish(service, reading)

    def bought(self, signed: SignedRecord) -> None:
        """A reading the agent bought and verified (from Trio)."""
        record = signed.record
        if not record.stream.startswith(READINGS_PREFIX):
            return
        try:
            reading = decode_reading(record.payload)
        except ReadingError:  # the delivery check decoded it already
            return
        from agents.ot.opcua_server import FeedView

        service = record.stream[len(READINGS_PREFIX) :]
        view = FeedView(service, record.agent.hex(), record.seq, reading)
        key = (view.seller, service)
        self._bought.pop(key, None)
        self._bought[key] = view
        if len(self._bought) > MAX_BOUGHT_FEEDS:
            self._bought.popitem(last=False)
        if self.opcua is not None:
            self.opcua.changed()
        if self.sparkplug is not None:
            self.sparkplug.publish(view.key, reading)

    def _views(self) -> list[Any]:
        """The bought feeds' latest readings, each with the highest seq proven."""
        from dataclasses import replace

        return [
            replace(
                v,
                anchored_seq=self._anchored(bytes.fromhex(v.seller), READINGS_PREFIX + v.service),
            )
            for v in self._bought.values()
        ]

    def statistics(self) -> dict[str, Any]:
        """For `mesh status`: each source's state and each surface's address."""
        out: dict[str, Any] = {
            "sources": {sid: source.status() for sid, source in self.sources.items()},
        }
        if self.opcua is not None:
            out["opcua_server"] = self.opcua.config.endpoint
        if self.sparkplug is not None:
            out["sparkplug"] = self.sparkplug.status()
        return out


__all__ = ["MAX_BOUGHT_FEEDS", "Bridges"]
