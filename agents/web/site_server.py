"""The site page of `mesh up` / `mesh demo`: every agent of the site on one page.

The runner of a site is synchronous (it starts processes, mines blocks, draws the
terminal view), so the page is served from a thread of its own running a Trio loop.
Each agent's status comes from its control socket, as the terminal view's does, and
only while someone has the page open (`agents.web.feed.SnapshotCache`).
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import trio

from agents.web.app import site_app
from agents.web.server import serve_app

Status = dict[str, Any] | None


class SiteServer:
    """Serves `site_app` for the agents `names`, whose status `status(name)` reads."""

    def __init__(
        self,
        site: str,
        names: tuple[str, ...],
        status: Callable[[str], Status],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Nothing runs until `start`."""
        self.site, self.names, self._status = site, names, status
        self.host, self.port = host, port
        self.url: str | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None

    def _snapshot_sync(self) -> dict[str, Any]:
        agents = []
        for name in self.names:
            status = self._status(name)
            dashboard = status.get("dashboard") if status else None
            agents.append({"name": name, "dashboard": dashboard, "status": status})
        return {"site": self.site, "agents": agents}

    async def _snapshot(self) -> dict[str, Any]:
        return await trio.to_thread.run_sync(self._snapshot_sync)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                app = site_app(self._snapshot)
                self.url = await nursery.start(serve_app, app, self.host, self.port)
                self._ready.set()

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by `start`; the site runs on without a page
            self._error = exc
        finally:
            self._ready.set()

    def start(self, timeout: float = 10.0) -> str | None:
        """Start serving; the page's URL, or None if it could not start (`error`)."""
        self._thread = threading.Thread(target=self._thread_main, name="site-view", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        return self.url

    @property
    def error(self) -> str | None:
        """Why the page is not served, if it is not."""
        if self._error is not None:
            return f"{type(self._error).__name__}: {self._error}"
        return None if self.url else "not started"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the thread."""
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(timeout)
