"""The buyer side of the payments benchmark, run as its own process.

    python -m bench._pay_worker DATA LEDGER SELLER_ADDR SELLER_ID WINDOW COUNT

Opens a channel with the given in-flight window, pays COUNT times 1 sat as fast
as the window allows, and prints one JSON line: updates/s from the first payment
to the last acknowledgement, the update->ack latencies, and the channel's txids.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import trio

from agents.channels import ChannelConfig
from tests.channel.harness import agentlet


async def main(data: Path, ledger: Path, address: str, peer: str, window: int, count: int) -> None:
    async with agentlet(data, ledger, config=ChannelConfig(window=window)) as me:
        await me.fund(ledger, 10_000_000)
        await me.node.connect(address, expect_peer=peer)
        cid = await me.manager.open(peer, "bench", count + 10_000, 100)
        sent: dict[int, float] = {}
        latencies: list[float] = []
        last_acked = 0

        def on_acked(_: bytes, seq: int) -> None:
            nonlocal last_acked
            now = time.perf_counter()
            for s in range(last_acked + 1, seq + 1):
                latencies.append(now - sent.pop(s))
            last_acked = max(last_acked, seq)

        me.manager.on_acked = on_acked
        start = time.perf_counter()
        for seq in range(1, count + 1):
            if seq > window:  # wait for room here, so the stamp is not the wait's
                await me.manager.wait_acked(cid, seq - window)
            # Stamped before pay(): its ack may come in before pay() returns.
            sent[seq] = time.perf_counter()
            record = await me.manager.pay(cid, 1)
            assert record.seq == seq, (record.seq, seq)
        await me.manager.wait_acked(cid)
        elapsed = time.perf_counter() - start
        final = await me.manager.close(cid)
        print(
            json.dumps(
                {
                    "rate": count / elapsed,
                    "latencies": latencies,
                    "funding_txid": final.terms.funding_txid,
                    "close_txid": final.close_txid,
                    "statistics": me.manager.statistics().__dict__,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    d, lg, a, p, w, c = sys.argv[1:]
    trio.run(main, Path(d), Path(lg), a, p, int(w), int(c))
