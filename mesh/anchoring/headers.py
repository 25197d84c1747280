"""Trusted block headers for offline verification: from a ledger file or a headers file.

A proof names a block by height and hash; a verifier needs a header chain it trusts to
look that block up. Two sources:

- a `LocalLedger` file (`HeaderChain.from_ledger_file`): its whole header chain;
- a **headers file** (JSON), written by `export_headers` / `mesh proof --export-headers`::

      {"m2mesh_headers": 1,
       "start_height": 0,
       "headers": ["<80-byte header, 160 hex>", ...]}

  ``headers[i]`` is the header at height ``start_height + i``. Each header must link to
  the one before it (``prev_hash``) and meet the proof-of-work target its own ``bits``
  encode; a chain starting above 0 (a checkpoint) is trusted from its first header.

Neither check makes a source trustworthy by itself: the local ledger mines at regtest
difficulty, so its headers are as good as the file they came from. Get the file from
the party you trust, as you would a checkpoint. For testnet/mainnet, export the headers
from a node you run, in the same format.

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

from mesh.anchoring.errors import HeadersError
from mesh.chain.errors import LedgerError
from mesh.chain.ledger import LocalLedger
from mesh.chain.merkle import HEADER_SIZE, BlockHeader
from mesh.store import StoreError

HEADERS_FORMAT = 1
MAX_HEADERS_FILE = 256 * 1024 * 1024


@dataclass(frozen=True)
class HeaderChain:
    """Headers trusted for offline verification, indexed by height."""

    start_height: int
    headers: tuple[BlockHeader, ...]
    source: str = ""

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

    @classmethod
    def checked(
        cls, headers: Sequence[BlockHeader], start_height: int = 0, source: str = ""
    ) -> HeaderChain:
        """A chain whose headers meet their targets and link; raises `HeadersError`."""
        where = source or "header chain"
        if not headers:
            raise HeadersError(f"{where}: no headers")
        for offset, header in enumerate(headers):
            height = start_height + offset
            if not header.meets_target():
                raise HeadersError(f"{where}: header {height} does not meet its proof-of-work")
            if offset and header.prev_hash != headers[offset - 1].hash:
                raise HeadersError(f"{where}: header {height} does not link to header {height - 1}")
        return cls(start_height, tuple(headers), source)

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
    def from_document(cls, document: Any, source: str = "headers file") -> HeaderChain:
        """Parse a headers document (the JSON object above); raises `HeadersError`."""
        if not isinstance(document, dict) or document.get("m2mesh_headers") != HEADERS_FORMAT:
            raise HeadersError(f"{source}: not an m2mesh headers file (version {HEADERS_FORMAT})")
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
        return cls.checked(headers, start, source)

    @classmethod
    def load(cls, path: Path) -> HeaderChain:
        """Read a headers file; any problem is one `HeadersError` naming the file."""
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
        return cls.from_document(document, source)


def export_headers(ledger: LocalLedger) -> dict[str, Any]:
    """The ledger's header chain as a headers document (see the module docstring)."""
    return {
        "m2mesh_headers": HEADERS_FORMAT,
        "start_height": 0,
        "headers": [h.serialize().hex() for h in ledger.headers()],
    }


def write_headers(ledger: LocalLedger, path: Path) -> int:
    """Write the ledger's headers file to `path` atomically; returns the tip height."""
    document = export_headers(ledger)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(document, indent=0) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(document["headers"]) - 1
