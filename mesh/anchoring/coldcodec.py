"""The cold archive's codec: archive files and their index as bytes, without touching either.

`mesh.anchoring.cold` keeps anchored records past a retention horizon in archive files
and finds them again through an index; this module turns batches into those files'
bytes and bytes back into batches, entries and proofs.

**A data file** (``cold-<lowest block height>-<16 hex of its SHA-256>.m2c``)::

    preamble  b"M2MCOLD\\n" | format u16 | header length u32 | CRC-32 of the header
    header    zlib(MessagePack [entry, ...]), one entry per batch:
              [agent, stream, origin, first_seq, last_seq, held, length, crc32]
              (``held``: the archived seqs as flat [first, last, ...] ranges)
    blocks    one per batch, back to back in header order; each is zlib(MessagePack
              [[origin, agent, stream, first_seq, last_seq, root, anchor tx, block height,
                block hash, BUMP], [seqs, timestamps, payloads, prevs, signatures, paths]])

A block stores its records column by column and drops what it can rebuild: agent,
stream and record version (the batch's), seq (implied in an own batch, which holds
every record; deltas in a kept one), ``prev`` where it is the hash of the record just
before it in the block, the record hash, and the DER framing of signatures (64 bytes
r || s each, all in one string, `mesh.anchoring.compactsig`; a block whose signatures
are not all strict DER keeps them as they are). Timestamps are deltas. Bodies are
canonical (`mesh.anchoring.record`), so the fields rebuild the exact bytes that were
signed; `encode_file` decodes every block it encodes, to be sure. An own record's
Merkle path is rebuilt from the batch's leaves; a kept record's is kept as the store
held it.

**The index** (b"M2MCIDX\\n", same preamble, then zlib(MessagePack)) lists each data
file with, per (agent, stream, origin), how many records it holds and the seq spans
they lie in (per batch, so it grows with batches, never with records; see `Group`).

Every section has a CRC-32: damaged or truncated bytes raise `Damaged` (the caller
names the file) or `ColdArchiveError`, never a traceback. The CRCs catch damage, not
forgery; a forged record fails `verify_proof` like any other. This module is bytes in,
values out: it never opens a file or lists a directory (``os`` is not imported), and
never reads a clock or the network. (docs/ARCHITECTURE.md §7)
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack

from mesh.anchoring.batch import batch_levels, batch_path, batch_root, path_depth, root_from_path
from mesh.anchoring.compactsig import compact_signature, der_signature
from mesh.anchoring.errors import AnchoringError, RecordError
from mesh.anchoring.payload import AnchorFormatError, find_anchor
from mesh.anchoring.proof import Proof, make_proof
from mesh.anchoring.ranges import count_seqs, merge_ranges
from mesh.anchoring.receipt import split_path
from mesh.anchoring.record import MAX_SIGNATURE, Record, SignedRecord, decode_record, record_hash
from mesh.chain.errors import TxRejected
from mesh.chain.tx import parse_exact, txid_of

FORMAT = 1
MAX_SECTION = 256 * 1024 * 1024
"""The most bytes one header, block or index inflates to (a damaged length cannot
make a reader allocate more)."""

_MAGIC = b"M2MCOLD\n"
_INDEX_MAGIC = b"M2MCIDX\n"
_PREAMBLE = struct.Struct(">8sHII")
PREAMBLE_SIZE = _PREAMBLE.size
"""Bytes before a data file's or the index's first section."""
FILE_NAME = re.compile(r"cold-[0-9]{9,}-[0-9a-f]{16}\.m2c\Z")
"""A data file's name (see above); anything else in the directory is not one."""
_ORIGINS = ("own", "kept")
# A block is [the batch's fields, less txid and records; the records' columns].
_BATCH_FIELDS = (
    "origin",
    "agent",
    "stream",
    "first_seq",
    "last_seq",
    "root",
    "raw",
    "block_height",
    "block_hash",
    "bump",
)
_BATCH_KINDS = (str, bytes, str, int, int, bytes, bytes, int, str, bytes)
_NONE = type(None)
_COLUMNS = ((list, _NONE), list, list, list, (bytes, list), (list, _NONE))
_Kind = type | tuple[type, ...]


class ColdArchiveError(AnchoringError):
    """An archive file or the index cannot be used (damaged, truncated, missing,
    unreadable), or a batch cannot be archived because it does not hold together.

    `path` names the file when there is one.
    """

    def __init__(self, detail: str, path: Path | None = None) -> None:
        super().__init__(detail if path is None else f"{path}: {detail}")
        self.detail = detail
        self.path = path


@dataclass(frozen=True)
class ColdRecord:
    """One record to archive, as the store holds it.

    `path` is a kept record's Merkle path exactly as ``anchor_records.path`` holds it
    (concatenated 32-byte entries); None for an own record (rebuilt from the leaves).
    """

    seq: int
    body: bytes
    signature: bytes
    path: bytes | None = None


@dataclass(frozen=True)
class ColdBatch:
    """One mined batch to archive: the anchor, where it was mined, and its records.

    An own batch holds every record ``first_seq..last_seq`` in seq order; a kept batch
    the records the buyer holds (each with its path), in seq order.
    """

    agent: bytes
    stream: str
    origin: str
    first_seq: int
    last_seq: int
    root: bytes
    txid: str
    raw: bytes
    block_height: int
    block_hash: str
    bump: bytes
    records: tuple[ColdRecord, ...]


@dataclass(frozen=True)
class Entry:
    """A data file header's entry for one batch (where its block is)."""

    agent: bytes
    stream: str
    origin: str
    first_seq: int
    last_seq: int
    held: tuple[tuple[int, int], ...]
    offset: int
    length: int
    crc: int


@dataclass(frozen=True)
class Group:
    """The index's view of a file: one (agent, stream, origin), how many of its records
    the file holds, and the seq spans they lie in (merged batch spans for own records;
    for kept ones, per batch the first to the last seq held, as the store lists them:
    the index grows with batches, never with records)."""

    agent: bytes
    stream: str
    origin: str
    records: int
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Listed:
    """One data file as the index lists it."""

    name: str
    groups: tuple[Group, ...]


class Damaged(Exception):
    """Bytes that passed no check; the caller names the file."""


# --------------------------------------------------------------------------- helpers


def _flat(ranges: Iterable[tuple[int, int]]) -> list[int]:
    return [n for pair in ranges for n in pair]


def _pairs(flat: list[Any]) -> tuple[tuple[int, int], ...]:
    values = _column(flat, int, "seq ranges")
    pairs = tuple(zip(values[::2], values[1::2], strict=True)) if len(values) % 2 == 0 else None
    if pairs is None or any(a > b for a, b in pairs):
        raise Damaged("a seq range ends before it starts")
    return pairs


def _fields(value: Any, kinds: Sequence[_Kind], what: str) -> list[Any]:
    """`value` as a list of exactly `len(kinds)` values of those exact types."""
    if type(value) is not list or len(value) != len(kinds):
        raise Damaged(f"{what} is not a list of {len(kinds)} fields")
    for i, (item, kind) in enumerate(zip(value, kinds, strict=True)):
        if type(item) not in (kind if isinstance(kind, tuple) else (kind,)):
            raise Damaged(f"{what}: field {i} is {type(item).__name__}")
    return value


def _column(value: list[Any], kind: _Kind, what: str) -> list[Any]:
    """A list whose every item has type `kind`."""
    return _fields(value, [kind] * len(value), what)


def _pack(document: object) -> bytes:
    return zlib.compress(msgpack.packb(document, use_bin_type=True), 9)


def _unpack(data: bytes) -> Any:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, MAX_SECTION)
    except zlib.error as exc:
        raise Damaged(f"does not inflate ({exc})") from None
    if inflater.unconsumed_tail:
        raise Damaged(f"inflates to more than {MAX_SECTION} bytes")
    if not inflater.eof or inflater.unused_data:
        raise Damaged("the compressed section is cut short or has trailing bytes")
    try:
        return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise Damaged(f"not MessagePack ({exc or type(exc).__name__})") from None


# --------------------------------------------------------------------------- blocks


def _check(batch: ColdBatch) -> list[SignedRecord]:
    """The batch's records decoded; raise `ColdArchiveError` when the batch does not hold
    together (records, paths, root and anchor transaction must agree: the rows are about
    to be deleted from the store, so the archive must prove exactly what the store did)."""
    where = f"{batch.origin} batch {batch.stream} {batch.first_seq}..{batch.last_seq}"

    def refuse(why: str) -> ColdArchiveError:
        return ColdArchiveError(f"cannot archive the {where} of {batch.agent.hex()[:16]}: {why}")

    if batch.origin not in _ORIGINS:
        raise refuse(f"origin must be one of {_ORIGINS}")
    if not batch.records:
        raise refuse("it has no records")
    try:
        _, anchor = find_anchor(parse_exact(batch.raw), batch.agent, batch.stream, batch.first_seq)
    except TxRejected as exc:
        raise refuse(f"the anchor transaction does not parse ({exc.detail})") from None
    except AnchorFormatError as exc:
        raise refuse(f"the anchor transaction is not an anchor ({exc})") from None
    if txid_of(batch.raw) != batch.txid:
        raise refuse("the anchor transaction does not hash to its txid")
    committed = (anchor.agent, anchor.stream, anchor.first_seq, anchor.last_seq, anchor.root)
    if committed != (batch.agent, batch.stream, batch.first_seq, batch.last_seq, batch.root):
        raise refuse("the anchor transaction commits to another batch")
    try:
        if len(bytes.fromhex(batch.block_hash)) != 32:
            raise ValueError
    except ValueError:
        raise refuse("the block hash is not 32 bytes of hex") from None
    if batch.block_height < 0 or not batch.bump:
        raise refuse("no block height or BUMP")
    signed: list[SignedRecord] = []
    for item in batch.records:
        try:
            record = decode_record(item.body)
        except RecordError as exc:
            raise refuse(f"seq {item.seq}: {exc}") from None
        if (record.agent, record.stream, record.seq) != (batch.agent, batch.stream, item.seq):
            raise refuse(f"seq {item.seq}: the body is another agent's, stream's or seq's")
        if not batch.first_seq <= item.seq <= batch.last_seq:
            raise refuse(f"seq {item.seq} is outside the batch")
        if signed and item.seq <= signed[-1].seq:
            raise refuse(f"seq {item.seq} is out of order or repeated")
        if type(item.signature) is not bytes or not 8 <= len(item.signature) <= MAX_SIGNATURE:
            raise refuse(f"seq {item.seq}: not a DER signature")
        signed.append(SignedRecord(record, item.body, record_hash(item.body), item.signature))
    count = batch.last_seq - batch.first_seq + 1
    if batch.origin == "own":
        if len(signed) != count or any(item.path is not None for item in batch.records):
            raise refuse("an own batch holds every record of the batch, without paths")
        if batch_root([s.hash for s in signed]) != batch.root:
            raise refuse("its records do not hash to its root")
        return signed
    for item, leaf in zip(batch.records, signed, strict=True):
        if item.path is None or len(item.path) != 32 * path_depth(count):
            raise refuse(f"seq {item.seq}: a kept record needs its {path_depth(count)}-entry path")
        try:
            index = item.seq - batch.first_seq
            reached = root_from_path(leaf.hash, index, count, split_path(item.path))
        except ValueError as exc:
            raise refuse(f"seq {item.seq}: {exc}") from None
        if reached != batch.root:
            raise refuse(f"seq {item.seq}: the path does not lead to the root")
    return signed


def _encode_block(batch: ColdBatch, signed: Sequence[SignedRecord]) -> bytes:
    records = [s.record for s in signed]
    seqs: list[int] | None = None
    if batch.origin == "kept":
        seqs = [
            r.seq - (batch.first_seq - 1 if i == 0 else records[i - 1].seq)
            for i, r in enumerate(records)
        ]
    timestamps = [
        r.timestamp_ms - (0 if i == 0 else records[i - 1].timestamp_ms)
        for i, r in enumerate(records)
    ]
    prevs = [
        None if i and r.seq == records[i - 1].seq + 1 and r.prev == signed[i - 1].hash else r.prev
        for i, r in enumerate(records)
    ]
    paths = None if batch.origin == "own" else [item.path for item in batch.records]
    compact = [compact_signature(s.signature) for s in signed]
    signatures = (
        [s.signature for s in signed] if None in compact else b"".join(filter(None, compact))
    )
    columns = [seqs, timestamps, [r.payload for r in records], prevs, signatures, paths]
    return _pack([[getattr(batch, name) for name in _BATCH_FIELDS], columns])


def _decode_batch(data: bytes) -> tuple[ColdBatch, list[SignedRecord]]:
    """A block back into its batch and its records; raises `Damaged`."""
    block, columns = _fields(_unpack(data), (list, list), "a block")
    batch = dict(zip(_BATCH_FIELDS, _fields(block, _BATCH_KINDS, "a block's batch"), strict=True))
    seqs, timestamps, payloads, prevs, signatures, paths = _fields(columns, _COLUMNS, "columns")
    origin, agent, stream = batch["origin"], batch["agent"], batch["stream"]
    first_seq, last_seq = batch["first_seq"], batch["last_seq"]
    count = len(payloads)
    if type(signatures) is bytes:  # r || s each: rebuild the DER the store held
        if len(signatures) != 64 * count:
            raise Damaged("a block's signatures do not match its records")
        signatures = [der_signature(signatures[i : i + 64]) for i in range(0, len(signatures), 64)]
    own = origin == "own"
    if origin not in _ORIGINS or (seqs is None) != own or (paths is None) != own:
        raise Damaged("a block's origin, seqs and paths disagree")
    columns = [timestamps, signatures, prevs, *(c for c in (seqs, paths) if c is not None)]
    if not count or any(len(column) != count for column in columns):
        raise Damaged("a block's columns are empty or differ in length")
    if own and count != last_seq - first_seq + 1:
        raise Damaged("an own block does not hold its whole batch")
    _column(timestamps, int, "timestamps")
    _column(payloads, bytes, "payloads")
    _column(prevs, (bytes, _NONE), "prevs")
    _column(signatures, bytes, "signatures")
    steps = [1] * count if seqs is None else _column(seqs, int, "seqs")
    depth = path_depth(last_seq - first_seq + 1) if last_seq >= first_seq else -1
    if any(len(p) != 32 * depth for p in _column(paths or [], bytes, "paths")):
        raise Damaged("a kept record's path is not as deep as its batch")
    signed: list[SignedRecord] = []
    items: list[ColdRecord] = []
    seq, timestamp = first_seq - 1, 0
    try:
        for i in range(count):
            seq += steps[i]
            if steps[i] < 1 or seq > last_seq:
                raise Damaged(f"seq {seq} is out of order or outside the batch")
            timestamp += timestamps[i]
            prev = prevs[i]
            if prev is None:
                if not signed or signed[-1].seq != seq - 1:
                    raise Damaged(f"seq {seq} has no prev to rebuild")
                prev = signed[-1].hash
            record = Record(agent, stream, seq, timestamp, payloads[i], prev)
            body = record.encode()
            signed.append(SignedRecord(record, body, record_hash(body), signatures[i]))
            items.append(ColdRecord(seq, body, signatures[i], None if paths is None else paths[i]))
    except RecordError as exc:
        raise Damaged(f"a record does not rebuild ({exc})") from None
    return ColdBatch(**batch, txid=txid_of(batch["raw"]), records=tuple(items)), signed


def block_proof(batch: ColdBatch, signed: Sequence[SignedRecord], seq: int) -> Proof:
    """The proof of record `seq` of a decoded block (it must hold the record)."""
    return _proof(batch, signed, [r.seq for r in batch.records].index(seq))


def block_proofs(batch: ColdBatch, signed: Sequence[SignedRecord]) -> list[Proof]:
    """The proofs of every record of a decoded block."""
    levels = batch_levels([s.hash for s in signed]) if batch.origin == "own" else None
    return [_proof(batch, signed, i, levels) for i in range(len(signed))]


def _proof(
    batch: ColdBatch,
    signed: Sequence[SignedRecord],
    index: int,
    levels: Sequence[Sequence[bytes]] | None = None,
) -> Proof:
    """The proof of record `index` of a decoded block; an own batch's path comes from
    its leaves (pass `levels` to build the tree once for many records)."""
    item, record = batch.records[index], signed[index]
    if item.path is None:
        tree = levels if levels is not None else batch_levels([s.hash for s in signed])
        path = batch_path(tree, item.seq - batch.first_seq)
    else:
        path = split_path(item.path)
    return make_proof(
        record, batch.root, path, batch.raw, batch.block_height, batch.block_hash, batch.bump
    )


# --------------------------------------------------------------------------- files


def encode_file(batches: Sequence[ColdBatch]) -> tuple[Listed, bytes]:
    """One data file holding `batches` (at least one, mined): its name with what the
    index lists for it, and its bytes.

    Each batch is checked against its anchor transaction, root and paths, and its block
    decoded again, before the file is made: raises `ColdArchiveError` for a batch that
    does not hold together. The same batches make the same bytes, so the same name
    (a content hash).
    """
    blocks: list[bytes] = []
    entries: list[Entry] = []
    offset = _PREAMBLE.size
    for batch in batches:
        signed = _check(batch)
        blob = _encode_block(batch, signed)
        if _decode_batch(blob)[0] != replace(batch, records=tuple(batch.records)):
            raise ColdArchiveError(  # a codec bug: refuse now rather than lose the records
                f"the {batch.origin} batch {batch.stream} {batch.first_seq}..{batch.last_seq}"
                " does not read back as it was given"
            )
        held = tuple(merge_ranges((r.seq, r.seq) for r in batch.records))
        entry = (batch.agent, batch.stream, batch.origin, batch.first_seq, batch.last_seq)
        entries.append(Entry(*entry, held, offset, len(blob), zlib.crc32(blob)))
        blocks.append(blob)
        offset += len(blob)
    header = _pack(
        [
            [e.agent, e.stream, e.origin, e.first_seq, e.last_seq, _flat(e.held), e.length, e.crc]
            for e in entries
        ]
    )
    data = b"".join(
        [_PREAMBLE.pack(_MAGIC, FORMAT, len(header), zlib.crc32(header)), header, *blocks]
    )
    lowest = min(b.block_height for b in batches)
    name = f"cold-{lowest:09d}-{hashlib.sha256(data).hexdigest()[:16]}.m2c"
    return Listed(name, index_groups(entries)), data


def _preamble(data: bytes, magic: bytes, path: Path) -> tuple[int, int]:
    """(length, crc) of the section after a file's preamble; checks magic and format."""
    if len(data) < _PREAMBLE.size:
        raise Damaged("empty" if not data else "shorter than its preamble")
    found, version, length, crc = _PREAMBLE.unpack_from(data)
    if found != magic:
        what = "archive file" if magic == _MAGIC else "archive index"
        raise Damaged(f"not an m2mesh {what}")
    if version != FORMAT:
        raise ColdArchiveError(f"archive format {version}; this m2mesh reads format {FORMAT}", path)
    return int(length), int(crc)


def _section(data: bytes, length: int, crc: int, what: str) -> Any:
    if len(data) < length:
        raise Damaged(f"the {what} is cut short")
    if zlib.crc32(data[:length]) != crc:
        raise Damaged(f"the {what} fails its checksum")
    return _unpack(data[:length])


_HEADER_ENTRY = (bytes, str, str, int, int, list, int, int)


def header_section(preamble: bytes, path: Path) -> tuple[int, int]:
    """(length, crc) of a data file's header, from the file's first `PREAMBLE_SIZE`
    bytes; checks magic and format (`path` only names the file in an error)."""
    return _preamble(preamble, _MAGIC, path)


def decode_header(data: bytes, length: int, crc: int) -> tuple[list[Entry], int]:
    """The block entries of a data file from the `length` bytes after its preamble
    (`length` and `crc` from `header_section`), and the size the whole file must have."""
    header = _section(data, length, crc, "header")
    offset = _PREAMBLE.size + length
    entries: list[Entry] = []
    for i, item in enumerate(_column(header, list, "the header")):
        agent, stream, origin, first, last, held, size, block_crc = _fields(
            item, _HEADER_ENTRY, f"header entry {i}"
        )
        if origin not in _ORIGINS:
            raise Damaged(f"header entry {i} has origin {origin!r}")
        held = _pairs(held)
        entries.append(Entry(agent, stream, origin, first, last, held, offset, size, block_crc))
        offset += size
    return entries, offset


def decode_block(data: bytes, entry: Entry, number: int) -> tuple[ColdBatch, list[SignedRecord]]:
    """Block `number` of a data file (the bytes read at `entry`), checked against its
    header entry and decoded into its batch and records; raises `Damaged`."""
    if len(data) != entry.length or zlib.crc32(data) != entry.crc:
        raise Damaged(f"block {number} fails its checksum")
    batch, signed = _decode_batch(data)
    described = (entry.agent, entry.stream, entry.origin, entry.first_seq, entry.last_seq)
    if (batch.agent, batch.stream, batch.origin, batch.first_seq, batch.last_seq) != described:
        raise Damaged(f"block {number} is not the batch its header entry describes")
    if tuple(merge_ranges((s.seq, s.seq) for s in signed)) != entry.held:
        raise Damaged(f"block {number} does not hold the seqs its header entry lists")
    return batch, signed


def index_groups(entries: Iterable[Entry]) -> tuple[Group, ...]:
    """A file's header entries as the index lists them (see `Group`)."""
    groups: dict[tuple[bytes, str, str], tuple[int, list[tuple[int, int]]]] = {}
    for e in entries:
        records, spans = groups.get((e.agent, e.stream, e.origin), (0, []))
        spans.append((e.held[0][0], e.held[-1][1]))
        groups[(e.agent, e.stream, e.origin)] = (records + count_seqs(e.held), spans)
    return tuple(Group(*key, n, tuple(merge_ranges(spans))) for key, (n, spans) in groups.items())


def encode_index(listed: Iterable[Listed]) -> bytes:
    """The index file's bytes, listing `listed` (in name order)."""
    body = _pack(
        [
            [
                item.name,
                [[g.agent, g.stream, g.origin, g.records, _flat(g.spans)] for g in item.groups],
            ]
            for item in sorted(listed, key=lambda item: item.name)
        ]
    )
    return _PREAMBLE.pack(_INDEX_MAGIC, FORMAT, len(body), zlib.crc32(body)) + body


_INDEX_GROUP = (bytes, str, str, int, list)


def decode_index(data: bytes, path: Path) -> dict[str, Listed]:
    """The data files an index file's bytes list, by name; raises `Damaged`, or
    `ColdArchiveError` (naming `path`) for another format."""
    length, crc = _preamble(data, _INDEX_MAGIC, path)
    if len(data) != _PREAMBLE.size + length:
        raise Damaged("truncated or with trailing bytes")
    document = _section(data[_PREAMBLE.size :], length, crc, "index")
    out: dict[str, Listed] = {}
    for item in _column(document, list, "the index"):
        name, groups = _fields(item, (str, list), "an index entry")
        if not FILE_NAME.match(name):
            raise Damaged(f"the index names {name!r}, not an archive file")
        parsed: list[Group] = []
        for group in _column(groups, list, "an index entry's groups"):
            agent, stream, origin, records, flat = _fields(group, _INDEX_GROUP, "an index group")
            if origin not in _ORIGINS:
                raise Damaged(f"an index group has origin {origin!r}")
            parsed.append(Group(agent, stream, origin, records, _pairs(flat)))
        out[name] = Listed(name, tuple(parsed))
    return out


__all__ = [
    "FILE_NAME",
    "FORMAT",
    "MAX_SECTION",
    "PREAMBLE_SIZE",
    "ColdArchiveError",
    "ColdBatch",
    "ColdRecord",
    "Damaged",
    "Entry",
    "Group",
    "Listed",
    "block_proof",
    "block_proofs",
    "decode_block",
    "decode_header",
    "decode_index",
    "encode_file",
    "encode_index",
    "header_section",
    "index_groups",
]
