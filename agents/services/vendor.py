"""The vendor API: write a service as a typed async function, register it by name.

    from agents.services.vendor import vendor, ToolContext, CallContext

    @vendor.tool("lathe")
    async def lathe(ctx: ToolContext) -> None:
        await ctx.machine.run_for(ctx.tick)     # one paid tick of machine time

    @lathe.on_stop
    async def lathe_stop(ctx: ToolContext) -> None:
        await ctx.machine.halt()                # payment stopped: stop the tool

    @vendor.call("inspect")
    async def inspect(ctx: CallContext, request: bytes) -> bytes:
        return b"PASS"

The profile binds a registered name to a price (``handler = "mypkg.services:lathe"``
imports ``mypkg.services`` and takes the handler registered as ``lathe``; built-ins
are ``builtin:NAME``). Handlers never see payments: the runtime meters, and calls
a handler only for units that are paid (or within the provider's credit window).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.errors import MeshError


@dataclass
class ServiceContext:
    """What a handler knows about the unit it is producing."""

    service_id: str
    buyer: str
    order_id: bytes
    seq: int
    tick: float
    price: int
    state: dict[str, Any]
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("agents.services"))


ToolContext = ServiceContext
FeedContext = ServiceContext
CallContext = ServiceContext

ToolFn = Callable[[ServiceContext], Awaitable[None]]
FeedFn = Callable[[ServiceContext], Awaitable[bytes]]
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
        """Register the stop hook (called when payment stops or the lease ends)."""
        self.stop = fn
        return fn


@dataclass
class FeedHandler:
    """A data feed: `read` produces one reading (bytes) per tick."""

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

    def _add(self, handler: Handler) -> None:
        if handler.name in self._handlers:
            raise HandlerError(f"a handler named {handler.name!r} is already registered")
        self._handlers[handler.name] = handler

    def tool(self, name: str) -> Callable[[ToolFn], ToolHandler]:
        """Register a tool-time handler (decorator)."""

        def register(fn: ToolFn) -> ToolHandler:
            handler = ToolHandler(name, fn)
            self._add(handler)
            return handler

        return register

    def feed(self, name: str) -> Callable[[FeedFn], FeedHandler]:
        """Register a data-feed handler (decorator)."""

        def register(fn: FeedFn) -> FeedHandler:
            handler = FeedHandler(name, fn)
            self._add(handler)
            return handler

        return register

    def call(self, name: str) -> Callable[[CallFn], CallHandler]:
        """Register a call handler (decorator)."""

        def register(fn: CallFn) -> CallHandler:
            handler = CallHandler(name, fn)
            self._add(handler)
            return handler

        return register

    def get(self, name: str) -> Handler | None:
        """The handler registered as `name`."""
        return self._handlers.get(name)


vendor = Registry()
"""The registry vendors' modules (and the built-ins) register into."""


def resolve(reference: str, kind: str) -> Handler:
    """Find the handler a profile names (``builtin:NAME`` or ``module:NAME``)."""
    module, _, name = reference.partition(":")
    if not module or not name:
        raise HandlerError(f"{reference!r}: expected 'builtin:NAME' or 'package.module:NAME'")
    try:
        importlib.import_module("agents.services.builtin" if module == "builtin" else module)
    except ImportError as exc:
        raise HandlerError(f"{reference!r}: cannot import {module!r} ({exc})") from None
    handler = vendor.get(name)
    if handler is None:
        raise HandlerError(f"{reference!r}: no handler registered as {name!r}")
    if handler.kind != kind:
        raise HandlerError(f"{reference!r} is a {handler.kind} handler, not {kind}")
    return handler
