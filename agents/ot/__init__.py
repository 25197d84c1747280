"""Bridges to the plant's own protocols: OPC UA and MQTT Sparkplug B (the ``ot`` extra).

A bridge is a *source* (a feed whose readings come from a machine's controller: an OPC UA
node, a Sparkplug metric) or a *surface* (what the agent shows the plant: an OPC UA
address space, Sparkplug births and data). Every reading that crosses is a
`mesh.readings.Reading`. The asyncio libraries (asyncua) run behind `agents.ot.portal`;
paho-mqtt is driven by Trio through its socket hooks (`agents.ot.mqtt`).

Nothing here is imported unless a profile names a bridge: an agent without the ``ot``
extra runs, and a profile that needs it says which extra to install (`require`).
"""

from __future__ import annotations

import importlib.util

OT_EXTRA = "pip install 'm2mesh[ot]'"
"""What to run when a bridge's library is missing."""


def missing(*modules: str) -> list[str]:
    """The modules among `modules` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


__all__ = ["OT_EXTRA", "missing"]
