"""A producer whose records were anchored on a real LocalLedger file, built once per session.

Two streams, four batches in two blocks: ``vibration`` 0..49 and 50..99 (cut by size,
mined in block 1), ``vibration`` 100..122 and ``meter`` 0..6 (cut by `anchor_now`,
mined in block 2, which holds three transactions so one anchor is a self-paired odd node).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from mesh.anchoring.batch import BatchPolicy
from mesh.anchoring.headers import HeaderChain, write_headers
from mesh.anchoring.proof import Proof
from mesh.anchoring.service import AnchorConfig
from mesh.anchoring.store import BatchInfo
from mesh.chain.ledger import LocalLedger
from tests.anchoring.helpers import create_ledger, running_anchorer


@dataclass(frozen=True)
class Anchored:
    """What the session fixture leaves behind (read-only for tests)."""

    ledger: Path
    data_dir: Path
    headers_file: Path
    headers: HeaderChain
    batches: tuple[BatchInfo, ...]
    proofs: dict[tuple[str, int], Proof]


def _build(base: Path) -> Anchored:
    ledger = create_ledger(base / "ledger.db")
    data_dir = base / "producer"
    config = AnchorConfig(batch=BatchPolicy(max_records=50, max_age=3600))

    async def go() -> tuple[list[BatchInfo], dict[tuple[str, int], Proof]]:
        async with running_anchorer(data_dir, ledger, config=config) as run:
            anchorer = run.anchorer
            await anchorer.log_many("vibration", [b"rms=%d" % i for i in range(100)])
            await anchorer.anchor_now()
            await run.chain.mine()
            await anchorer.wait_mined()
            for i in range(100, 123):
                await anchorer.log("vibration", b"rms=%d" % i)
            await anchorer.log_many(
                "meter", [b"channel %d paid %d" % (i, i * 10) for i in range(7)]
            )
            await anchorer.anchor_now()
            await run.chain.mine()
            await anchorer.wait_mined()
            batches = anchorer.records.batches()
            proofs = {
                (p.fields["stream"], p.fields["seq"]): p
                for b in batches
                for p in anchorer.records.batch_proofs(b.id)
            }
            return batches, proofs

    batches, proofs = trio.run(go)
    with LocalLedger.open(ledger) as opened:
        write_headers(opened, base / "headers.json")
        headers = HeaderChain.from_ledger(opened)
    return Anchored(ledger, data_dir, base / "headers.json", headers, tuple(batches), proofs)


@pytest.fixture(scope="session")
def anchored(tmp_path_factory: pytest.TempPathFactory) -> Anchored:
    return _build(tmp_path_factory.mktemp("anchored"))
