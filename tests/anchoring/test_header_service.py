"""The Block Headers Service client and `mesh verify --network` against local HTTP servers.

Each server is a thread with `http.server` on 127.0.0.1 answering the service's two
calls in its JSON shape (`tests.anchoring.header_chains.headers_json`): the tip, and
headers by height, in a shuffled order, with headers of a stale fork mixed in as the
real service returns them. Honest servers serve toy chains (test-only rules); lying ones
serve re-mined or backdated chains, wrong hashes, gaps, errors. The command line is run
as users run it (``python -m agents.cli verify``) where it refuses a chain, and in
process with the toy rules standing in for testnet where a proof must come out VALID.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from bsv.merkle_path import MerklePath

from agents.cli import main
from mesh.anchoring.checkpoints import NETWORK_PARAMS, TESTNET
from mesh.anchoring.errors import HeaderRejected, HeadersError
from mesh.anchoring.header_rules import DAA_HISTORY
from mesh.anchoring.header_service import (
    HeaderService,
    ServiceAnswerError,
    base_url,
    fetch_chain,
    header_from_json,
    pages,
)
from mesh.anchoring.headers import HeaderChain
from mesh.chain.merkle import BlockHeader
from tests.anchoring.conftest import Anchored
from tests.anchoring.header_chains import (
    CHECKPOINT,
    Miner,
    genesis,
    headers_json,
    mine,
    relink,
    root_for,
    toy_chain,
)
from tests.anchoring.helpers import mesh


@dataclass
class Served:
    """What a fake service answers: the chain (headers[0] at `start`), stale extras by
    height, and how it misbehaves."""

    headers: list[BlockHeader]
    start: int
    stale: dict[int, list[BlockHeader]] = field(default_factory=dict)
    status: int = 200
    raw: bytes | None = None  # answer these bytes to every call instead
    edit: Any = None  # edit(height, json) -> json, for lying about one header
    requests: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)

    @property
    def tip_height(self) -> int:
        return self.start + len(self.headers) - 1

    def item(self, height: int, header: BlockHeader) -> dict[str, object]:
        body = headers_json(header)
        return self.edit(height, body) if self.edit is not None else body

    def answer(self, path: str, query: dict[str, list[str]]) -> object:
        if path == "/api/v1/chain/tip/longest":
            return {
                "header": self.item(self.tip_height, self.headers[-1]),
                "state": "LONGEST_CHAIN",
                "chainWork": "0",
                "height": self.tip_height,
            }
        assert path == "/api/v1/chain/header/byHeight", path
        height, count = int(query["height"][0]), int(query.get("count", ["1"])[0])
        items = []
        for h in range(height, height + count):
            if 0 <= h - self.start < len(self.headers):
                items.append(self.item(h, self.headers[h - self.start]))
            items += [headers_json(x) for x in self.stale.get(h, [])]
        random.Random(height).shuffle(items)  # the service's SQL has no ORDER BY
        return items


@contextmanager
def serving(served: Served) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering as `served` says; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            served.requests.append((url.path, query, self.headers.get("Authorization")))
            if served.status != 200:
                self.send_error(served.status)
                return
            body = served.raw
            if body is None:
                body = json.dumps(served.answer(url.path, query)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def honest_served() -> tuple[Any, Served]:
    """The toy chain served from genesis, with a stale fork of 3 headers at 300..302."""
    params, headers = toy_chain()
    stale = Miner(params, list(headers[:300])).extend(3, 600, b"stale").headers[300:]
    return params, Served(list(headers), 0, {300 + i: [h] for i, h in enumerate(stale)})


# --------------------------------------------------------------------------- the client


def test_an_honest_service_gives_the_chain_from_146_below_the_checkpoint() -> None:
    params, served = honest_served()
    told: list[tuple[int, int]] = []
    with serving(served) as url:
        chain = fetch_chain(
            HeaderService(url),
            params,
            served.headers[-1].time,
            page=50,
            progress=lambda *a: told.append(a),
        )
    start = CHECKPOINT - DAA_HISTORY
    assert chain.start_height == start and chain.tip_height == 399
    assert list(chain.headers) == served.headers[start:]  # the stale fork is left out
    assert chain.source == f"--header-service {url}" and chain.network == "toy"
    assert chain.trust is not None and chain.trust.checkpoint.height == CHECKPOINT
    paths = [p for p, _, _ in served.requests]
    assert paths[0] == "/api/v1/chain/tip/longest"
    asked = [(int(q["height"][0]), int(q["count"][0])) for p, q, _ in served.requests[1:]]
    assert asked == list(pages(start, 399, 50)) and asked[0] == (start, 50)
    assert all(count <= 50 for _, count in asked) and asked[-1] == (354, 46)
    assert told[-1] == (399, 399) and len(told) == len(asked)
    assert all(auth is None for _, _, auth in served.requests)


def test_a_token_is_sent_as_a_bearer_token() -> None:
    params, served = honest_served()
    with serving(served) as url:
        fetch_chain(HeaderService(url + "/api/v1/", token="t0k"), params, 2e9)
    assert {auth for _, _, auth in served.requests} == {"Bearer t0k"}
    assert served.requests[0][0] == "/api/v1/chain/tip/longest"  # not /api/v1/api/v1


def test_a_service_serving_a_re_mined_chain_is_refused() -> None:
    params, _ = toy_chain()
    remined = Miner(params, [genesis()]).extend(399, 600, b"liar").headers
    with serving(Served(remined, 0)) as url, pytest.raises(HeaderRejected) as caught:
        fetch_chain(HeaderService(url), params, 2e9)
    assert caught.value.rule == "checkpoint"
    assert str(caught.value).startswith(
        f"--header-service {url}: does not connect to checkpoint at height {CHECKPOINT}: "
    )


def test_a_service_serving_a_backdated_tip_is_refused() -> None:
    params, headers = toy_chain()
    miner = Miner(params, list(headers))
    miner.next(time=miner.tip.time - 100_000_000)
    with serving(Served(miner.headers, 0)) as url, pytest.raises(HeaderRejected) as caught:
        fetch_chain(HeaderService(url), params, 2e9)
    assert caught.value.rule == "time-too-old" and caught.value.height == 400


def test_a_service_that_lies_about_hashes_or_leaves_gaps_is_refused() -> None:
    params, served = honest_served()

    def wrong_hash(height: int, body: dict[str, object]) -> dict[str, object]:
        return {**body, "hash": "00" * 32} if height == 250 else body

    served.edit = wrong_hash
    with serving(served) as url, pytest.raises(ServiceAnswerError, match="hashes to"):
        fetch_chain(HeaderService(url), params, 2e9)
    gap = Served([*served.headers[:250], *served.headers[251:]], 0)  # 250 missing
    with serving(gap) as url, pytest.raises(ServiceAnswerError) as caught:
        fetch_chain(HeaderService(url), params, 2e9)
    assert str(caught.value) == (
        f"--header-service {url}: no header at height 249 that header 250 links to"
    )


def test_a_service_whose_tip_is_below_every_checkpoint_is_refused() -> None:
    params, headers = toy_chain()
    with serving(Served(list(headers[:150]), 0)) as url, pytest.raises(HeaderRejected) as caught:
        fetch_chain(HeaderService(url), params, 2e9)
    assert str(caught.value) == (
        f"--header-service {url}: does not connect to checkpoint at height {CHECKPOINT}"
        " (the service's tip is at height 149)"
    )


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (Served([], 0, status=500), "HTTP 500 for /chain/tip/longest"),
        (Served([], 0, status=401), "HTTP 401"),
        (Served([], 0, raw=b"<html>no</html>"), "is not JSON"),
        (Served([], 0, raw=b"[1, 2]"), "the tip is not an object"),
        (Served([], 0, raw=b'{"height": 5, "header": {"hash": 1}}'), "a header lacks"),
        (Served([], 0, raw=b" " * (2 << 20)), "larger than"),
    ],
)
def test_service_failures_are_one_line_errors(served: Served, expected: str) -> None:
    params, _ = toy_chain()
    with serving(served) as url, pytest.raises(HeadersError) as caught:
        fetch_chain(HeaderService(url), params, 2e9)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"--header-service {url}: ")


def test_an_unreachable_service_or_a_bad_url_is_an_error() -> None:
    params, _ = toy_chain()
    with serving(Served([], 0)) as url:
        pass  # closed again: nothing listens there now
    with pytest.raises(HeadersError, match="cannot reach it"):
        fetch_chain(HeaderService(url, timeout=5), params, 2e9)
    for bad in ("ftp://127.0.0.1/x", "127.0.0.1:8080", "file:///etc/passwd"):
        with pytest.raises(HeadersError, match="not an http"):
            HeaderService(bad)
    assert base_url("http://127.0.0.1:1/api/v1/") == "http://127.0.0.1:1"
    assert base_url("http://127.0.0.1:1/bhs/") == "http://127.0.0.1:1/bhs"


def test_headers_are_read_from_the_services_json_shape() -> None:
    _, headers = toy_chain()
    header = dataclasses.replace(headers[5], version=0xFFFFFFFF)  # negative as int32
    body = headers_json(header)
    assert body["version"] == -1
    assert header_from_json(body) == header
    for broken, expected in (
        ({**body, "nonce": "1"}, "must be ints"),
        ({**body, "nonce": 1 << 32}, "32-bit"),
        ({**body, "merkleRoot": "zz"}, "malformed"),
        ({**body, "merkleRoot": 5}, "not a hex string"),
        ({k: v for k, v in body.items() if k != "prevBlockHash"}, "lacks 'prevBlockHash'"),
        ([body], "a JSON object"),
    ):
        with pytest.raises(ServiceAnswerError, match=expected):
            header_from_json(broken)


# --------------------------------------------------------------------------- mesh verify


def lying_testnet_service() -> Served:
    """A service claiming testnet: a chain over the checkpoint's heights, re-mined at
    trivial bits (it links, and nothing else)."""
    start = TESTNET.anchors()[-1].height - DAA_HISTORY
    first = mine(bytes(32), root_for(b"testnet liar", start), 1_600_000_000, 0x207FFFFF)
    headers = [first]
    for height in range(start + 1, start + 250):
        prev = headers[-1]
        headers.append(mine(prev.hash, root_for(b"liar", height), prev.time + 600, 0x207FFFFF))
    return Served(headers, start)


def test_mesh_verify_refuses_a_lying_service_with_its_reason(
    anchored: Anchored, tmp_path: Path
) -> None:
    proof = tmp_path / "proof.json"
    proof.write_text(anchored.proofs[("meter", 1)].to_json())
    served = lying_testnet_service()
    with serving(served) as url:
        result = mesh("verify", proof, "--network", "test", "--header-service", url)
        via_env = mesh("verify", proof, "--network", "test", env={"M2MESH_HEADER_SERVICE": url})
    checkpoint = TESTNET.anchors()[-1]
    for run in (result, via_env):
        assert run.returncode == 1 and run.stdout == ""
        assert run.stderr.count("\n") == 1, run.stderr
        assert run.stderr.startswith(
            f"mesh verify: error: --header-service {url}: does not connect to checkpoint at"
            f" height {checkpoint.height}: its header {checkpoint.height} is "
        ), run.stderr
        assert run.stderr.rstrip().endswith(f"not {checkpoint.hash_hex}")
    assert served.requests[1][1]["height"] == [str(checkpoint.height - DAA_HISTORY)]
    # Usage mistakes are one line too.
    for args, expected in (
        (("--network", "main", "--ledger", anchored.ledger), "--ledger holds a local chain"),
        (("--header-service", "http://127.0.0.1:9"), "needs --network main or --network test"),
        (("--network", "test"), "--network test needs --headers FILE or --header-service URL"),
        (("--network", "test", "--headers", anchored.headers_file), "a 'local' headers file"),
    ):
        run = mesh("verify", proof, *args, env={"M2MESH_HEADER_SERVICE": ""})
        assert run.returncode == 1 and expected in run.stderr, (args, run.stderr)
    # The local path works as before, and the help explains the networks.
    assert mesh("verify", proof, "--ledger", anchored.ledger).stdout.startswith("VALID block ")
    assert mesh("verify", proof, "--headers", anchored.headers_file).returncode == 0
    helped = mesh("verify", "--help").stdout
    assert "--network" in helped and "checkpoint" in helped and "--header-service" in helped


def test_mesh_verify_valid_against_a_service_and_the_heaviest_of_two(
    anchored: Anchored,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The toy rules stand in for testnet's, in this process only: an honest toy chain
    # whose block 301 holds the anchor transaction of a real proof (its BUMP re-stated
    # for height 301).
    params, headers = toy_chain()
    monkeypatch.setitem(NETWORK_PARAMS, "test", dataclasses.replace(params, name="test"))
    document = anchored.proofs[("meter", 1)].to_document()
    bump = MerklePath.from_hex(document["block"]["bump"])
    moved = MerklePath(301, bump.path)
    root = moved.compute_root(document["anchor"]["txid"])
    miner = Miner(params, list(headers[:301]))
    block = miner.next(600, root=bytes.fromhex(root)[::-1])
    miner.extend(9, 600)
    document["block"] = {"height": 301, "hash": block.hash_hex, "bump": moved.to_hex()}
    proof = tmp_path / "proof.json"
    proof.write_text(json.dumps(document))
    shorter = Miner(params, list(headers[:301])).extend(5, 600, b"short")
    remined = Miner(params, [genesis()]).extend(399, 600, b"liar").headers
    with (
        serving(Served(miner.headers, 0)) as good,
        serving(Served(shorter.headers, 0)) as weak,
        serving(Served(remined, 0)) as liar,
    ):
        code = main(["verify", str(proof), "--network", "test", "--header-service", liar,
                     "--header-service", weak, "--header-service", good])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("VALID block 301 ") and "stream meter seq 1" in lines[0]
    assert f"  checked   against --header-service {good}" in lines
    assert any(
        line.startswith(f"  trust     test headers 54..310: from checkpoint {CHECKPOINT} ")
        for line in lines
    ), out
    assert "  depth     10 confirmations (tip 310)" in lines
    assert err.startswith(f"refused --header-service {liar}: does not connect")
    # With only the weaker chain the block is not there: the proof's block is unknown.
    with serving(Served(shorter.headers, 0)) as weak:
        code = main(["verify", str(proof), "--network", "test", "--header-service", weak])
    out, _ = capsys.readouterr()
    assert code == 1 and out.startswith("INVALID header-unknown: ")
    # A trusted chain saved by `mesh proof --export-headers` verifies offline.
    saved = tmp_path / "test-headers.json"
    with serving(Served(miner.headers, 0)) as good:
        assert main(["proof", "--export-headers", str(saved), "--network", "test",
                     "--header-service", good]) == 0  # fmt: skip
    assert json.loads(saved.read_text())["network"] == "test"
    assert main(["verify", str(proof), "--headers", str(saved)]) == 0
    assert capsys.readouterr().out.startswith("VALID block 301 ")
    # A tampered header in the saved file is refused when it is loaded again.
    tampered = json.loads(saved.read_text())
    tampered["headers"] = [h.serialize().hex() for h in relink(
        [BlockHeader.parse(bytes.fromhex(x)) for x in tampered["headers"]], 54,
        lambda h, x: dataclasses.replace(x, time=x.time - 100_000_000) if h == 305 else x,
    )]  # fmt: skip
    saved.write_text(json.dumps(tampered))
    assert main(["verify", str(proof), "--headers", str(saved)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mesh verify: error: --headers {saved}: header 305 "), err
    assert "proof-of-work" in err or "median time" in err


def test_a_saved_local_chain_keeps_loading_as_before(anchored: Anchored) -> None:
    document = json.loads(anchored.headers_file.read_text())
    assert document["network"] == "local"
    chain = HeaderChain.load(anchored.headers_file)
    assert chain.network == "local" and chain.trust is None and chain.tip_height >= 2
