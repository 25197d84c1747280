"""`mesh proof …` and `mesh verify …`: export and check proofs of anchored records.

    mesh proof --data-dir DIR --stream S --seq N [--agent ID] [--out FILE]
    mesh proof --data-dir DIR --list
    mesh proof --export-headers FILE [--ledger FILE | --network NET --header-service URL]
    mesh verify PROOF [--ledger FILE | --headers FILE | --header-service URL ...]
                      [--network local|main|test]

`proof` reads the agent store ``DIR/agent.db`` (a running agent may keep writing to
it) and the archive files in ``DIR/archive/`` that retention moved old anchored
records to (`mesh.anchoring.cold`): one record's proof as JSON (`mesh.anchoring.proof`
documents every field), from the store or else the archive; or the streams held with
their anchored seq ranges (``anchored``: in the store, ``archived``: in archive files).
``--agent`` picks whose record when the same stream of several agents is held (a
buyer's kept records).
``--export-headers`` writes a ledger's header chain as a headers file
(`mesh.anchoring.headers`) for verifiers that do not have the ledger; with ``--network
main|test`` it writes a header service's chain instead, once it passed the rules below.

`verify` also checks a part passport (`mesh.workflow.passport`): it prints ``VALID
passport of part …`` and the part's story, or ``INVALID <link>: <reason>``.
`verify` needs nothing but the proof and a header chain it trusts: ``--ledger`` (default
``$M2MESH_LEDGER`` or ``$M2MESH_HOME/ledger.db``) or ``--headers`` for the local network;
for ``--network main|test``, ``--headers`` (a file of that network) or
``--header-service URL`` (default ``$M2MESH_HEADER_SERVICE``; several may be given, the
valid chain with the most work wins), and then the headers must connect to a checkpoint
shipped with the package and pass BSV's consensus rules above it
(`mesh.anchoring.header_rules`), else verify refuses them with the reason. It prints
``VALID`` with the block height and time and exits 0, or ``INVALID <reason>: <detail>``
naming the first link that failed (`mesh.anchoring.errors.REASONS`) and exits 1. An
unusable or untrusted header source is an error (exit 1). Nothing here prints a
traceback for a bad file or a lying service. (docs/ARCHITECTURE.md §5, §7)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.ledger_cli import DEFAULT_LEDGER
from mesh.anchoring.checkpoints import NETWORK_PARAMS
from mesh.anchoring.cold import ARCHIVE_DIR, ColdArchive
from mesh.anchoring.errors import AnchoringError, HeadersError, ProofFailed, RecordNotFound
from mesh.anchoring.header_service import ENV_TOKEN, ENV_URL, HeaderService, fetch_chain
from mesh.anchoring.headers import (
    LOCAL,
    NETWORK_NAMES,
    HeaderChain,
    best_chain,
    save_chain,
    write_headers,
)
from mesh.anchoring.proof import Proof, parse_proof, read_document, verify_proof
from mesh.anchoring.schema import ANCHORING_SCHEMA
from mesh.anchoring.store import AnchorStore
from mesh.chain.errors import LedgerError
from mesh.chain.ledger import LocalLedger
from mesh.identity import parse_peer_id
from mesh.readings import READINGS_PREFIX, ReadingError, decode_reading
from mesh.store import Store
from mesh.workflow.passport import PassportFailed, parse_passport, verify_passport

MAX_PASSPORT_FILE = 16 * 1024 * 1024
"""A part passport carries several proofs: a larger file than one proof's."""


class ProofCliError(AnchoringError):
    """A usage problem with `mesh proof` / `mesh verify`."""


def _iso(seconds: float, timespec: str = "seconds") -> str:
    """UTC time as ISO 8601 with a Z, e.g. 2023-11-14T22:13:20Z."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


class Records:
    """Where `mesh proof` finds records: the agent store first, then the archive files."""

    def __init__(self, store: AnchorStore | None, archive: ColdArchive | None) -> None:
        self.store = store
        self.archive = archive

    def agents_for(self, stream: str) -> list[bytes]:
        """Whose records of `stream` are held, in the store or archived."""
        found = [] if self.store is None else self.store.agents_for(stream)
        archived = [] if self.archive is None else self.archive.agents_for(stream)
        return found + [a for a in archived if a not in found]

    def proof(self, agent: bytes, stream: str, seq: int) -> Proof:
        """The store's proof of a record, else the archive's (retention moved it)."""
        missing = RecordNotFound(f"no record {stream}/{seq} of agent {agent.hex()}")
        if self.store is not None:
            try:
                return self.store.proof(agent, stream, seq)
            except RecordNotFound as exc:
                missing = exc
        if self.archive is not None:
            try:
                return self.archive.proof(agent, stream, seq)
            except RecordNotFound:
                pass
        raise missing

    def listing(self) -> list[dict[str, Any]]:
        """Per (agent, stream, origin): the store's summary, and the archived ranges."""
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for s in [] if self.store is None else self.store.streams():
            rows[(s.agent, s.stream, s.origin)] = s.to_json() | {
                "archived": [],
                "archived_records": 0,
            }
        for a in [] if self.archive is None else self.archive.streams():
            row = rows.setdefault(
                (a.agent, a.stream, a.origin),
                {
                    "agent": a.agent,
                    "stream": a.stream,
                    "origin": a.origin,
                    "records": 0,
                    "anchored": [],
                    "unanchored": 0,
                },
            )
            row["archived"] = [list(r) for r in a.anchored]
            row["archived_records"] = a.records
        ordered = sorted(rows.values(), key=lambda r: (r["stream"], r["agent"]))
        return sorted(ordered, key=lambda r: str(r["origin"]), reverse=True)  # own first


def open_records(data_dir: Path | None, stack: ExitStack) -> Records:
    if data_dir is None:
        raise ProofCliError("--data-dir DIR is required (the agent's data directory)")
    archive_dir = data_dir / ARCHIVE_DIR
    archive = ColdArchive(archive_dir) if archive_dir.is_dir() else None
    path = data_dir / "agent.db"
    if not path.is_file():
        if archive is None:
            raise ProofCliError(f"{path}: no agent store here (is --data-dir an agent's data dir?)")
        return Records(None, archive)
    store = stack.enter_context(Store(path))
    if store.version(ANCHORING_SCHEMA.component) == 0:
        if archive is None:
            raise ProofCliError(f"{data_dir}: this agent has logged no records")
        return Records(None, archive)
    return Records(AnchorStore(store), archive)


def cmd_proof(args: argparse.Namespace) -> int:
    """Export one proof, list streams, or export a ledger's headers."""
    if args.export_headers is not None and args.network not in (None, LOCAL):
        chain = trusted_headers(args)
        save_chain(chain, args.export_headers)
        print(f"wrote {args.export_headers}: {chain.describe_trust()}", file=sys.stderr)
        return 0
    if args.export_headers is not None:
        if args.header_service:
            raise ProofCliError("--header-service needs --network main or --network test")
        ledger_path = args.ledger or DEFAULT_LEDGER
        try:
            with LocalLedger.open(ledger_path) as ledger:
                tip = write_headers(ledger, args.export_headers)
        except LedgerError as exc:
            raise ProofCliError(f"--ledger {ledger_path}: {exc}") from None
        print(f"wrote {args.export_headers}: headers 0..{tip} of {ledger_path}", file=sys.stderr)
        return 0
    with ExitStack() as stack:
        records = open_records(args.data_dir, stack)
        if args.list:
            print(json.dumps({"streams": records.listing()}, indent=1))
            return 0
        if args.stream is None or args.seq is None:
            raise ProofCliError("give --stream S and --seq N (or --list)")
        if args.agent is not None:
            try:
                agent = parse_peer_id(args.agent)
            except ValueError as exc:
                raise ProofCliError(f"--agent: {exc}") from None
        else:
            agents = records.agents_for(args.stream)
            if not agents:
                raise ProofCliError(f"no records of stream {args.stream!r} in {args.data_dir}")
            if len(agents) > 1:
                ids = ", ".join(a.hex() for a in agents)
                raise ProofCliError(
                    f"stream {args.stream!r} has several agents; pick --agent: {ids}"
                )
            agent = agents[0]
        proof = records.proof(agent, args.stream, args.seq)
    text = proof.to_json()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def trusted_headers(
    args: argparse.Namespace, env: Mapping[str, str] = os.environ, now: float | None = None
) -> HeaderChain:
    """The header chain `verify` trusts, from ``--ledger``/``--headers``/``--header-service``
    and ``--network``; a `HeadersError` or `ProofCliError` says why there is none."""
    now = time.time() if now is None else now
    network = args.network
    if network in NETWORK_PARAMS and args.ledger is not None:
        raise ProofCliError(
            f"--ledger holds a local chain, not {network}: give --headers FILE or"
            " --header-service URL"
        )
    services = list(args.header_service or [])
    if not services and network in NETWORK_PARAMS and args.headers is None:
        services = env.get(ENV_URL, "").replace(",", " ").split()
        if not services:
            files = "--headers FILE or " if args.command == "verify" else ""
            raise ProofCliError(
                f"--network {network} needs {files}--header-service URL (or ${ENV_URL})"
            )
    if services:
        if network not in NETWORK_PARAMS:
            raise ProofCliError("--header-service needs --network main or --network test")
        return _from_services(services, network, now, env.get(ENV_TOKEN) or None)
    if args.headers is not None:
        return HeaderChain.load(args.headers, network=network, now=now)
    ledger = args.ledger or DEFAULT_LEDGER
    if not ledger.exists():
        raise ProofCliError(
            f"no ledger at {ledger}: give --ledger FILE or --headers FILE to verify against"
        )
    return HeaderChain.from_ledger_file(ledger)


def _from_services(urls: list[str], network: str, now: float, token: str | None) -> HeaderChain:
    """Each service's chain, checked; the valid one with the most work. A refusal is
    told on stderr when another service's chain is used, else it is the error."""
    chains: list[HeaderChain] = []
    refused: list[str] = []
    for url in urls:
        service = HeaderService(url, token=token)
        try:
            chains.append(fetch_chain(service, NETWORK_PARAMS[network], now, progress=_progress))
        except HeadersError as exc:
            refused.append(str(exc))
    if not chains:
        raise HeadersError("; ".join(refused))
    for reason in refused:
        print(f"refused {reason}", file=sys.stderr)
    return best_chain(chains)


def _progress(height: int, tip: int) -> None:
    """Where a long fetch is, on a terminal only (a mainnet chain is ~185 pages)."""
    if sys.stderr.isatty():
        end = "\n" if height >= tip else ""
        print(f"\rfetched headers up to {height} of {tip}", end=end, file=sys.stderr)


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a proof file offline; VALID (0) or INVALID naming the failed link (1)."""
    headers = trusted_headers(args)
    try:
        document = read_document(args.proof, MAX_PASSPORT_FILE)
        if isinstance(document, dict) and "m2mesh_passport" in document:
            return _verify_passport(document, headers)
        verified = verify_proof(parse_proof(document), headers)
    except ProofFailed as exc:
        print(f"INVALID {exc.reason}: {exc.detail}")
        return 1
    record, anchor = verified.record, verified.anchor
    print(
        f"VALID block {verified.block_height} time {_iso(verified.block_time)}"
        f" stream {record.stream} seq {record.seq}"
    )
    print(f"  agent     {record.agent.hex()}")
    signed_at = _iso(record.timestamp_ms / 1000, "milliseconds")
    print(f"  record    {verified.record_hash.hex()}, signed at {signed_at}")
    print(f"            (agent's clock), payload {len(record.payload)} bytes")
    if record.stream.startswith(READINGS_PREFIX):  # a feed's record: show its reading
        try:
            text = decode_reading(record.payload).describe()
        except ReadingError as exc:
            text = f"not a typed reading ({exc})"
        print(f"  reading   {text if text.isprintable() else json.dumps(text)}")
    print(f"  batch     {anchor.stream} seq {anchor.first_seq}..{anchor.last_seq}")
    print(f"  anchor    {verified.txid} output {verified.vout}")
    print(f"  block     {verified.block_height} {verified.block_hash}")
    print(f"  checked   against {headers.source}")
    if headers.trust is not None:
        depth = headers.tip_height - verified.block_height + 1
        print(f"  trust     {headers.describe_trust()}")
        print(f"  depth     {depth} confirmation{'s' * (depth != 1)} (tip {headers.tip_height})")
    return 0


def _verify_passport(document: Any, headers: HeaderChain) -> int:
    """A part passport: its story, VALID (0), or INVALID naming the failed link (1)."""
    try:
        story = verify_passport(parse_passport(document), headers)
    except PassportFailed as exc:
        print(f"INVALID {exc.link}: {exc.reason}")
        return 1
    print(f"VALID passport of {story[0]}")
    for line in story[1:]:
        print(line)
    print(f"  checked against {headers.source}")
    if headers.trust is not None:
        print(f"  trust   {headers.describe_trust()}")
    return 0


def add_proof_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``proof`` and ``verify`` to the `mesh` parser's subcommands."""
    proof = subparsers.add_parser(
        "proof",
        help="export a proof that a record was anchored, or list anchored streams",
        description="Export the proof that a record an agent logged was anchored on the "
        "ledger (--stream S --seq N, as JSON; from the agent's store, or from the archive "
        "files in DIR/archive/ once retention moved it there), list the streams held with "
        "their anchored seq ranges, in the store and archived (--list), or write a "
        "ledger's header chain for verifiers that do not have the ledger (--export-headers "
        "FILE). A running agent may keep writing meanwhile.",
    )
    proof.add_argument("--data-dir", type=Path, help="the agent's data directory")
    mode = proof.add_mutually_exclusive_group(required=True)
    mode.add_argument("--seq", type=int, help="the record's seq (with --stream)")
    mode.add_argument(
        "--list", action="store_true", help="print streams and their anchored and archived ranges"
    )
    mode.add_argument(
        "--export-headers", type=Path, metavar="FILE", help="write a ledger's headers file"
    )
    proof.add_argument("--stream", help="the record's stream")
    proof.add_argument("--agent", help="whose record, when several agents share the stream")
    proof.add_argument("--out", type=Path, help="write the proof here (default: stdout)")
    proof.add_argument(
        "--ledger", type=Path, help=f"ledger for --export-headers (default {DEFAULT_LEDGER})"
    )
    proof.add_argument(
        "--network",
        choices=NETWORK_NAMES,
        help="with --export-headers: main or test writes the chain of --header-service URL"
        f" (default ${ENV_URL}) once it passed the consensus rules",
    )
    proof.add_argument(
        "--header-service",
        action="append",
        metavar="URL",
        help="a Block Headers Service for --export-headers --network main|test",
    )
    proof.set_defaults(func=cmd_proof, headers=None)

    verify = subparsers.add_parser(
        "verify",
        help="check a proof offline against a ledger, a headers file or a header service",
        description="Check a proof offline, against nothing but a header chain you trust: "
        "the record's signature, its place in the anchored batch, the anchor transaction, "
        "its BUMP and the block. Prints VALID with the block's height and time (exit 0), "
        "or INVALID <reason>: <detail> naming the first link that failed (exit 1). "
        "The local network (a ledger, or --headers of a ledger's export) trusts headers "
        "that link and meet their own bits: trust the file as you trust its sender. "
        f"For --network main or test the headers (--headers FILE, or --header-service URL, "
        f"default ${ENV_URL}, bearer token from ${ENV_TOKEN}) must connect to a checkpoint "
        "shipped with m2mesh and every header above it must pass BSV's consensus rules "
        "(difficulty adjustment, proof of work, median time past, at most 2 h in the "
        "future); a re-mined or backdated chain is refused with the reason (exit 1). "
        "Several --header-service URLs may be given: the valid chain with the most work wins.",
    )
    verify.add_argument("proof", type=Path, help="the proof or passport file (JSON)")
    source = verify.add_mutually_exclusive_group()
    source.add_argument(
        "--ledger", type=Path, help=f"trust this ledger's headers (default {DEFAULT_LEDGER})"
    )
    source.add_argument(
        "--headers", type=Path, help="trust this headers file, by --network's rules"
    )
    source.add_argument(
        "--header-service",
        action="append",
        metavar="URL",
        help="fetch main/test headers from this Block Headers Service (repeatable)",
    )
    verify.add_argument(
        "--network",
        choices=NETWORK_NAMES,
        help="whose rules the headers must pass: local (default; a headers file may name"
        " its network), main or test (checkpoints and consensus rules)",
    )
    verify.set_defaults(func=cmd_verify)
