"""The payment journal: the durable write of the payment hot path.

A payment or an acknowledgement changes five fields of a channel's row: ``seq``,
``total``, ``payer_sig``, ``acked_seq`` and ``acked_total`` (`Hot`). As an SQLite
transaction that write costs ~50 us in a tight loop and 150-250 us inside an agent
(cold caches, on a 2-core VM); appended to this file it is one write(2). The
channel store (`mesh.channel.store`) appends such changes here and folds the
journal back into its table now and then (a checkpoint); every other change goes
to the table directly.

Reading merges by the rule that makes replays harmless: each of the pairs
(seq, total, payer_sig) and (acked_seq, acked_total) only ever grows, so a journal
entry wins over the table only where its seq (or acked_seq) is higher. Replaying a
journal that a checkpoint already folded in changes nothing; so a crash between
the checkpoint's commit and the journal's truncation loses nothing.

Format: fixed 142-byte records, appended in commit order (the last one for a
channel is its latest)::

    channel_id 32 | seq u64 | total u64 | acked_seq u64 | acked_total u64 |
    sig_len u8 | payer_sig (73 bytes, zero-padded) | crc32 u32 of the rest

Durability is the store's: a write survives `kill -9` (it is in the page cache)
and, like SQLite's WAL with ``synchronous=NORMAL``, may be lost on power loss;
with ``sync=True`` each append is fdatasync'ed (the store's ``FULL``). A torn
last record (power loss mid-write) fails its CRC: reading stops there, and the
next writer truncates it before appending. Entries an earlier writer left (a run
that stopped before its next checkpoint) are kept by the next one as `leftover`, so
the checkpoint that empties the file can fold them in first. This module does
blocking file I/O only; the caller serialises its use (one writer per file).
(docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from mesh.channel.state import Record

SIG_MAX = 73
"""Longest signature a record holds (strict DER is at most 72 bytes)."""
_BODY = struct.Struct(f"<32sQQQQB{SIG_MAX}s")
_CRC = struct.Struct("<I")
RECORD_SIZE = _BODY.size + _CRC.size
U64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Hot:
    """The fields of a channel record that payments and acknowledgements change."""

    seq: int
    total: int
    payer_sig: bytes
    acked_seq: int
    acked_total: int

    @classmethod
    def of(cls, record: Record) -> Hot:
        """The hot fields of `record`."""
        return cls(record.seq, record.total, record.payer_sig, record.acked_seq, record.acked_total)

    def fits(self) -> bool:
        """Whether a journal record can hold these values."""
        return len(self.payer_sig) <= SIG_MAX and all(
            0 <= n <= U64_MAX for n in (self.seq, self.total, self.acked_seq, self.acked_total)
        )

    def merged_into(self, record: Record) -> Record:
        """`record` with whichever of our two pairs is newer than its own."""
        payment = self.seq > record.seq
        ack = self.acked_seq > record.acked_seq
        if not (payment or ack):
            return record
        if payment:
            record = record.with_payment(self.seq, self.total, self.payer_sig)
        if ack:
            record = record.with_ack(self.acked_seq, self.acked_total)
        return record


def encode_record(channel_id: bytes, hot: Hot) -> bytes:
    """One journal record (the caller checked `hot.fits()`)."""
    body = _BODY.pack(
        channel_id,
        hot.seq,
        hot.total,
        hot.acked_seq,
        hot.acked_total,
        len(hot.payer_sig),
        hot.payer_sig,
    )
    return body + _CRC.pack(zlib.crc32(body))


def parse(data: bytes) -> tuple[dict[bytes, Hot], int]:
    """The latest hot fields of each channel in journal bytes, and how many leading
    bytes are whole, valid records (reading stops at the first that is not)."""
    latest: dict[bytes, Hot] = {}
    end = len(data) - len(data) % RECORD_SIZE
    pos = 0
    while pos < end:
        body = data[pos : pos + _BODY.size]
        (crc,) = _CRC.unpack_from(data, pos + _BODY.size)
        if zlib.crc32(body) != crc:
            break
        cid, seq, total, acked_seq, acked_total, sig_len, sig = _BODY.unpack(body)
        if sig_len > SIG_MAX:
            break
        latest[cid] = Hot(seq, total, sig[:sig_len], acked_seq, acked_total)
        pos += RECORD_SIZE
    return latest, pos


def read(path: Path) -> dict[bytes, Hot]:
    """The latest hot fields of each channel in the journal at `path` (none if absent)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    return parse(data)[0]


class Journal:
    """The append side of one journal file (opened on the first append)."""

    def __init__(self, path: Path, *, sync: bool) -> None:
        self.path = path
        self._sync = sync
        self._fd: int | None = None
        self._size = 0
        self._leftover: dict[bytes, Hot] = {}

    def size(self) -> int:
        """Bytes of valid records in the file (0 before the first append)."""
        return self._size

    def append(self, entries: list[tuple[bytes, Hot]]) -> None:
        """Append one record per (channel_id, hot) in one write; raises `OSError`."""
        data = b"".join(encode_record(cid, hot) for cid, hot in entries)
        fd = self._open()
        written = os.write(fd, data)
        if written != len(data):  # a full disk: drop the partial record, then fail
            os.ftruncate(fd, self._size)
            raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
        if self._sync:
            os.fdatasync(fd)
        self._size += written

    def leftover(self) -> dict[bytes, Hot]:
        """The latest entry of each channel that the file held when this writer opened
        it (an earlier run's, perhaps never folded into the table); opens an existing
        file to read them. Raises `OSError`."""
        if self._fd is None and self.path.exists():
            self._open()
        return self._leftover

    def clear(self) -> None:
        """Empty the journal (after a checkpoint made its content redundant), an
        earlier run's file too; raises `OSError`."""
        if self._fd is None:
            if not self.path.exists():
                return
            self._open()
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        if self._sync:
            os.fdatasync(self._fd)
        self._size = 0
        self._leftover = {}

    def close(self) -> None:
        """Close the file (reopened by the next append)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                leftover, valid = parse(os.pread(fd, os.fstat(fd).st_size, 0))
                os.ftruncate(fd, valid)  # a torn or corrupt tail would misalign us
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._size, self._leftover = fd, valid, leftover
        return self._fd


__all__ = ["RECORD_SIZE", "SIG_MAX", "Hot", "Journal", "encode_record", "parse", "read"]
