"""A separate OS process that broadcasts a list of transactions into a ledger file.

Started by `test_concurrency` through `multiprocessing` (spawn): it opens its own
connection, waits at the barrier so every worker starts together, submits each
transaction in order and writes ``{"results": {txid: "accepted" | rule}, "started": t,
"finished": t}`` as JSON (wall-clock times, to show the workers really overlapped).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mesh.chain.errors import TxRejected
from mesh.chain.ledger import LocalLedger


def broadcast(db: str, raws_file: str, results_file: str, barrier: Any) -> None:
    """Submit every hex transaction in `raws_file` to the ledger at `db`."""
    raws = [bytes.fromhex(line) for line in Path(raws_file).read_text().split()]
    results: dict[str, str] = {}
    with LocalLedger.open(Path(db)) as ledger:
        barrier.wait(timeout=60)
        started = time.time()
        for raw in raws:
            try:
                results[ledger.submit(raw)] = "accepted"
            except TxRejected as exc:
                assert exc.txid is not None
                results[exc.txid] = exc.rule
        finished = time.time()
    document = {"results": results, "started": started, "finished": finished}
    Path(results_file).write_text(json.dumps(document))
