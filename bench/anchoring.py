"""Anchoring benchmark: records logged/s, Merkle batches/s, proofs verified/s, bytes on chain.

    python -m bench.anchoring [--quick] [--out FILE]

Measured in one run, in one process, each beside a baseline from the same run (this is
a shared 2-core machine; absolute rates drift, ratios much less):

- **records signed** (core): `StreamWriter.append` — encode, hash, link, sign — against
  bare ``sign_digest(sha256(payload))``, the floor every record pays;
- **records logged + batched** (end to end): `Anchorer.log_many` in chunks of 100 into
  a real agent store (WAL, group commits), batches of 1 000 cut, funded by the wallet,
  broadcast to a real `LocalLedger` — from the first record until every batch is on
  the ledger — against the same bare signing;
- **records logged by `log()` from 64 tasks at once** (one record per call; group
  commit makes them share transactions);
- **Merkle batches built** at 100 / 1 000 / 10 000 records (root + anchor script),
  against bare SHA-256d of the same number of tree nodes;
- **proofs verified**: `verify_proof` on real proofs, *warm* (proofs of one batch share
  the parsed anchor tx and BUMP) and *cold* (caches cleared per proof), against bare
  ECDSA ``verify_digest`` — the one signature check every proof needs;
- **bytes on chain per record** at batch 100 / 1 000 / 10 000: real anchor transactions
  built by the wallet and accepted by the ledger, against one transaction per record.

Targets: >= 10 000 records/s logged and batched (signing included) and < 1 byte on
chain per record at a batch of 1 000.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from mesh.anchoring import proof as proof_module
from mesh.anchoring.batch import BatchPolicy, batch_root
from mesh.anchoring.hashchain import StreamWriter
from mesh.anchoring.headers import HeaderChain
from mesh.anchoring.payload import AnchorPayload
from mesh.anchoring.proof import Proof, verify_proof
from mesh.anchoring.service import AnchorConfig, Anchorer
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.tx import hash256, p2pkh_script
from mesh.chain.wallet import Wallet
from mesh.identity import Identity, verify_digest
from mesh.store import Store

TARGET_LOGGED_PER_S = 10_000
TARGET_BYTES_PER_RECORD = 1.0
PAYLOAD = b"rms_mm_s=4.217;peak=11.9;temp_c=41.2"  # a typical 36-byte sensor reading


@dataclass
class Row:
    """One measurement beside its baseline."""

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    params: dict[str, Any]

    @property
    def ratio(self) -> float:
        """value / baseline_value."""
        return self.value / self.baseline_value if self.baseline_value else float("nan")


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(count: int, body: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(count):
        body()
    return _rate(count, time.perf_counter() - start)


# --------------------------------------------------------------------------- baselines


def bare_sign_rate(identity: Identity, count: int) -> float:
    """sign_digest(sha256(payload)) per second."""
    return _timed(count, lambda: identity.sign_digest(hashlib.sha256(PAYLOAD).digest()))


def bare_verify_rate(identity: Identity, count: int) -> float:
    """verify_digest per second."""
    digest = hashlib.sha256(PAYLOAD).digest()
    signature = identity.sign_digest(digest)
    key = identity.public_key
    return _timed(count, lambda: verify_digest(key, digest, signature))


def bare_hash_seconds(nodes: int) -> float:
    """Seconds for `nodes` SHA-256d of 64 bytes (a tree's interior nodes)."""
    block = bytes(64)
    start = time.perf_counter()
    for _ in range(nodes):
        hash256(block)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- measured


def writer_rate(identity: Identity, count: int) -> float:
    """StreamWriter.append per second (encode, hash, link, sign)."""
    writer = StreamWriter(identity)
    return _timed(count, lambda: writer.append("vibration", PAYLOAD, 1_700_000_000_000))


def merkle_rates(size: int, repeat: int) -> tuple[float, float]:
    """(batches/s, bare-hash equivalent batches/s) for batches of `size` records."""
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size)]
    agent = Identity.from_secret(bytes(range(1, 33))).public_key
    start = time.perf_counter()
    for _ in range(repeat):
        root = batch_root(leaves)
        AnchorPayload(agent, "vibration", 0, size - 1, root).script()
    built = _rate(repeat, time.perf_counter() - start)
    nodes = sum(-(-size // (1 << level)) for level in range(1, max(1, (size - 1).bit_length()) + 1))
    bare = _rate(repeat, bare_hash_seconds(nodes) * repeat)
    return built, bare


@dataclass
class EndToEnd:
    """What one Anchorer run measured."""

    records: int
    batch: int
    seconds: float
    anchors: int
    chain_bytes: int
    proofs: list[Proof]
    headers: HeaderChain | None


async def anchorer_run(
    work: Path,
    identity: Identity,
    records: int,
    batch: int,
    *,
    chunk: int = 100,
    concurrent: int = 0,
    want_proofs: bool = False,
) -> EndToEnd:
    """Log `records` through a real Anchorer (store + wallet + LocalLedger) and anchor them.

    With `concurrent` > 0, that many tasks call `log()` one record at a time.
    """
    work = Path(tempfile.mkdtemp(dir=work))
    ledger_path = work / "ledger.db"
    LocalLedger.create(ledger_path).close()
    store = Store(work / "agent.db", check_same_thread=False, synchronous="NORMAL")
    wallet = Wallet(store, identity)
    address = wallet.new_address()
    with LocalLedger.open(ledger_path) as ledger:
        ledger.faucet(p2pkh_script(address), 10_000_000)
        wallet.add_utxos(ledger.utxos(p2pkh_script(address)))
    chain = LocalChain.open(ledger_path)
    config = AnchorConfig(batch=BatchPolicy(max_records=batch, max_age=3600))
    anchorer = Anchorer(identity, store, wallet, chain, config=config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(anchorer.run)
            start = time.perf_counter()
            if concurrent:
                per_task = records // concurrent

                async def producer() -> None:
                    for _ in range(per_task):
                        await anchorer.log("vibration", PAYLOAD)

                async with trio.open_nursery() as producers:
                    for _ in range(concurrent):
                        producers.start_soon(producer)
                records = per_task * concurrent
            else:
                for first in range(0, records, chunk):
                    await anchorer.log_many("vibration", [PAYLOAD] * min(chunk, records - first))
            await anchorer.anchor_now()
            seconds = time.perf_counter() - start
            stats = anchorer.statistics()
            proofs: list[Proof] = []
            headers = None
            if want_proofs:
                await chain.mine()
                await anchorer.wait_mined()
                for info in anchorer.records.batches():
                    proofs.extend(anchorer.records.batch_proofs(info.id))
                headers = HeaderChain.from_ledger(chain.ledger)
            nursery.cancel_scope.cancel()
    finally:
        chain.close()
        store.close()
    return EndToEnd(
        records, batch, seconds, stats.batches_anchored, stats.bytes_on_chain, proofs, headers
    )


def verify_rates(proofs: list[Proof], headers: HeaderChain) -> tuple[float, float]:
    """(warm, cold) proofs verified per second."""
    start = time.perf_counter()
    for proof in proofs:
        verify_proof(proof, headers)
    warm = _rate(len(proofs), time.perf_counter() - start)
    start = time.perf_counter()
    for proof in proofs:
        proof_module.clear_caches()
        verify_proof(proof, headers)
    cold = _rate(len(proofs), time.perf_counter() - start)
    return warm, cold


def measure(quick: bool) -> list[Row]:
    """Every measurement once; returns the rows in print order."""
    identity = Identity.generate()
    n = 2_000 if quick else 20_000
    rows: list[Row] = []
    sign = bare_sign_rate(identity, n)
    verify = bare_verify_rate(identity, n)
    sign_name = "bare sign_digest(sha256)"
    rows.append(
        Row(
            "records signed (StreamWriter.append)",
            writer_rate(identity, n),
            "/s",
            sign_name,
            sign,
            {"records": n},
        )
    )
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        logged = n if quick else 50_000
        e2e = trio.run(lambda: anchorer_run(work, identity, logged, 1000, want_proofs=True))
        rows.append(
            Row(
                "records logged+batched+anchored (log_many x100)",
                _rate(e2e.records, e2e.seconds),
                "/s",
                sign_name,
                sign,
                {"records": e2e.records, "batch": 1000, "anchors": e2e.anchors},
            )
        )
        tasks = trio.run(partial(anchorer_run, work, identity, n, 1000, concurrent=64))
        rows.append(
            Row(
                "records logged+batched+anchored (log() x64 tasks)",
                _rate(tasks.records, tasks.seconds),
                "/s",
                sign_name,
                sign,
                {"records": tasks.records, "batch": 1000, "tasks": 64},
            )
        )
        for size in (100, 1000, 10_000):
            repeat = max(3, (200_000 if not quick else 20_000) // size)
            built, bare = merkle_rates(size, repeat)
            rows.append(
                Row(
                    f"Merkle batches built, {size} records",
                    built,
                    "/s",
                    "bare SHA-256d of its nodes",
                    bare,
                    {"records": size},
                )
            )
        assert e2e.headers is not None
        warm, cold = verify_rates(e2e.proofs, e2e.headers)
        rows.append(
            Row(
                "proofs verified (warm: batch shares anchor)",
                warm,
                "/s",
                "bare ECDSA verify_digest",
                verify,
                {"proofs": len(e2e.proofs)},
            )
        )
        rows.append(
            Row(
                "proofs verified (cold: caches cleared)",
                cold,
                "/s",
                "bare ECDSA verify_digest",
                verify,
                {"proofs": len(e2e.proofs)},
            )
        )
        single = trio.run(anchorer_run, work, identity, 20, 1)
        per_tx = single.chain_bytes / single.records
        for size in (100, 1000, 10_000):
            count = size * (3 if size < 10_000 else 1)
            run = trio.run(anchorer_run, work, identity, count, size)
            rows.append(
                Row(
                    f"bytes on chain per record, batch {size}",
                    run.chain_bytes / run.records,
                    "B",
                    "one anchor tx per record",
                    per_tx,
                    {"records": run.records, "anchors": run.anchors},
                )
            )
    return rows


def report(rows: list[Row]) -> str:
    """The table and the targets, as printed."""
    lines = [
        f"{'measurement':<52} {'value':>12} {'x baseline':>11}  baseline",
        "-" * 110,
    ]
    for row in rows:
        value = f"{row.value:,.0f}{row.unit}" if row.unit == "/s" else f"{row.value:.3f} B"
        base = f"{row.baseline_value:,.0f}/s" if row.unit == "/s" else f"{row.baseline_value:.0f} B"
        lines.append(f"{row.name:<52} {value:>12} {row.ratio:>10.2f}x  {row.baseline} ({base})")
    logged = next(r for r in rows if r.name.startswith("records logged+batched"))
    per_record = next(r for r in rows if r.name == "bytes on chain per record, batch 1000")
    met_rate = logged.value >= TARGET_LOGGED_PER_S
    met_bytes = per_record.value < TARGET_BYTES_PER_RECORD
    lines.append(
        f"target: >= {TARGET_LOGGED_PER_S:,} records/s logged+batched (sign included):"
        f" {logged.value:,.0f}/s -> {'MET' if met_rate else 'NOT MET'}"
    )
    lines.append(
        f"target: < {TARGET_BYTES_PER_RECORD} byte on chain per record at batch 1000:"
        f" {per_record.value:.3f} B -> {'MET' if met_bytes else 'NOT MET'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.anchoring", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = measure(args.quick)
    print(report(rows))
    if args.out is not None:
        document = [{**asdict(row), "ratio": row.ratio} for row in rows]
        args.out.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
