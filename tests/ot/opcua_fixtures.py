"""A real OPC UA server for the tests: the simulated controller (asyncua, in-process,
on 127.0.0.1), behind the agent's own asyncio portal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agents.ot import missing

pytestmark = pytest.mark.skipif(
    bool(missing("asyncua")), reason="needs asyncua: pip install -e '.[ot]' (CI installs it)"
)


@asynccontextmanager
async def controller() -> AsyncIterator[tuple[object, object]]:
    """A running simulated controller and the portal it runs on."""
    from agents.ot.controller import ControllerServer
    from agents.ot.portal import AsyncioPortal

    async with AsyncioPortal.open() as portal:
        server = ControllerServer(portal)
        await server.start()
        try:
            yield server, portal
        finally:
            await server.stop()
