"""Trusted block headers for offline verification: from a ledger file or a headers file.

A proof names a block by height and hash; a verifier needs a header chain it trusts to
look that block up. Two sources:

- a `LocalLedger` file (`HeaderChain.from_ledger_file`): its whole header chain;
- a **headers file** (JSON), written by `export_headers` / `mesh proof --export-headers`::

      {"m2mesh_headers": 1,
       "network": "local" | "main" | "test",     (optional: absent, the reader's choice)
       "start_height": 0,
       "headers": ["<80-byte header, 160 hex>", ...]}

  ``headers[i]`` is the header at height ``start_height + i``.

How much a chain is trusted depends on its network (`HeaderChain.checked`):

- **local** (a `LocalLedger`, regtest-like, each with its own genesis): each header
  must link to the one before it (``prev_hash``) and meet the proof-of-work target its
  own ``bits`` encode; a chain starting above 0 is trusted from its first header. That
  makes it as good as the file it came from: get the file from a party you trust.
- **main** / **test**: the chain must connect to a checkpoint shipped with the package
  and every header above it must pass BSV's consensus rules (difficulty adjustment,
  proof of work, median time past, no more than two hours ahead of ``now``):
  `mesh.anchoring.header_rules`. A re-mined or backdated chain is refused with the
  reason. Of several such chains, `best_chain` picks the one with the most work.
  A local chain whose header 0 is a real network's genesis is refused: check it with
  that network's rules.

This module owns the headers file format and the loading of both sources; it reads
files but writes only when asked to export. (docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.anchoring.checkpoints import NETWORK_PARAMS
from mesh.anchoring.errors import HeaderRejected, HeadersError
from mesh.anchoring.header_rules import NetworkParams, Trust, block_proof, judge_chain
from mesh.chain.errors import LedgerError
from mesh.chain.ledger import LocalLedger
from mesh.chain.merkle import HEADER_SIZE, BlockHeader
from mesh.store import StoreError

HEADERS_FORMAT = 1
MAX_HEADERS_FILE = 256 * 1024 * 1024
LOCAL = "local"
"""The network of a `LocalLedger`'s headers: checked for links and proof of work only."""
NETWORK_NAMES = (LOCAL, *NETWORK_PARAMS)


@dataclass(frozen=True)
class HeaderChain:
    """Headers trusted for offline verification, indexed by height.

    `network` is ``"local"`` or the real network whose rules the chain passed; `trust`
    then says which checkpoint it builds on and how much work it holds.
    """

    start_height: int
    headers: tuple[BlockHeader, ...]
    source: str = ""
    network: str = LOCAL
    trust: Trust | None = None

    def at(self, height: int) -> BlockHeader | None:
        """The header at `height`, if this chain covers it."""
        index = height - self.start_height
        if 0 <= index < len(self.headers):
            return self.headers[index]
        return None

    @property
    def tip_height(self) -> int:
        """The height of the last header."""
        return self.start_height + len(self.headers) - 1

    @property
    def cumulative_work(self) -> int:
        """The work of all the chain's headers (`block_proof` of each, summed)."""
        if self.trust is not None:
            return self.trust.cumulative_work
        return self.work_from(self.start_height)

    def work_from(self, height: int) -> int:
        """The work of the chain's headers at `height` and above."""
        first = max(0, height - self.start_height)
        return sum(block_proof(h.bits) for h in self.headers[first:])

    def describe_trust(self) -> str:
        """One line on why these headers are trusted, for people."""
        span = f"headers {self.start_height}..{self.tip_height}"
        if self.trust is None:
            return f"local {span}: linked, each meets its own bits (no checkpoint)"
        cp = self.trust.checkpoint
        return (
            f"{self.network} {span}: from checkpoint {cp.height} {cp.hash_hex[:16]}…,"
            f" {self.trust.judged} above it checked by the consensus rules,"
            f" cumulative work {self.cumulative_work:#x}"
        )

    @classmethod
    def checked(
        cls,
        headers: Sequence[BlockHeader],
        start_height: int = 0,
        source: str = "",
        *,
        network: str | NetworkParams = LOCAL,
        now: float | None = None,
    ) -> HeaderChain:
        """A chain checked by the rules of `network`; raises `HeadersError`.

        ``"local"``: the headers link and meet their own targets. A real network
        (``"main"``, ``"test"``, or test parameters): `judge_chain` at time `now`,
        which must be given; its refusals are `HeaderRejected` naming the rule.
        """
        where = source or "header chain"
        if not headers:
            raise HeadersError(f"{where}: no headers")
        if network == LOCAL:
            return cls._checked_local(headers, start_height, source, where)
        params = network if isinstance(network, NetworkParams) else _params(network, where)
        if now is None:
            raise ValueError("checking a real network's headers needs `now`")
        try:
            trust = judge_chain(headers, start_height, params, now)
        except HeaderRejected as exc:
            raise HeaderRejected(exc.rule, f"{where}: {exc.detail}", exc.height) from None
        return cls(start_height, tuple(headers), source, params.name, trust)

    @classmethod
    def _checked_local(
        cls, headers: Sequence[BlockHeader], start_height: int, source: str, where: str
    ) -> HeaderChain:
        if start_height == 0:
            for params in NETWORK_PARAMS.values():
                if headers[0].hash_hex == params.genesis_hash:
                    raise HeadersError(
                        f"{where}: these are {params.name} network headers; check them by"
                        f" its rules (network {params.name!r}), not as a local chain"
                    )
        for offset, header in enumerate(headers):
            height = start_height + offset
            if not header.meets_target():
                raise HeadersError(f"{where}: header {height} does not meet its proof-of-work")
            if offset and header.prev_hash != headers[offset - 1].hash:
                raise HeadersError(f"{where}: header {height} does not link to header {height - 1}")
        return cls(start_height, tuple(headers), source)

    def to_document(self) -> dict[str, Any]:
        """This chain as a headers document (see the module docstring)."""
        return {
            "m2mesh_headers": HEADERS_FORMAT,
            "network": self.network,
            "start_height": self.start_height,
            "headers": [h.serialize().hex() for h in self.headers],
        }

    @classmethod
    def from_ledger(cls, ledger: LocalLedger) -> HeaderChain:
        """The whole header chain of an open ledger."""
        return cls.checked(ledger.headers(), 0, str(ledger.path))

    @classmethod
    def from_ledger_file(cls, path: Path) -> HeaderChain:
        """Open a ledger file just long enough to read its header chain."""
        try:
            with LocalLedger.open(path) as ledger:
                return cls.from_ledger(ledger)
        except (LedgerError, StoreError) as exc:
            raise HeadersError(f"--ledger {path}: {exc}") from None

    @classmethod
    def from_document(
        cls,
        document: Any,
        source: str = "headers file",
        *,
        network: str | NetworkParams | None = None,
        now: float | None = None,
    ) -> HeaderChain:
        """Parse a headers document (the JSON object above) and check it by the rules of
        `network` (default: the document's ``network``, else local); raises
        `HeadersError`, also when the document names another network."""
        if not isinstance(document, dict) or document.get("m2mesh_headers") != HEADERS_FORMAT:
            raise HeadersError(f"{source}: not an m2mesh headers file (version {HEADERS_FORMAT})")
        declared = document.get("network")
        if declared is not None and not isinstance(declared, str):
            raise HeadersError(f"{source}: network must be a string")
        wanted = network.name if isinstance(network, NetworkParams) else network
        if None not in (wanted, declared) and declared != wanted:
            raise HeadersError(f"{source}: a {declared!r} headers file, not {wanted!r}")
        start = document.get("start_height", 0)
        raw = document.get("headers")
        if type(start) is not int or start < 0:
            raise HeadersError(f"{source}: start_height must be a non-negative integer")
        if not isinstance(raw, list):
            raise HeadersError(f"{source}: headers must be a list of hex strings")
        headers = []
        for i, text in enumerate(raw):
            try:
                if not isinstance(text, str) or len(text) != 2 * HEADER_SIZE:
                    raise ValueError(f"not {HEADER_SIZE} bytes of hex")
                headers.append(BlockHeader.parse(bytes.fromhex(text)))
            except ValueError as exc:
                raise HeadersError(f"{source}: header {start + i}: {exc}") from None
        rules = (declared or LOCAL) if network is None else network
        return cls.checked(headers, start, source, network=rules, now=now)

    @classmethod
    def load(
        cls, path: Path, *, network: str | NetworkParams | None = None, now: float | None = None
    ) -> HeaderChain:
        """Read a headers file and check it (`from_document`); any problem is one
        `HeadersError` naming the file."""
        source = f"--headers {path}"
        try:
            if path.stat().st_size > MAX_HEADERS_FILE:
                raise HeadersError(f"{source}: larger than {MAX_HEADERS_FILE} bytes")
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise HeadersError(f"{source}: no such file") from None
        except IsADirectoryError:
            raise HeadersError(f"{source}: is a directory") from None
        except PermissionError:
            raise HeadersError(f"{source}: permission denied") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HeadersError(f"{source}: not JSON ({exc})") from None
        return cls.from_document(document, source, network=network, now=now)


def best_chain(chains: Sequence[HeaderChain]) -> HeaderChain:
    """Of chains of one network, the one with the most work; the first on a tie.

    Work is counted from the highest start height among them: below it the chains
    that connect to the same checkpoint hold the same headers (they hash-link into
    it), so only what lies above can differ.
    """
    if not chains:
        raise ValueError("no chains to choose from")
    if len({c.network for c in chains}) != 1:
        raise ValueError("chains of different networks cannot be compared")
    common = max(c.start_height for c in chains)
    return max(chains, key=lambda c: c.work_from(common))


def _params(network: str, where: str) -> NetworkParams:
    try:
        return NETWORK_PARAMS[network]
    except KeyError:
        raise HeadersError(
            f"{where}: unknown network {network!r} (one of {', '.join(NETWORK_NAMES)})"
        ) from None


def export_headers(ledger: LocalLedger) -> dict[str, Any]:
    """The ledger's header chain as a headers document (see the module docstring)."""
    return {
        "m2mesh_headers": HEADERS_FORMAT,
        "network": LOCAL,
        "start_height": 0,
        "headers": [h.serialize().hex() for h in ledger.headers()],
    }


def write_headers(ledger: LocalLedger, path: Path) -> int:
    """Write the ledger's headers file to `path` atomically; returns the tip height."""
    return _write_document(export_headers(ledger), path)


def save_chain(chain: HeaderChain, path: Path) -> int:
    """Write a checked chain (e.g. one fetched from a header service) as a headers file,
    atomically; returns the tip height. Loading it checks it again."""
    return _write_document(chain.to_document(), path)


def _write_document(document: dict[str, Any], path: Path) -> int:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(document, indent=0) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return int(document["start_height"]) + len(document["headers"]) - 1
