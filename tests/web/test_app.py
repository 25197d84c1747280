"""The web view's server on a real socket (Hypercorn's Trio worker on loopback) over a
stand-in status: the token gate, read-only routes, server-sent events, one snapshot
shared by every viewer, proofs' errors, and where it may listen."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from agents.web.app import agent_app, proof_file_name, site_app
from agents.web.config import DashboardConfig, dashboard_config, exposure_problem, parse_listen
from agents.web.records import RecordsView
from agents.web.server import serve_app
from mesh.identity import Identity
from tests.web.agents import get

TOKEN = "s3cret-token-0123456789"


class Counter:
    """A status that counts how often it was asked for."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"agent": "stand-in", "calls": self.calls, "channels": []}


async def fetch(url: str, **headers: str) -> tuple[int, bytes]:
    def run() -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    return await trio.to_thread.run_sync(run)


async def events(url: str, count: int) -> list[bytes]:
    """The first `count` server-sent events of `url`, read off a raw socket."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        path = "/" + url.removeprefix("http://").split("/", 1)[1]
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while data.count(b"event: ") < count:
                chunk = await stream.receive_some(65536)
                assert chunk, data
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"text/event-stream" in head
    return re.findall(rb"event: [^\n]*\ndata: [^\n]*\n", body)  # across HTTP chunks


async def test_a_token_is_required_when_set_and_routes_are_read_only(tmp_path: Path) -> None:
    status = Counter()
    app = agent_app(status, RecordsView(tmp_path), TOKEN)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_app, app, "127.0.0.1", 0)
        assert (await fetch(url + "api/status"))[0] == 401
        assert (await fetch(url + "api/status?token=wrong-token-0123456"))[0] == 401
        assert (await fetch(url + "metrics", Authorization="Bearer nope"))[0] == 401
        code, body = await fetch(url + f"api/status?token={TOKEN}")
        assert code == 200 and b'"agent":"stand-in"' in body
        code, body = await fetch(url + "metrics", Authorization=f"Bearer {TOKEN}")
        assert code == 200 and b"m2mesh_info" in body
        code, page = await fetch(url + f"?token={TOKEN}")
        assert code == 200 and b"<html" in page.lower()
        assert (await fetch(url + "static/agent.js"))[0] == 200  # code, no data: no token
        assert (await fetch(url))[0] == 401

        def post() -> int:
            request = urllib.request.Request(url + f"api/status?token={TOKEN}", data=b"{}")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        assert await trio.to_thread.run_sync(post) == 405
        nursery.cancel_scope.cancel()


async def test_every_viewer_shares_one_snapshot_a_second(tmp_path: Path) -> None:
    status = Counter()
    app = agent_app(status, RecordsView(tmp_path))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_app, app, "127.0.0.1", 0)
        assert status.calls == 0  # nobody looks: nothing is computed
        got: list[list[bytes]] = []

        async def watch() -> None:
            got.append(await events(url + "events", 3))

        start = trio.current_time()
        async with trio.open_nursery() as viewers:
            for _ in range(4):
                viewers.start_soon(watch)
        took = trio.current_time() - start
        assert len(got) == 4 and all(len(g) == 3 for g in got)
        assert all(g[0].startswith(b"event: status\ndata: {") for g in got)
        assert 1.8 < took < 5, took  # one event a second, the first at once
        # Four viewers, three events each: one snapshot per interval, shared.
        assert status.calls <= 4, status.calls
        nursery.cancel_scope.cancel()


async def test_a_proof_request_says_what_is_wrong(tmp_path: Path) -> None:
    app = agent_app(Counter(), RecordsView(tmp_path))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_app, app, "127.0.0.1", 0)
        code, body = await fetch(url + "proof?agent=zz&stream=s&seq=1")
        assert code == 400 and b"not hex" in body
        code, body = await fetch(url + "proof?stream=s&seq=1")
        assert code == 400
        agent = Identity.generate().peer_id
        code, body = await fetch(url + f"proof?agent={agent}&stream=s&seq=1")
        assert code == 404 and b"agent store" in body, body
        assert proof_file_name('readings/x"\r\nSet-Cookie: a=b', 1) == (
            "proof-readings-x---Set-Cookie--a-b-1.json"
        )
        nursery.cancel_scope.cancel()


async def test_the_site_app_serves_its_page_and_snapshot() -> None:
    async def snapshot() -> dict[str, Any]:
        return {"site": "s-1", "agents": [{"name": "a", "dashboard": None, "status": None}]}

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_app, site_app(snapshot), "127.0.0.1", 0)
        code, body = await fetch(url + "api/site")
        assert code == 200 and b'"site":"s-1"' in body
        assert (await fetch(url))[0] == 200
        [first] = await events(url + "events", 1)
        assert first.startswith(b"event: site\n")
        nursery.cancel_scope.cancel()


async def test_a_taken_port_is_an_error_not_a_hang() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError, match="in use"):
                    await nursery.start(serve_app, site_app(Counter()), "127.0.0.1", port)


def test_listen_addresses_and_tokens(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("off") == (None, 0)
    for bad in ("localhost:80", "127.0.0.1", "1.2.3.4:99999", ":80"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    with pytest.raises(ValueError, match="token_file"):
        dashboard_config("0.0.0.0:8470", "", tmp_path)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16"):
        dashboard_config("0.0.0.0:8470", "short", tmp_path)
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = dashboard_config("0.0.0.0:8470", "token", tmp_path)
    assert (config.host, config.port, config.token) == ("0.0.0.0", 8470, TOKEN)
    assert exposure_problem(DashboardConfig("192.168.1.5", 80)) is not None
    assert exposure_problem(DashboardConfig("::1", 80)) is None
    assert not dashboard_config("off", "", tmp_path).enabled


def test_get_helper_reads_error_bodies() -> None:
    with pytest.raises(OSError):
        get("http://127.0.0.1:9/", timeout=1)
