"""A channel endpoint in its own process, for the two-process and crash tests.

    channel_proc.py seller DATA LEDGER LISTEN
        serve channels until SIGTERM; prints {"address", "peer_id"} when listening
    channel_proc.py buyer DATA LEDGER SELLER_ADDR SELLER_ID --payments N [--amount A]
        fund, open, pay N times (printing progress), close unless --no-close
    channel_proc.py resume DATA LEDGER SELLER_ADDR SELLER_ID
        reload the stored channel, reconnect, resend, close; prints the final record
Every result is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

import trio

from tests.channel.harness import agentlet


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def seller(data: Path, ledger: Path, listen: str) -> None:
    async with agentlet(data, ledger, listen=listen) as me:
        emit(address=me.node.address, peer_id=me.node.peer_id)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                emit(statistics=me.manager.statistics().__dict__)
                return


async def buyer(
    data: Path, ledger: Path, address: str, peer: str, payments: int, amount: int, close: bool
) -> None:
    async with agentlet(data, ledger) as me:
        await me.fund(ledger, 10_000_000)
        await me.node.connect(address, expect_peer=peer)
        cid = await me.manager.open(peer, "spindle-time", payments * amount + 1_000, 50)
        emit(channel_id=cid.hex(), opened=True)
        for i in range(payments):
            await me.manager.pay(cid, amount)
            if i % 200 == 0:
                emit(progress=i)
        record = await me.manager.wait_acked(cid)
        emit(signed=record.total, acked=record.acked_total)
        if close:
            record = await me.manager.close(cid)
        emit(state=record.state.value, total=record.total, close_txid=record.close_txid)


async def resume(data: Path, ledger: Path, address: str, peer: str) -> None:
    async with agentlet(data, ledger) as me:
        [(record, _)] = me.manager.records()
        cid = record.terms.channel_id
        emit(
            reloaded_signed=record.total,
            reloaded_acked=record.acked_total,
            state=record.state.value,
        )
        await me.node.connect(address, expect_peer=peer)
        await me.manager.peer_connected(peer)
        if record.state.value == "open":
            await me.manager.wait_acked(cid)
        final = await me.manager.close(cid)
        emit(state=final.state.value, total=final.total, close_txid=final.close_txid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["seller", "buyer", "resume"])
    parser.add_argument("data", type=Path)
    parser.add_argument("ledger", type=Path)
    parser.add_argument("address")
    parser.add_argument("peer", nargs="?")
    parser.add_argument("--payments", type=int, default=100)
    parser.add_argument("--amount", type=int, default=3)
    parser.add_argument("--no-close", action="store_true")
    args = parser.parse_args()
    if args.role == "seller":
        trio.run(seller, args.data, args.ledger, args.address)
    elif args.role == "buyer":
        trio.run(
            buyer,
            args.data,
            args.ledger,
            args.address,
            args.peer,
            args.payments,
            args.amount,
            not args.no_close,
        )
    else:
        trio.run(resume, args.data, args.ledger, args.address, args.peer)


if __name__ == "__main__":
    main()
