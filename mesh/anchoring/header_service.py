"""Fetch a real network's headers from a Block Headers Service, then trust them by the rules.

A Block Headers Service (bitcoin-sv's ``block-headers-service``) answers

- ``GET {url}/api/v1/chain/tip/longest``: ``{"header": {...}, "height": int, ...}``;
- ``GET {url}/api/v1/chain/header/byHeight?height=H&count=N``: a list of headers at
  heights H..H+N-1, each ``{"hash", "version", "prevBlockHash", "merkleRoot",
  "creationTimestamp", "difficultyTarget", "nonce", "work"}`` (hashes in display hex,
  ``difficultyTarget`` the compact bits). The list carries no heights, and may hold
  headers of stale forks at the same heights, in any order.

`fetch_chain` asks for the tip, picks the checkpoint the chain will build on
(`NetworkParams.anchor_below`), fetches every header from 146 below it to the tip in
pages, walks back from the tip by ``prevBlockHash`` (which leaves stale headers out),
and hands the result to `HeaderChain.checked`: the service is trusted for nothing, a
service that lies is refused with the reason (`HeaderRejected`), and ``work`` and the
stated hashes are recomputed, never believed.

No host is named here: the URL comes from the caller (``--header-service URL`` or
``$M2MESH_HEADER_SERVICE``); a service that wants a token gets it as a bearer token
(``$M2MESH_HEADER_SERVICE_TOKEN``, read by the command line). The parsing and the walk
are pure functions; `HeaderService` is the thin blocking shell (``urllib``), meant for
the command line, never for an agent's event loop. (docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mesh.anchoring.errors import HeaderRejected, HeadersError
from mesh.anchoring.header_rules import DAA_HISTORY, NetworkParams
from mesh.anchoring.headers import HeaderChain
from mesh.chain.merkle import BlockHeader, internal

ENV_URL = "M2MESH_HEADER_SERVICE"
ENV_TOKEN = "M2MESH_HEADER_SERVICE_TOKEN"
API_PREFIX = "/api/v1"
PAGE = 2000
"""Headers asked for per request."""
TIMEOUT = 30.0
MAX_BYTES_PER_HEADER = 2048
"""A page larger than this per header asked (plus 64 KiB) is refused unread."""


class ServiceAnswerError(HeadersError):
    """A header service's answer is not what the API describes."""


# --------------------------------------------------------------------------- pure


def header_from_json(item: Any) -> BlockHeader:
    """One header of the service's JSON; its stated ``hash`` must be its real hash."""
    if not isinstance(item, Mapping):
        raise ServiceAnswerError(f"a header is a JSON object, got {type(item).__name__}")
    try:
        fields = [
            item["version"],
            item["creationTimestamp"],
            item["difficultyTarget"],
            item["nonce"],
        ]
        if any(type(f) is not int for f in fields):
            raise ValueError("version, creationTimestamp, difficultyTarget, nonce must be ints")
        version, time, bits, nonce = fields
        if not -(1 << 31) <= version < 1 << 32 or not all(
            0 <= f < 1 << 32 for f in (time, bits, nonce)
        ):
            raise ValueError("a field is out of its 32-bit range")
        header = BlockHeader(
            version & 0xFFFFFFFF,
            internal(_text(item, "prevBlockHash")),
            internal(_text(item, "merkleRoot")),
            time,
            bits,
            nonce,
        )
        stated = _text(item, "hash")
    except KeyError as exc:
        raise ServiceAnswerError(f"a header lacks {exc.args[0]!r}") from None
    except ValueError as exc:
        raise ServiceAnswerError(f"a header is malformed ({exc})") from None
    if header.hash_hex != stated.lower():
        raise ServiceAnswerError(f"header {stated} hashes to {header.hash_hex}")
    return header


def tip_from_json(answer: Any) -> tuple[int, BlockHeader]:
    """The height and header of the service's longest-chain tip."""
    if not isinstance(answer, Mapping) or type(answer.get("height")) is not int:
        raise ServiceAnswerError("the tip is not an object with an integer height")
    height = answer["height"]
    if height < 0:
        raise ServiceAnswerError(f"the tip height {height} is negative")
    return height, header_from_json(answer.get("header"))


def walk_back(
    tip: BlockHeader, tip_height: int, start_height: int, found: Mapping[bytes, BlockHeader]
) -> list[BlockHeader]:
    """The chain from `start_height` to the tip, following ``prev_hash`` down through
    the headers `found` (by hash); headers off that path are ignored."""
    chain = [tip]
    for height in range(tip_height - 1, start_height - 1, -1):
        parent = found.get(chain[-1].prev_hash)
        if parent is None:
            raise ServiceAnswerError(
                f"no header at height {height} that header {height + 1} links to"
            )
        chain.append(parent)
    chain.reverse()
    return chain


def start_for(params: NetworkParams, tip_height: int) -> int:
    """The first height to fetch: `DAA_HISTORY` below the checkpoint the chain builds on."""
    anchor = params.anchor_below(tip_height)
    if anchor is None:
        first = params.anchors()[0]
        raise HeaderRejected(
            "checkpoint",
            f"does not connect to checkpoint at height {first.height}"
            f" (the service's tip is at height {tip_height})",
        )
    return max(0, anchor.height - DAA_HISTORY)


def pages(start: int, stop: int, size: int = PAGE) -> Iterable[tuple[int, int]]:
    """``(height, count)`` requests covering heights start..stop inclusive."""
    for height in range(start, stop + 1, size):
        yield height, min(size, stop + 1 - height)


def base_url(url: str) -> str:
    """The service's root URL (an ``/api/v1`` suffix and trailing slashes dropped)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise HeadersError(f"--header-service {url}: not an http(s) URL")
    root = url.rstrip("/")
    return root[: -len(API_PREFIX)] if root.endswith(API_PREFIX) else root


def _text(item: Mapping[str, Any], key: str) -> str:
    value = item[key]
    if not isinstance(value, str):
        raise ServiceAnswerError(f"a header's {key} is not a hex string")
    return value


# --------------------------------------------------------------------------- shell

Opener = Callable[[urllib.request.Request, float], Any]


def _urlopen(request: urllib.request.Request, timeout: float) -> Any:
    # `base_url` admits http(s) only, so no file: or other scheme reaches urlopen.
    return urllib.request.urlopen(request, timeout=timeout)


class HeaderService:
    """A Block Headers Service at `url`: blocking calls, each one request."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = TIMEOUT,
        opener: Opener = _urlopen,
    ) -> None:
        self.url = url
        self.root = base_url(url)
        self.token = token
        self.timeout = timeout
        self._open = opener

    def get(self, path: str, query: Mapping[str, int] | None = None, limit: int = 1 << 20) -> Any:
        """GET ``/api/v1{path}`` as JSON; any failure is one `HeadersError`."""
        target = f"{self.root}{API_PREFIX}{path}"
        if query:
            target += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(target, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        where = f"--header-service {self.url}"
        try:
            with self._open(request, self.timeout) as response:
                body = response.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise HeadersError(f"{where}: HTTP {exc.code} for {path}") from None
        except urllib.error.URLError as exc:
            raise HeadersError(f"{where}: cannot reach it ({exc.reason})") from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, cut answers
            raise HeadersError(f"{where}: {exc or type(exc).__name__}") from None
        if len(body) > limit:
            raise HeadersError(f"{where}: the answer to {path} is larger than {limit} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise HeadersError(f"{where}: the answer to {path} is not JSON") from None

    def tip(self) -> tuple[int, BlockHeader]:
        """The longest chain's tip: its height and header."""
        return tip_from_json(self.get("/chain/tip/longest"))

    def headers(self, height: int, count: int) -> list[BlockHeader]:
        """The headers the service holds at heights height..height+count-1 (stale
        forks included, in the service's order)."""
        limit = count * MAX_BYTES_PER_HEADER + 65536
        answer = self.get("/chain/header/byHeight", {"height": height, "count": count}, limit)
        if not isinstance(answer, list):
            raise ServiceAnswerError("byHeight did not answer a list")
        return [header_from_json(item) for item in answer]


def fetch_chain(
    service: HeaderService,
    network: NetworkParams,
    now: float,
    *,
    page: int = PAGE,
    progress: Callable[[int, int], None] | None = None,
) -> HeaderChain:
    """The service's longest chain from 146 below a checkpoint to its tip, trusted by
    the rules of `network` at time `now`; `HeadersError` (a `HeaderRejected` when the
    chain breaks a rule) otherwise. `progress(height, tip)` is told after each page."""
    where = f"--header-service {service.url}"
    try:
        tip_height, tip = service.tip()
        start = start_for(network, tip_height)
        found: dict[bytes, BlockHeader] = {}
        for height, count in pages(start, tip_height, page):
            for header in service.headers(height, count):
                found[header.hash] = header
            if progress is not None:
                progress(height + count - 1, tip_height)
        chain = walk_back(tip, tip_height, start, found)
    except HeaderRejected as exc:
        raise HeaderRejected(exc.rule, f"{where}: {exc.detail}", exc.height) from None
    except ServiceAnswerError as exc:
        raise ServiceAnswerError(f"{where}: {exc}") from None
    return HeaderChain.checked(chain, start, where, network=network, now=now)
