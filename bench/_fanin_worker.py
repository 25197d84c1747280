"""One buyer of the fan-in scenario, run as its own process by bench.fanin.

    python -m bench._fanin_worker DATA LEDGER PROVIDER_ADDR PROVIDER_ID WINDOW

Funds itself, connects, opens one channel with a fixed in-flight window, prints
``{"ready": true}`` and waits for one JSON line on stdin:
``{"start": T0, "from": T1, "to": T2, "stop": T3}`` (wall-clock seconds, one
host, one clock). It pays 1 sat at a time as fast as the window allows from T0
until T3, and prints one JSON line: the payments acknowledged between T1 and T2
(cumulative acks, counted at the last ack at or before each instant), when its
first ack came, and how many it paid. It does not close the channel: closing is
not what this scenario measures.
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from pathlib import Path

import trio

from agents.channels import ChannelConfig
from tests.channel.harness import agentlet

CAPACITY = 5_000_000
"""Far above what one buyer can pay in a run; payments are 1 sat each."""


def acked_at(times: list[float], seqs: list[int], instant: float) -> int:
    """The cumulative acknowledged seq at `instant` (0 before the first ack)."""
    index = bisect.bisect_right(times, instant)
    return seqs[index - 1] if index else 0


async def main(data: Path, ledger: Path, address: str, peer: str, window: int) -> None:
    """Open one channel, wait for the go line, pay until its stop time, report."""
    async with agentlet(data, ledger, config=ChannelConfig(window=window)) as me:
        await me.fund(ledger, CAPACITY * 2)
        await me.node.connect(address, expect_peer=peer)
        cid = await me.manager.open(peer, "bench", CAPACITY, 100)
        times: list[float] = []
        seqs: list[int] = []

        def on_acked(_: bytes, seq: int) -> None:
            if not seqs or seq > seqs[-1]:
                times.append(time.time())
                seqs.append(seq)

        me.manager.on_acked = on_acked
        print(json.dumps({"ready": True}), flush=True)
        go = json.loads(await trio.to_thread.run_sync(sys.stdin.readline))
        await trio.sleep(max(0.0, go["start"] - time.time()))
        paid = 0
        while time.time() < go["stop"] and paid < CAPACITY - 1_000:
            await me.manager.pay(cid, 1)
            paid += 1
        await me.manager.wait_acked(cid)
        in_window = acked_at(times, seqs, go["to"]) - acked_at(times, seqs, go["from"])
        print(
            json.dumps(
                {
                    "acked_in_window": in_window,
                    "first_ack_at": times[0] if times else None,
                    "paid": paid,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    d, lg, a, p, w = sys.argv[1:]
    trio.run(main, Path(d), Path(lg), a, p, int(w))
