"""asyncio beside Trio, in one place: an anyio blocking portal running an asyncio loop in a
thread of its own, for asyncio-only libraries (asyncua).

- `AsyncioPortal.open()` starts the loop thread (blocking for a moment: call it at
  start-up, `async with AsyncioPortal.open() as portal`, which does it in a worker
  thread) and stops it on exit, cancelling what still runs there.
- `await portal.run(fn, *args)` runs the coroutine function `fn` on the asyncio loop
  and returns its result or raises its exception in Trio. Cancelling the Trio caller
  cancels the asyncio task, and waits for it to finish (no asyncio work outlives the
  call that started it).
- `portal.to_trio(fn, *args)` (from asyncio code, e.g. a subscription callback) queues
  the plain function `fn` to run in Trio without blocking the asyncio loop; what it
  raises is logged, never lost silently. After the Trio run ended it is dropped.

No process-wide event-loop policy is changed; one portal per agent is plenty.
(docs/ARCHITECTURE.md §6.1)
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, suppress
from typing import Any, TypeVar

import anyio.from_thread
import trio

log = logging.getLogger("agents.ot")
logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # the bridges say what happened,
# once, in one line each (asyncua logs a traceback per lost connection and per revision)
T = TypeVar("T")
CANCEL_WAIT = 5.0
"""Seconds a cancelled `run` waits for its asyncio task to end (a wedged library's
task is then left behind, and `open`'s exit cancels it)."""


class AsyncioPortal:
    """An asyncio loop in a thread, driven from Trio (see the module docstring)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, token: trio.lowlevel.TrioToken):
        self._portal = portal
        self._token = token

    @classmethod
    @asynccontextmanager
    async def open(cls) -> AsyncIterator[AsyncioPortal]:
        """Start the asyncio thread (in a worker thread), yield the portal, stop it."""
        manager: AbstractContextManager[anyio.from_thread.BlockingPortal] = (
            anyio.from_thread.start_blocking_portal("asyncio")
        )
        portal = await trio.to_thread.run_sync(manager.__enter__)
        try:
            yield cls(portal, trio.lowlevel.current_trio_token())
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(manager.__exit__, None, None, None)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(*args)` on the asyncio loop; its result, or its exception."""
        ended = trio.Event()  # set once the asyncio task has really finished

        async def task() -> T:
            try:
                return await fn(*args)
            finally:
                self.to_trio(ended.set)

        future: concurrent.futures.Future[T] = self._portal.start_task_soon(task)
        done = trio.Event()
        token = self._token

        def finished(_: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(finished)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()  # anyio cancels the asyncio task's scope
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_WAIT):
                await ended.wait()
            raise
        return future.result()

    def to_trio(self, fn: Callable[..., object], *args: Any) -> None:
        """From the asyncio thread: run `fn(*args)` in Trio soon (never blocks)."""

        def call() -> None:
            try:
                fn(*args)
            except Exception:  # a callback's bug must not kill the Trio run
                log.exception("a callback from the asyncio side failed")

        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(call)


__all__ = ["AsyncioPortal"]
