"""The agent's control socket: `mesh status`, `mesh buy`, `mesh channels` talk to a
running agent through a Unix socket in its data dir (mode 0600, one JSON request
per connection, one JSON answer, each one line). Only the local user who owns the data
dir can reach it; nothing listens on the network.

A request is at most `MAX_REQUEST` bytes (a `mesh buy` request payload, hex, fits); an
answer has no limit here -- what makes it large (the deliveries a `mesh buy` asked
for) is bounded where it is collected (`agents.buy_command`).
(docs/ARCHITECTURE.md §6.2)"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from mesh.errors import MeshError

log = logging.getLogger("agents.control")
Handler = Callable[[dict[str, Any], trio.Event], Awaitable[dict[str, Any]]]
"""handler(request, gone): the answer to `request`; `gone` is set if the asker closes
its end meanwhile (a `mesh buy` interrupted), so a long command can stop its work."""
MAX_REQUEST = 256 * 1024


class ControlError(MeshError):
    """The agent is not running (no socket) or answered with an error."""


class NotRunning(ControlError):
    """No agent listens on the socket: it is missing, or left by one that died."""


async def serve_control(
    path: Path, handler: Handler, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve control requests on a Unix socket at `path` until cancelled."""
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            try:
                if not data.endswith(b"\n") and len(data) >= MAX_REQUEST:
                    raise ValueError(f"a control request is at most {MAX_REQUEST} bytes")
                request = json.loads(data)
                if not isinstance(request, dict):
                    raise TypeError("request must be a JSON object")
                reply = await _answer_while_asked(stream, handler, request)
            except MeshError as exc:  # said for the operator: one line as it is
                reply = {"error": str(exc)}
            except (ValueError, TypeError, KeyError) as exc:  # a malformed request
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except trio.BrokenResourceError:  # the asker is gone (a `mesh buy` interrupted)
                log.info("control: the asker left before the answer")

    try:
        await trio.serve_listeners(answer, [listener])
    finally:
        path.unlink(missing_ok=True)


async def _answer_while_asked(
    stream: trio.SocketStream, handler: Handler, request: dict[str, Any]
) -> dict[str, Any]:
    """Run `handler`, telling it (its `gone` event) when the asker hangs up."""
    gone = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while await stream.receive_some(4096):
                    pass  # nothing more is expected: read to see the end
            gone.set()

        nursery.start_soon(watch)
        try:
            reply = await handler(request, gone)
        except Exception as exc:  # raised below as itself, not inside the nursery's group
            failed: Exception | None = exc
        else:
            failed = None
        nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return reply


def request(path: Path, command: dict[str, Any], timeout: float = 70.0) -> dict[str, Any]:
    """Send one command to the agent listening at `path` (blocking; for the CLI).

    Every way the exchange can fail -- no agent, an agent that stops or dies before it
    answers, no answer within `timeout`, an answer that is not one JSON object -- is a
    `ControlError` saying so; `NotRunning` when no agent listens at all."""
    if not path.exists():
        raise NotRunning(f"no agent is running with this data dir ({path} does not exist)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NotRunning(
                f"no agent is running with this data dir (nothing answers on {path},"
                " left by an agent that did not stop cleanly)"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot reach the agent at {path}: {exc}") from None
        chunks = [b""]
        try:
            sock.sendall(json.dumps(command).encode() + b"\n")
            while not chunks[-1].endswith(b"\n"):  # a JSON line holds no raw newline
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise ControlError(
                f"the agent at {path} did not answer within {timeout:.0f} s"
            ) from None
        except OSError as exc:
            raise ControlError(
                f"the agent at {path} went away before answering ({exc.strerror or exc})"
            ) from None
    data = b"".join(chunks)
    if not data.endswith(b"\n"):
        raise ControlError(
            f"the agent at {path} closed the connection without answering"
            " (did it stop or die? see its log)"
        )
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError(f"the agent at {path} answered something that is not a JSON object")
    if "error" in reply:
        raise ControlError(str(reply["error"]))
    return reply
