"""The vendor API: write a service as a typed async function, register it by name, and
find the handler a profile names.

A handler produces one unit: a tick of tool time, one reading of a feed, one answer to
a call. It is registered with a decorator under the name a profile gives it::

    import trio

    from agents.services.vendor import CallContext, FeedContext, ToolContext, vendor
    from mesh.readings import Reading


    @vendor.tool("lathe")
    async def lathe(ctx: ToolContext) -> None:
        ctx.state["running"] = True         # one paid tick: the machine runs...
        await trio.sleep(ctx.tick)          # ...for `tick` seconds


    @lathe.on_stop
    async def lathe_stop(ctx: ToolContext) -> None:
        ctx.state["running"] = False        # payment stopped or the order ended: halt


    @vendor.feed("coolant-temp")
    async def coolant_temp(ctx: FeedContext) -> Reading:
        await trio.sleep(ctx.tick)          # one typed reading per tick
        return Reading.of("coolant_temp", 21.5, "Cel")


    @vendor.call("inspect")
    async def inspect(ctx: CallContext, request: bytes) -> bytes:
        return b"PASS " + request           # one answer per paid call

Handlers never see payments: the runtime meters, and calls a handler only for units
that are paid (or within the provider's credit window). What a handler knows is its
`ServiceContext`; `ctx.state` is a dict kept per service across orders, where a handler
keeps what it knows of its machine.

A profile's ``handler = "..."`` names a handler in one of three ways; the colon decides
which, so no name can mean two things:

* ``"NAME"`` (no colon): the handler an installed package declares as the entry point
  ``NAME`` of the group ``m2mesh.services``, whose value is the handler object
  (``acme-print-time = "acme_printer.handlers:print_time"``) -- how a vendor package
  ships its handlers (`examples/acme-printer`). Entry points are listed without
  importing anyone's code, so an unknown name is answered with what is installed.
* ``"builtin:NAME"``: one of m2mesh's simulated machines (`agents.services.builtin`).
* ``"package.module:NAME"``: imports ``package.module`` from ``sys.path`` and takes the
  handler it (or a submodule) registered as ``NAME`` -- for code not installed as a
  package.

This module owns the registry and that rule; it never touches payments or the network,
and it imports vendor code only when a profile names it. (docs/ARCHITECTURE.md §6)
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from mesh.errors import MeshError
from mesh.readings import Reading

ENTRY_POINT_GROUP = "m2mesh.services"
"""The entry-point group whose entries name installed vendor handlers."""

BUILTIN_MODULE = "agents.services.builtin"

_LISTED = 20
"""At most this many names are listed in an unknown-handler error (it stays one line)."""

_FORMS = "'NAME' (an installed package's), 'builtin:NAME' or 'package.module:NAME'"


@dataclass
class ServiceContext:
    """What a handler knows about the unit it is producing."""

    service_id: str
    """The profile's id of the service (``services[].id``)."""
    buyer: str
    """The buyer's peer id."""
    order_id: bytes
    seq: int
    """How many units of this order were delivered before this one."""
    tick: float
    """Seconds one unit lasts (``services[].tick``)."""
    price: int
    """Satoshis the buyer pays for this unit."""
    state: dict[str, Any]
    """Kept per service across orders: the handler's own memory of its machine."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("agents.services"))


ToolContext = ServiceContext
FeedContext = ServiceContext
CallContext = ServiceContext

ToolFn = Callable[[ServiceContext], Awaitable[None]]
FeedFn = Callable[[ServiceContext], Awaitable[Reading]]
CallFn = Callable[[ServiceContext, bytes], Awaitable[bytes]]


class HandlerError(MeshError):
    """A handler name that cannot be resolved, or a handler of the wrong kind."""


@dataclass
class ToolHandler:
    """Tool time: `run` does one tick of work; `stop` halts the machine."""

    name: str
    run: ToolFn
    stop: ToolFn | None = None
    kind: str = "tool-time"

    def on_stop(self, fn: ToolFn) -> ToolFn:
        """Register the stop hook (called when payment stops or the order ends)."""
        self.stop = fn
        return fn


@dataclass
class FeedHandler:
    """A data feed: `read` produces one typed `Reading` per tick (`Reading.of(name,
    value, unit)`; the agent stamps its own time when it signs it)."""

    name: str
    read: FeedFn
    kind: str = "data-feed"


@dataclass
class CallHandler:
    """A call: `handle` answers one request."""

    name: str
    handle: CallFn
    kind: str = "call"


Handler = ToolHandler | FeedHandler | CallHandler


class Registry:
    """Handlers by name; modules register theirs at import time."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._modules: dict[str, str] = {}
        """The module each handler's function was defined in, by handler name."""

    def _add(self, handler: Handler, module: str) -> None:
        if handler.name in self._handlers:
            raise HandlerError(
                f"a handler named {handler.name!r} is already registered"
                f" (by {self._modules[handler.name]})"
            )
        self._handlers[handler.name] = handler
        self._modules[handler.name] = module

    def tool(self, name: str) -> Callable[[ToolFn], ToolHandler]:
        """Register a tool-time handler (decorator)."""

        def register(fn: ToolFn) -> ToolHandler:
            handler = ToolHandler(name, fn)
            self._add(handler, fn.__module__)
            return handler

        return register

    def feed(self, name: str) -> Callable[[FeedFn], FeedHandler]:
        """Register a data-feed handler (decorator)."""

        def register(fn: FeedFn) -> FeedHandler:
            handler = FeedHandler(name, fn)
            self._add(handler, fn.__module__)
            return handler

        return register

    def call(self, name: str) -> Callable[[CallFn], CallHandler]:
        """Register a call handler (decorator)."""

        def register(fn: CallFn) -> CallHandler:
            handler = CallHandler(name, fn)
            self._add(handler, fn.__module__)
            return handler

        return register

    def get(self, name: str) -> Handler | None:
        """The handler registered as `name`."""
        return self._handlers.get(name)

    def names(self, module: str | None = None) -> list[str]:
        """The registered names (those defined in `module` or its submodules), sorted."""
        return sorted(
            name
            for name, where in self._modules.items()
            if module is None or where == module or where.startswith(f"{module}.")
        )


vendor = Registry()
"""The registry vendors' modules (and the built-ins) register into."""


def resolve(reference: str, kind: str) -> Handler:
    """The handler a profile's ``handler = reference`` names, checked to be of `kind`
    (the naming rule is in the module docstring). Every failure is a one-line
    `HandlerError` that starts with the reference."""
    if ":" in reference:
        module, _, name = reference.partition(":")
        handler = _registered(reference, module, name)
    else:
        handler = _installed(reference)
    if handler.kind != kind:
        raise HandlerError(f"{reference!r} is a {handler.kind} handler, not {kind}")
    return handler


def installed_handlers() -> list[str]:
    """The handler names installed packages declare (group ``m2mesh.services``), sorted."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP).names)


def _installed(name: str) -> Handler:
    """The handler an installed package declares as the entry point `name`."""
    if not name:
        raise HandlerError(f"'': expected {_FORMS}")
    declared = entry_points(group=ENTRY_POINT_GROUP).select(name=name)
    if not declared:
        raise HandlerError(_not_installed(name))
    if len(declared) > 1:
        origins = ", ".join(_origin(ep) for ep in declared)
        raise HandlerError(
            f"{name!r} is declared by {len(declared)} installed packages ({origins});"
            f" uninstall one, or write 'package.module:{name}'"
        )
    (entry,) = declared
    try:
        loaded = entry.load()
    except (ImportError, AttributeError, HandlerError) as exc:
        raise HandlerError(f"{name!r}: cannot load {_origin(entry)}: {_one_line(exc)}") from None
    if not isinstance(loaded, ToolHandler | FeedHandler | CallHandler):
        raise HandlerError(
            f"{name!r}: {_origin(entry)} is a {type(loaded).__name__}, not a handler"
            " (register it with @vendor.tool, @vendor.feed or @vendor.call)"
        )
    if loaded.name != name:
        raise HandlerError(
            f"{name!r}: {_origin(entry)} is the handler registered as {loaded.name!r};"
            " an entry point must have its handler's name"
        )
    return loaded


def _registered(reference: str, module: str, name: str) -> Handler:
    """``builtin:NAME`` or ``package.module:NAME``: import the module, then take the
    handler registered as `name` by it or one of its submodules."""
    if not name or not all(part.isidentifier() for part in module.split(".")):
        raise HandlerError(f"{reference!r}: expected {_FORMS}")
    builtin = module == "builtin"
    path = BUILTIN_MODULE if builtin else module
    try:
        importlib.import_module(path)
    except (ImportError, HandlerError) as exc:
        raise HandlerError(f"{reference!r}: cannot import {module!r} ({_one_line(exc)})") from None
    ours = vendor.names(path)  # (another module's handler of that name is not meant)
    handler = vendor.get(name) if name in ours else None
    if handler is None:
        if builtin:
            raise HandlerError(
                f"{reference!r}: no built-in handler {name!r}{_hint(name, ours)};"
                f" the built-ins are {_listing(ours)}"
            )
        listed = f"it registers {_listing(ours)}" if ours else "it registers none"
        raise HandlerError(
            f"{reference!r}: {module} registers no handler {name!r}{_hint(name, ours)}; {listed}"
        )
    return handler


def _not_installed(name: str) -> str:
    names = installed_handlers()
    importlib.import_module(BUILTIN_MODULE)  # (ours: imports nothing of anyone else's)
    hint = _hint(name, names)
    if not hint and name in vendor.names(BUILTIN_MODULE):
        hint = f" (did you mean 'builtin:{name}'?)"
    if not names:
        return (
            f"{name!r}: no installed package declares it{hint}; no package with"
            f" {ENTRY_POINT_GROUP} entry points is installed (pip install the vendor's"
            " package, or write 'builtin:NAME' or 'package.module:NAME')"
        )
    return (
        f"{name!r}: no installed package declares it{hint};"
        f" installed {ENTRY_POINT_GROUP} handlers: {_listing(names)}"
    )


def _hint(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _one_line(exc: BaseException) -> str:
    """A vendor module's error message, kept to one line."""
    return " ".join(str(exc).split())


def _origin(entry: EntryPoint) -> str:
    """``module:attribute`` of the entry point and the distribution declaring it."""
    dist = entry.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
    return f"{entry.value} (from {where})"
