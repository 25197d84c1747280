"""The profile's OT bridges: where a feed's readings come from, and what the agent shows
the plant. Read by `agents.profile`; the bridges themselves live in `agents.ot`.

- A data-feed service with an ``[services.opcua]`` or ``[services.sparkplug]`` table
  sells what that source reads (an OPC UA node, a Sparkplug metric) instead of what a
  ``handler`` produces: `SourceSpec`.
- ``[opcua_server]`` exposes the agent, read-only, as an OPC UA address space
  (`agents.ot.opcua_server`); ``[sparkplug]`` publishes its readings to an MQTT broker as
  Sparkplug B (`agents.ot.sparkplug_bridge`).

Each needs the ``ot`` extra; a profile naming one where it is missing stops at load with
the command that installs it. The tables' keys are checked by the bridges' own config
classes, and a problem is reported as the profile's (file, key, problem).
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.ot import OT_EXTRA, missing

SOURCES = {"opcua": ("asyncua",), "sparkplug": ("paho.mqtt", "google.protobuf")}
"""A service's source table -> the modules it needs."""
SURFACES = {"opcua_server": ("asyncua",), "sparkplug": ("paho.mqtt", "google.protobuf")}
"""A top-level surface table -> the modules it needs."""


class BridgeError(ValueError):
    """A bridge table's problem: `key` (relative to the profile) and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


@dataclass(frozen=True)
class SourceSpec:
    """Where a bridged feed's readings come from."""

    kind: str
    """``opcua`` or ``sparkplug``."""
    config: Any
    """`OpcUaSourceConfig` or `SparkplugSourceConfig`."""


@dataclass(frozen=True)
class Surfaces:
    """What the agent shows the plant (each None when not configured)."""

    opcua_server: Any = None
    """`OpcUaServerConfig`."""
    sparkplug: Any = None
    """`SparkplugPublisherConfig`."""


def _need(key: str, modules: tuple[str, ...]) -> None:
    absent = missing(*modules)
    if absent:
        raise BridgeError(key, f"needs {', '.join(absent)}: {OT_EXTRA}")


def _split(key: str, problem: ValueError) -> BridgeError:
    """A config class's ``ValueError("KEY: PROBLEM")`` as a `BridgeError`."""
    text = str(problem)
    head, sep, tail = text.partition(": ")
    if sep and head.startswith(key):
        return BridgeError(head, tail)
    return BridgeError(key, text)


def service_source(where: str, data: dict[str, Any], kind: str, base: Path) -> SourceSpec | None:
    """The source of service `data` (at `where`, e.g. ``services[0]``), if it has one."""
    named = [name for name in SOURCES if name in data]
    if not named:
        return None
    if len(named) > 1:
        raise BridgeError(
            f"{where}.{named[1]}", f"a feed has one source, not {' and '.join(named)}"
        )
    name = named[0]
    key = f"{where}.{name}"
    if kind != "data-feed":
        raise BridgeError(key, f"only a data-feed has a source; this service is {kind}")
    if "handler" in data:
        raise BridgeError(f"{where}.handler", f"a feed with a {name} source has no handler")
    table = data[name]
    if not isinstance(table, dict):
        raise BridgeError(key, "expected a table")
    _need(key, SOURCES[name])
    try:
        if name == "opcua":
            from agents.ot.opcua_source import OpcUaSourceConfig

            return SourceSpec(name, OpcUaSourceConfig.from_table(table, key, base))
        from agents.ot.sparkplug_bridge import SparkplugSourceConfig

        return SourceSpec(name, SparkplugSourceConfig.from_table(table, key))
    except ValueError as exc:
        raise _split(key, exc) from None


def surfaces(raw: dict[str, Any], base: Path) -> Surfaces:
    """The profile's ``[opcua_server]`` and ``[sparkplug]`` tables."""
    found: dict[str, Any] = {}
    for name, modules in SURFACES.items():
        if name not in raw:
            continue
        table = raw[name]
        if not isinstance(table, dict):
            raise BridgeError(name, "expected a table")
        _need(name, modules)
        try:
            if name == "opcua_server":
                from agents.ot.opcua_server import OpcUaServerConfig

                found[name] = OpcUaServerConfig.from_table(table, name, base)
            else:
                from agents.ot.sparkplug_bridge import SparkplugPublisherConfig

                found[name] = SparkplugPublisherConfig.from_table(table, name)
        except ValueError as exc:
            raise _split(name, exc) from None
    return Surfaces(**found)


__all__ = [
    "SOURCES",
    "SURFACES",
    "BridgeError",
    "SourceSpec",
    "Surfaces",
    "service_source",
    "surfaces",
]
