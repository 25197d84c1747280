"""The web view's ASGI apps (Starlette on Trio, served by `agents.web.server`).

The agent's app, all GET and read-only:

    /             the dashboard (static/agent.html; its script reads the two below)
    /api/status   the status as JSON (`mesh status --json`, plus the anchored streams)
    /events       the same as server-sent events, one `status` event a second
    /metrics      Prometheus text format (`agents.web.metrics`)
    /proof        ?agent=&stream=&seq=: one record's proof, as `mesh proof` writes it
    /static/...   the page's own script and style: nothing is loaded from elsewhere

The site's app (`mesh up`, `mesh demo`): ``/`` (static/site.html), ``/api/site`` and
``/events`` (one `site` event a second: every agent's status and dashboard address).

With a token configured every request must carry it (``?token=`` or ``Authorization:
Bearer``); without, the server only listens on loopback (`agents.web.config`).
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from agents.web.feed import SnapshotCache, sse_stream
from agents.web.metrics import render
from agents.web.records import RecordsView
from mesh.errors import MeshError

STATIC = Path(__file__).with_name("static")
EVENT_INTERVAL = 1.0
"""Seconds between server-sent events: the page is at most this far behind."""
SNAPSHOT_AGE = 0.9
"""A snapshot younger than this is served again (below `EVENT_INTERVAL`: each event
interval computes one)."""
NO_STORE = {"Cache-Control": "no-store"}
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class TokenGate:
    """ASGI middleware: every HTTP request must carry `token` (when one is set), but
    for the page's own script and style (``/static/``: a <script> tag cannot carry it)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        """Wrap `app`."""
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401."""
        if (
            self.token is None
            or scope["type"] != "http"
            or scope.get("path", "").startswith("/static/")  # the page's code: no data
            or self._carries(scope)
        ):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            "a token is required: ?token=… or Authorization: Bearer …", 401
        )
        await response(scope, receive, send)

    def _carries(self, scope: Scope) -> bool:
        assert self.token is not None
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value.lower().startswith(b"bearer "):
                given = value[7:].strip()
        for part in scope.get("query_string", b"").split(b"&"):
            if part.startswith(b"token="):
                given = part[6:]
        return hmac.compare_digest(given, self.token)


def proof_file_name(stream: str, seq: int) -> str:
    """The download's file name: the stream's name reduced to safe characters (a kept
    stream is named by the peer that produced it)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", stream)[:80]
    return f"proof-{safe}-{seq}.json"


def _page(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        return FileResponse(STATIC / name, headers=PAGE_HEADERS)

    return page


def _events(cache: SnapshotCache, event: str) -> Callable[[Request], Awaitable[Response]]:
    async def events(request: Request) -> Response:
        return StreamingResponse(
            sse_stream(cache, event, EVENT_INTERVAL),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return events


def agent_app(
    snapshot: Callable[[], Awaitable[dict[str, Any]]],
    records: RecordsView,
    token: str | None = None,
) -> ASGIApp:
    """The agent's dashboard app over `snapshot` (the status) and its `records`."""

    async def with_records() -> dict[str, Any]:
        return await snapshot() | {"records": await records.listing()}

    cache = SnapshotCache(with_records, SNAPSHOT_AGE)

    async def status(request: Request) -> Response:
        return JSONResponse(await cache.get(), headers=NO_STORE)

    async def metrics(request: Request) -> Response:
        body = render(await cache.get())
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers=NO_STORE)

    async def proof(request: Request) -> Response:
        query = request.query_params
        try:
            agent, stream, seq = query["agent"], query["stream"], int(query["seq"])
            text = await records.proof(agent, stream, seq)
        except MeshError as exc:  # no such record, not anchored yet, nothing logged
            return PlainTextResponse(str(exc), 404)
        except (KeyError, ValueError) as exc:
            return PlainTextResponse(f"give agent, stream and seq: {exc}", 400)
        name = proof_file_name(stream, seq)
        headers = NO_STORE | {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(text, media_type="application/json", headers=headers)

    app = Starlette(
        routes=[
            Route("/", _page("agent.html")),
            Route("/api/status", status),
            Route("/events", _events(cache, "status")),
            Route("/metrics", metrics),
            Route("/proof", proof),
            Mount("/static", StaticFiles(directory=STATIC)),
        ]
    )
    return TokenGate(app, token)


def site_app(
    snapshot: Callable[[], Awaitable[dict[str, Any]]], token: str | None = None
) -> ASGIApp:
    """The site page's app over `snapshot` (``{"site": …, "agents": [...]}``)."""
    cache = SnapshotCache(snapshot, SNAPSHOT_AGE)

    async def site(request: Request) -> Response:
        return JSONResponse(await cache.get(), headers=NO_STORE)

    app = Starlette(
        routes=[
            Route("/", _page("site.html")),
            Route("/api/site", site),
            Route("/events", _events(cache, "site")),
            Mount("/static", StaticFiles(directory=STATIC)),
        ]
    )
    return TokenGate(app, token)


__all__ = ["STATIC", "TokenGate", "agent_app", "proof_file_name", "site_app"]
