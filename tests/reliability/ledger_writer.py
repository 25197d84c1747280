"""The ledger-writer role: a process that keeps writing to a LocalLedger file.

It mints coins, submits chains of P2PKH spends (splits and merges, unconfirmed
parents included) and mines blocks, as fast as it can, and prints one JSON line after
each write returns -- so a test that kills it with SIGKILL knows which writes the
ledger had acknowledged.
"""

from __future__ import annotations

import argparse
import os
import random

from bsv.keys import PrivateKey
from bsv.transaction import Transaction

from mesh.chain.ledger import LocalLedger
from tests.chain.helpers import Coin, mint, p2pkh, spend
from tests.reliability.agent import emit


def write_forever(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    key = PrivateKey()
    coins: list[Coin] = []
    with LocalLedger.open(args.ledger) as ledger:
        emit("ready", pid=os.getpid(), height=ledger.height())
        while True:
            roll = rng.random()
            if roll < 0.15 or not coins:
                coin = mint(ledger, rng.randint(50_000, 200_000), key)
                coins.append(coin)
                emit("tx", txid=coin.tx.txid(), kind="mint")
            elif roll < 0.93:
                spent = rng.sample(coins, min(len(coins), rng.randint(1, 2)))
                for c in spent:
                    coins.remove(c)
                value = sum(c.satoshis for c in spent) - 300
                if value < 1_000:  # too small to spend alone: merge it with a new coin
                    fresh = mint(ledger, 50_000, key)
                    emit("tx", txid=fresh.tx.txid(), kind="mint")
                    spent.append(fresh)
                    value += 50_000
                if value > 4_000:  # split in two
                    first = rng.randint(1_000, value - 1_000)
                    outputs = [(p2pkh(key), first), (p2pkh(key), value - first)]
                else:
                    outputs = [(p2pkh(key), value)]
                tx: Transaction = spend(spent, outputs)
                txid = ledger.submit(tx.serialize())
                coins += [Coin(tx, vout, key) for vout in range(len(outputs))]
                emit("tx", txid=txid, kind="spend")
            else:
                blocks = ledger.mine(rng.randint(1, 3))
                emit("block", height=blocks[-1].height)
