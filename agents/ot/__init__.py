"""Bridges to the plant's own protocols: OPC UA and MQTT Sparkplug B (the ``ot`` extra).

A bridge is a *source* (a feed whose readings come from a machine's controller: an OPC UA
node, a Sparkplug metric) or a *surface* (what the agent shows the plant: an OPC UA
address space, Sparkplug births and data). Every reading that crosses is a
`mesh.readings.Reading`. The asyncio libraries (asyncua) run behind `agents.ot.portal`;
paho-mqtt is driven by Trio through its socket hooks (`agents.ot.mqtt`).

Nothing here is imported unless a profile names a bridge: an agent without the ``ot``
extra runs, and a profile that needs it says which extra to install (`missing`, `OT_EXTRA`).
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

OT_EXTRA = "pip install 'm2mesh[ot]'"
"""What to run when a bridge's library is missing."""


def missing(*modules: str) -> list[str]:
    """The modules among `modules` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def check_keys(table: Mapping[str, object], known: Iterable[str], where: str) -> None:
    """A profile table's keys are among `known`: else ValueError("WHERE.KEY: ...")."""
    names = list(known)
    for key in table:
        if key not in names:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(names)})")


def certificate_paths(
    table: Mapping[str, object], where: str, base: Path, security: str
) -> tuple[Path | None, Path | None]:
    """A table's ``certificate`` and ``private_key`` (paths relative to `base`), both
    required unless `security` is ``none``: else ValueError("WHERE.KEY: ...")."""
    paths: list[Path | None] = []
    for key in ("certificate", "private_key"):
        given = table.get(key)
        if given is not None and (not isinstance(given, str) or not given):
            raise ValueError(f"{where}.{key}: a file path")
        paths.append(None if given is None else (base / given).resolve())
    if security != "none" and None in paths:
        raise ValueError(f"{where}.security: {security} needs certificate and private_key")
    return paths[0], paths[1]


__all__ = ["OT_EXTRA", "certificate_paths", "check_keys", "missing"]
