"""Record segments: append-only files that hold the bodies of signed records.

Why: a reading is ~450 bytes; committing it to SQLite on its own writes 18-22 KB
(whole WAL pages, then the checkpoint writes them again). The agent store
(`mesh.anchoring.store`) therefore keeps only a small index row per record and puts the
record itself -- body, signature, audience -- here, appended with one write(2) per
group commit: the bytes land on disk once. The index rows are folded into SQLite in
large groups, and a restart rebuilds any the crash lost from the segments' tails
(each segment's ``indexed_to`` offset says how far its index is known to reach).

Format: an 8-byte header ``M2SEG`` + version, then entries::

    length u32 | crc32 u32 of the payload | payload (length bytes)

The payload is opaque here (the store encodes records with MessagePack). Durability
is the store's: with ``sync`` each append is fdatasync'ed (the store's ``FULL``);
without, an append survives `kill -9` (it is in the page cache) and, like SQLite's WAL
with ``synchronous=NORMAL``, may be lost on power loss. A torn last entry fails its
length or CRC: scanning stops there and the writer truncates it before appending.

This module does blocking file I/O only; one writer per file, and the caller
serialises its use. It never interprets a payload. (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from mesh.errors import MeshError

MAGIC = b"M2SEG\x00\x00\x01"
HEADER = len(MAGIC)
_ENTRY = struct.Struct("<II")
MAX_ENTRY = 1 << 20
"""No entry is larger (a record's payload is at most 64 KiB)."""


class SegmentError(MeshError):
    """A segment file is not what it should be (wrong header, an entry that does not
    hold where the index says one starts)."""


def encode_entry(payload: bytes) -> bytes:
    """One entry: length, CRC, payload."""
    if len(payload) > MAX_ENTRY:
        raise SegmentError(f"entry of {len(payload)} bytes is too large")
    return _ENTRY.pack(len(payload), zlib.crc32(payload)) + payload


def scan(path: Path, start: int = HEADER) -> Iterator[tuple[int, int, bytes]]:
    """Entries from offset `start` on: (offset, end offset, payload), stopping at the
    first torn or damaged entry (the end of what was durably appended)."""
    with path.open("rb") as f:
        head = f.read(HEADER)
        if len(head) < HEADER and MAGIC.startswith(head):
            return  # created, killed before its header was whole: nothing in it yet
        if head != MAGIC:
            raise SegmentError(f"{path}: not a record segment")
        offset = max(start, HEADER)
        f.seek(offset)
        while True:
            head = f.read(_ENTRY.size)
            if len(head) < _ENTRY.size:
                return
            length, crc = _ENTRY.unpack(head)
            if length > MAX_ENTRY:
                return
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            end = offset + _ENTRY.size + length
            yield offset, end, payload
            offset = end


def read_entry(path: Path, offset: int) -> bytes:
    """The payload of the entry at `offset` (raises `SegmentError` if none holds there)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            head = f.read(_ENTRY.size)
            if len(head) < _ENTRY.size:
                raise SegmentError(f"{path}: no entry at offset {offset}")
            length, crc = _ENTRY.unpack(head)
            payload = f.read(min(length, MAX_ENTRY))
    except OSError as exc:
        raise SegmentError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise SegmentError(f"{path}: the entry at offset {offset} is damaged")
    return payload


class SegmentWriter:
    """Appends entries to one segment file (created with its header if missing)."""

    def __init__(self, path: Path, *, sync: bool = False, valid_to: int | None = None) -> None:
        """Open `path` for appending; `valid_to` (from a scan) cuts a torn tail first."""
        self.path = path
        self.sync = sync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(self._fd).st_size
            if size < HEADER:
                os.ftruncate(self._fd, 0)
                os.write(self._fd, MAGIC)
                size = HEADER
            elif valid_to is not None and valid_to < size:
                os.ftruncate(self._fd, valid_to)
                size = valid_to
            self._size = size
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def size(self) -> int:
        """Bytes in the file (the offset the next entry gets)."""
        return self._size

    def append(self, payloads: Sequence[bytes]) -> list[int]:
        """Append entries with one write; returns their offsets. On a failed write
        (a full disk) whatever part was written is cut off again before raising."""
        offsets: list[int] = []
        chunks: list[bytes] = []
        at = self._size
        for payload in payloads:
            offsets.append(at)
            entry = encode_entry(payload)
            chunks.append(entry)
            at += len(entry)
        data = b"".join(chunks)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if self.sync:
                os.fdatasync(self._fd)
        except OSError:
            os.ftruncate(self._fd, self._size)
            raise
        self._size = at
        return offsets

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


__all__ = [
    "HEADER",
    "MAGIC",
    "SegmentError",
    "SegmentWriter",
    "encode_entry",
    "read_entry",
    "scan",
]
