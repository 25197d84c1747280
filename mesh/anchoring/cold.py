"""Cold archive files: anchored records moved out of the agent store, still provable.

An agent that runs for months moves its mined batches past a retention horizon out of
SQLite into archive files in ``DATA_DIR/archive/`` (`ARCHIVE_DIR`). `write_cold` writes
one new file per call; `ColdArchive` finds a record's file through a small index, and
exports the same `Proof` the store would have (`mesh proof` falls back to it). What the
files hold, byte for byte, is `mesh.anchoring.coldcodec`'s: this module owns the files
and the directory.

**The index** ``cold.index`` lists each data file with the seq spans of the records it
holds: a lookup reads the index and then the header and one block of the file whose
spans cover the record; `streams` reads the index only. It is rewritten atomically
after each new data file, so a crash between the two leaves a data file the index does
not name: readers find such files by listing the directory, and read their headers. A
damaged or missing index is replaced by the headers the same way (the next write
rewrites it).

A damaged, truncated or unreadable file is a `ColdArchiveError` naming it, never a
traceback. This module does blocking file I/O on the archive directory only: it never
opens the agent store or the network, never reads a clock, and never encodes or decodes
a section itself (the codec does). (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mesh.anchoring.coldcodec import (
    FILE_NAME,
    PREAMBLE_SIZE,
    ColdArchiveError,
    ColdBatch,
    ColdRecord,
    Damaged,
    Entry,
    Listed,
    block_proof,
    block_proofs,
    decode_block,
    decode_header,
    decode_index,
    encode_file,
    encode_index,
    header_section,
    index_groups,
)
from mesh.anchoring.errors import RecordNotFound
from mesh.anchoring.proof import Proof
from mesh.anchoring.ranges import count_seqs, merge_ranges, within
from mesh.anchoring.record import SignedRecord

ARCHIVE_DIR = "archive"
"""Where an agent's archive files live, inside its data directory."""
INDEX_NAME = "cold.index"

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSummary:
    """A stream as `mesh proof --list` shows it: the store's own summaries
    (`mesh.anchoring.store.AnchorStore.streams`) and the archive's, side by side."""

    agent: str
    stream: str
    origin: str
    records: int
    anchored: list[tuple[int, int]]
    unanchored: int

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "agent": self.agent,
            "stream": self.stream,
            "origin": self.origin,
            "records": self.records,
            "anchored": [list(r) for r in self.anchored],
            "unanchored": self.unanchored,
        }


# --------------------------------------------------------------------------- files


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `path` so that readers see the old file or the whole new one, durably."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power loss
    finally:
        os.close(fd)


def _read_header(handle: BinaryIO, path: Path) -> list[Entry]:
    """The block entries of an open data file (checked against the file's size)."""
    length, crc = header_section(handle.read(PREAMBLE_SIZE), path)
    entries, offset = decode_header(handle.read(length), length, crc)
    actual = os.fstat(handle.fileno()).st_size
    if actual != offset:
        state = "truncated" if actual < offset else "has trailing bytes"
        raise Damaged(f"{state}: {actual} bytes, its header describes {offset}")
    return entries


def _read_block(
    handle: BinaryIO, entry: Entry, number: int
) -> tuple[ColdBatch, list[SignedRecord]]:
    handle.seek(entry.offset)
    return decode_block(handle.read(entry.length), entry, number)


@contextmanager
def _reading(path: Path) -> Iterator[BinaryIO]:
    """An archive file opened for reading; every failure is a `ColdArchiveError` naming it."""
    try:
        with open(path, "rb") as handle:
            yield handle
    except Damaged as exc:
        raise ColdArchiveError(f"damaged archive file ({exc})", path) from None
    except FileNotFoundError:
        raise ColdArchiveError("the archive file is missing (the index lists it)", path) from None
    except OSError as exc:
        raise ColdArchiveError(f"cannot read ({exc.strerror or exc})", path) from None


# --------------------------------------------------------------------------- writing


def write_cold(directory: Path, batches: Sequence[ColdBatch]) -> Path:
    """Write `batches` (mined, each holding together) to one new archive file; return it.

    Each batch is checked against its anchor transaction, root and paths, and read back
    through the reader's decoder, before anything is written; then the file is written
    atomically and durably (temporary file, fsync, rename, fsync of the directory), and
    the index after it the same way. Only once this returns may the caller delete the
    batches' rows. Raises `ColdArchiveError` for a batch that does not hold together or
    an archive directory that cannot be read, `OSError` when the disk refuses the write.
    The same batches written twice make the same file: its name is its content hash.
    """
    if not batches:
        raise ColdArchiveError("nothing to archive: no batches given")
    catalog = {item.name: item for item in ColdArchive(directory)._catalog()}
    listed, data = encode_file(batches)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / listed.name, data)
    catalog[listed.name] = listed
    _write_atomically(directory / INDEX_NAME, encode_index(catalog.values()))
    return directory / listed.name


def rebuild_index(directory: Path) -> Path:
    """Rewrite the index from the data files' headers alone (after files were removed
    by hand, or the index was damaged); raises `ColdArchiveError` naming a damaged file."""
    archive = ColdArchive(directory)
    listed = [archive._header_listing(name) for name in archive._names()]
    path = directory / INDEX_NAME
    _write_atomically(path, encode_index(listed))
    return path


# --------------------------------------------------------------------------- reading


class ColdArchive:
    """The archive files of one directory: proofs of archived records, and their ranges.

    Each call lists the directory and reads the index (parsed again only when it
    changed); a proof then reads the header and one block of the file that holds the
    record. `streams` and `agents_for` read nothing but the index.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._index_key: tuple[int, int, int] | None = None
        self._indexed: dict[str, Listed] = {}
        self._headers: dict[str, Listed] = {}
        self._warned = False

    def proof(self, agent: bytes, stream: str, seq: int) -> Proof:
        """The proof of an archived record; `RecordNotFound` when it is not archived."""
        batch, signed = self._find(agent, stream, seq)
        return block_proof(batch, signed, seq)

    def batch_proofs(self, agent: bytes, stream: str, seq: int) -> list[Proof]:
        """The proofs of every archived record of the batch that holds `seq`."""
        batch, signed = self._find(agent, stream, seq)
        return block_proofs(batch, signed)

    def streams(self) -> list[StreamSummary]:
        """Archived records per (agent, stream, origin) with their seq spans, as the store
        summarises its own (all anchored); reads only the index."""
        groups: dict[tuple[bytes, str, str], tuple[int, list[tuple[int, int]]]] = {}
        for listed in self._catalog():
            for g in listed.groups:
                records, spans = groups.get((g.agent, g.stream, g.origin), (0, []))
                groups[(g.agent, g.stream, g.origin)] = (records + g.records, [*spans, *g.spans])
        out: list[StreamSummary] = []
        for (agent, stream, origin), (records, spans) in groups.items():
            merged = merge_ranges(spans)
            if origin == "own":  # whole batches: one archived twice (a retried move) counts once
                records = count_seqs(merged)
            out.append(StreamSummary(agent.hex(), stream, origin, records, merged, 0))
        out.sort(key=lambda s: (s.stream, s.agent))
        out.sort(key=lambda s: s.origin, reverse=True)  # own first, as the store lists them
        return out

    def agents_for(self, stream: str) -> list[bytes]:
        """The agents whose records of `stream` are archived; reads only the index."""
        found: dict[bytes, None] = {}
        for listed in self._catalog():
            found.update((g.agent, None) for g in listed.groups if g.stream == stream)
        return list(found)

    # ---------------------------------------------------------------- internals

    def _names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if FILE_NAME.match(n))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ColdArchiveError(f"cannot list ({exc.strerror or exc})", self.directory) from None

    def _catalog(self) -> list[Listed]:
        """Every data file with what it holds: the index's entries, then the headers of
        files the index does not name (a writer stopped between its two renames)."""
        names = self._names()
        indexed = self._load_index(bool(names))
        return [*indexed.values(), *(self._header_listing(n) for n in names if n not in indexed)]

    def _header_listing(self, name: str) -> Listed:
        if name not in self._headers:  # names are content hashes: a header never changes
            path = self.directory / name
            with _reading(path) as handle:
                self._headers[name] = Listed(name, index_groups(_read_header(handle, path)))
        return self._headers[name]

    def _load_index(self, files_exist: bool) -> dict[str, Listed]:
        path = self.directory / INDEX_NAME
        try:
            stat = path.stat()
            key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if key != self._index_key:
                self._indexed = decode_index(path.read_bytes(), path)
                self._index_key = key
        except FileNotFoundError:
            self._index_key, self._indexed = None, {}
            if files_exist:
                self._warn(f"{path} is missing")
        except (Damaged, OSError) as exc:
            # The index only repeats the files' headers: read those instead.
            self._index_key, self._indexed = None, {}
            self._warn(f"{path} is unusable ({exc})")
        return self._indexed

    def _warn(self, problem: str) -> None:
        if not self._warned:
            self._warned = True
            _log.warning("%s: reading every archive file's header instead", problem)

    def _find(self, agent: bytes, stream: str, seq: int) -> tuple[ColdBatch, list[SignedRecord]]:
        """The decoded block that holds a record, read from the files whose index spans
        cover it (one, unless a kept batch was archived again with more records)."""
        for listed in self._catalog():
            if not any(
                (g.agent, g.stream) == (agent, stream) and within(seq, g.spans)
                for g in listed.groups
            ):
                continue
            path = self.directory / listed.name
            with _reading(path) as handle:
                for number, entry in enumerate(_read_header(handle, path)):
                    if (entry.agent, entry.stream) == (agent, stream) and within(seq, entry.held):
                        return _read_block(handle, entry, number)
        raise RecordNotFound(f"no record {stream}/{seq} of agent {agent.hex()} is archived")


__all__ = [
    "ARCHIVE_DIR",
    "ColdArchive",
    "ColdArchiveError",
    "ColdBatch",
    "ColdRecord",
    "StreamSummary",
    "rebuild_index",
    "write_cold",
]
