"""Serve an ASGI app from inside a Trio nursery (Hypercorn's Trio worker).

Hypercorn because it runs on Trio itself -- the dashboard lives in the agent's own
nursery and loop, no thread, no second event loop -- and speaks HTTP/1.1 with
keep-alive and streaming responses (server-sent events). Starlette (on anyio) routes.
(docs/ARCHITECTURE.md §6.2)
"""

from __future__ import annotations

import logging
import socket

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.types import ASGIApp

_hypercorn = logging.getLogger("agents.web.server")
_hypercorn.setLevel(logging.WARNING)  # its "Running on ... (CTRL + C to quit)" is not ours


def _listening(host: str, port: int) -> tuple[int, str]:
    """Bind `host`:`port` here, so a taken port is a plain OSError before anything
    starts; the socket's file descriptor (for Hypercorn's ``fd://``) and its URL."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock.detach(), f"http://{shown}:{bound}/"


def _config(fd: int) -> Config:
    config = Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = _hypercorn
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    config.include_server_header = False
    return config


async def serve_app(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `host`:`port` (0: a free port) until cancelled; `started` with the
    URL it listens at (``http://127.0.0.1:41234/``). OSError if the address is taken."""
    fd, url = _listening(host, port)
    async with trio.open_nursery() as nursery:
        await nursery.start(_serve, app, _config(fd))
        task_status.started(url)


async def _serve(app: ASGIApp, config: Config, *, task_status: trio.TaskStatus[list[str]]) -> None:
    await serve(app, config, shutdown_trigger=trio.sleep_forever, task_status=task_status)  # type: ignore[arg-type]
