"""A machine controller, simulated, served over a real OPC UA server (asyncua).

What `mesh demo` and the tests read from when they need a plant: a server on loopback
(``opc.tcp://127.0.0.1:PORT/m2mesh/controller``) whose objects folder holds ``Machine``
with variables, each in the namespace ``urn:m2mesh:controller`` (index 2):

- ``Vibration`` (Double, EngineeringUnits ``mm/s``): RMS velocity;
- ``SpindleLoad`` (Double, ``%``);
- ``Running`` (Boolean);
- ``PartCount`` (Int64).

`set` writes a value with a status and a source time; `simulate` moves the values at a
rate, as a running mill would. Everything runs on the `AsyncioPortal`'s loop.
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import trio

from agents.ot.portal import AsyncioPortal

log = logging.getLogger("agents.ot.controller")
NAMESPACE = "urn:m2mesh:controller"
UNECE_UNITS = "http://www.opcfoundation.org/UA/units/un/cefact"
VARIABLES: dict[str, tuple[object, str, int]] = {
    # name: (initial value, UCUM unit shown as the DisplayName, UNECE common code as int)
    "Vibration": (2.0, "mm/s", 4403571),  # C16-ish code for mm/s ("C16": 0x433136)
    "SpindleLoad": (0.0, "%", 20529),  # "P1"
    "Running": (False, "", 0),
    "PartCount": (0, "", 0),
}


def node_id(name: str) -> str:
    """The node id string of a controller variable (namespace index 2)."""
    return f"ns=2;s=Machine.{name}"


@dataclass
class ControllerServer:
    """A running simulated controller (see the module docstring)."""

    portal: AsyncioPortal
    host: str = "127.0.0.1"
    port: int = 0
    """0: a free port is chosen at `start`."""
    server: Any = None
    nodes: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """The URL clients connect to."""
        return f"opc.tcp://{self.host}:{self.port}/m2mesh/controller"

    async def start(self) -> None:
        """Start the OPC UA server (about a second)."""
        if self.port == 0:
            self.port = free_port(self.host)
        await self.portal.run(self._start)
        log.info("simulated controller at %s", self.endpoint)

    async def stop(self) -> None:
        """Stop the server (its clients see the connection drop)."""
        if self.server is not None:
            server, self.server = self.server, None
            await self.portal.run(server.stop)

    async def set(
        self,
        name: str,
        value: object,
        *,
        status: int = 0,
        source_time: datetime | None = None,
    ) -> None:
        """Write `value` to variable `name` with an OPC UA StatusCode and source time."""
        await self.portal.run(self._set, name, value, status, source_time)

    async def simulate(self, rate: float) -> None:
        """Move the values `rate` times a second, as a running mill would (until cancelled)."""
        n = 0
        await self.set("Running", True)
        while True:
            n += 1
            vibration = round(2.0 + 0.5 * math.sin(n / 5) + 0.1 * math.sin(n * 1.7), 4)
            await self.set("Vibration", vibration)
            if n % 10 == 0:
                await self.set("SpindleLoad", round(60 + 20 * math.sin(n / 50), 2))
            if n % 100 == 0:
                await self.set("PartCount", n // 100)
            await trio.sleep(1 / rate)

    # ------------------------------------------------------------- asyncio side

    async def _start(self) -> None:
        from asyncua import ua
        from asyncua.server.server import Server

        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("m2mesh simulated controller")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        index = await server.register_namespace(NAMESPACE)
        machine = await server.nodes.objects.add_object(index, "Machine")
        for name, (initial, unit, code) in VARIABLES.items():
            kind = ua.VariantType.Int64 if type(initial) is int else None
            variable = await machine.add_variable(
                ua.NodeId(ua.String(f"Machine.{name}"), ua.Int16(index)),
                name,
                initial,
                varianttype=kind,
            )
            if unit:
                info = ua.EUInformation(
                    NamespaceUri=UNECE_UNITS,
                    UnitId=code,
                    DisplayName=ua.LocalizedText(unit),
                    Description=ua.LocalizedText(unit),
                )
                await variable.add_property(0, "EngineeringUnits", info)
            self.nodes[name] = variable
        await server.start()
        self.server = server

    async def _set(
        self, name: str, value: object, status: int, source_time: datetime | None
    ) -> None:
        from asyncua import ua

        variable = self.nodes[name]
        kind = await variable.read_data_type_as_variant_type()
        stamp = source_time or datetime.now(UTC)
        data = ua.DataValue(
            ua.Variant(value, kind) if value is not None else ua.Variant(),
            StatusCode=ua.StatusCode(ua.UInt32(status)),
            SourceTimestamp=cast(Any, stamp),
            ServerTimestamp=cast(Any, datetime.now(UTC)),
        )
        await variable.write_value(data)


def free_port(host: str) -> int:
    """A TCP port free on `host` now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = ["NAMESPACE", "VARIABLES", "ControllerServer", "free_port", "node_id"]
