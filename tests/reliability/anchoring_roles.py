"""The anchoring-agent role of the reliability helper process.

anchorer  log signed records on two streams as fast as `log` returns (each reported
          once it returned, i.e. once durable), batch them small and often, fund and
          broadcast anchors, and mine the shared ledger every 0.3 s -- until killed.
          With `--settle`: reload, anchor whatever is left, wait until every anchor is
          mined, then prove every record the store holds against the ledger's
          header chain, audit every stream, and report.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Awaitable, Callable

import trio

from mesh.anchoring import (
    AnchorConfig,
    Anchorer,
    BatchPolicy,
    HeaderChain,
    SignedRecord,
    audit,
    open_record,
    verify_proof,
)
from mesh.anchoring.errors import AnchoringError
from mesh.chain.local import LocalChain
from mesh.chain.wallet import Wallet
from tests.anchoring.helpers import fund, open_store
from tests.channel.harness import identity_at
from tests.reliability.agent import emit
from tests.reliability.channel_roles import arm_kill

STREAMS = ("vibration", "meter")


async def anchorer(args: argparse.Namespace) -> None:
    arm_kill(args.kill_at)
    rng = random.Random(args.seed)
    identity = identity_at(args.data / "identity.key")
    store = open_store(args.data)
    chain = LocalChain.open(args.ledger)
    limiter = trio.CapacityLimiter(1)
    try:
        wallet = Wallet(store, identity)
        if wallet.balance().available + wallet.balance().reserved == 0:
            fund(args.ledger, wallet, (1_000_000,))
        config = AnchorConfig(
            batch=BatchPolicy(max_records=rng.randint(3, 40), max_age=0.3),
            confirm_interval=0.2,
            retry_interval=0.3,
        )
        service = Anchorer(identity, store, wallet, chain, config=config, db_limiter=limiter)
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            if args.settle:
                await settle(service, chain, wallet)
            else:
                nursery.start_soon(chain.run_miner, 0.3)
                emit("ready", pid=os.getpid(), peer_id=identity.peer_id)
                while True:
                    stream = rng.choice(STREAMS)
                    payloads = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
                    for signed in await service.log_many(stream, payloads):
                        emit("logged", stream=stream, seq=signed.seq, hash=signed.hash.hex())
            nursery.cancel_scope.cancel()
    finally:
        chain.close()
        store.close()


async def settle(service: Anchorer, chain: LocalChain, wallet: Wallet) -> None:
    """Anchor and mine everything, then prove and audit every stored record."""
    with trio.fail_after(60):
        while True:
            try:
                await service.anchor_now()
                break
            except AnchoringError as exc:
                emit("retry", error=str(exc))
                await trio.sleep(0.3)
        await chain.mine()
        await service.wait_mined()
    headers = HeaderChain.from_ledger(chain.ledger)
    agent = service.identity.public_key
    verified: dict[str, list[str]] = {}
    records: list[SignedRecord] = []
    for summary in service.records.streams():
        hashes = verified.setdefault(summary.stream, [])
        for seq in range(summary.records):
            proof = service.records.proof(agent, summary.stream, seq)
            hashes.append(verify_proof(proof, headers).record_hash.hex())
            records.append(open_record(proof.body, proof.signature))
    findings = [f"{f.kind} {f.stream}/{f.seq}" for f in audit(records, agent=agent)]
    balance = wallet.balance()
    emit(
        "settled",
        verified=verified,
        findings=findings,
        available=balance.available,
        reserved=balance.reserved,
    )


ROLES: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {"anchorer": anchorer}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settle", action="store_true")
