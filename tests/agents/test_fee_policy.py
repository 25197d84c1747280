"""Channel fees follow the network's fee policy, with real `mesh run` agents on a real
ledger whose policy asks 500 sat/kB.

Before: the wallet funded at the default 1 sat/kB and every close and refund was signed
at a fixed 10 sat, so on a network asking more the funding was refused and, had it gone
through, every presigned close and refund would have been stranded below the policy.
Now the wallet funds at the ledger's rate, and each channel's close and refund fees are
the policy's fee for those transactions at their largest, with headroom
(`mesh.channel.fees`): the channels open, are paid on, and close on chain.
"""

from __future__ import annotations

from pathlib import Path

from mesh.chain.base import TxState
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy
from mesh.chain.tx import parse_exact
from mesh.channel.fees import CLOSE_TX_MAX_SIZE, REFUND_TX_MAX_SIZE
from mesh.channel.state import Role
from mesh.channel.store import ChannelStore
from mesh.store import Store
from tests.discovery.agents import FEED, WANT_40, RunningAgent

RATE = 500  # sat/kB: 134 sat for a close at its largest


def test_channels_open_and_close_at_the_networks_fee_rate(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    policy = Policy(fee_rate=RATE)
    LocalLedger.create(ledger, policy=policy).close()
    seller = RunningAgent(tmp_path, ledger, "seller", "127.0.0.1", "tcp://127.0.0.1:0", FEED)
    buyer = RunningAgent(
        tmp_path, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", WANT_40, funds=100_000
    )
    try:
        buyer.wait(lambda s: s["wants"][0]["state"] == "done", 60, "the want done")
    finally:
        buyer.stop()
        seller.stop()  # the payee closes its channels as it stops
    with Store(seller.data / "agent.db") as store:
        channels = [
            item.record
            for item in ChannelStore(store).load(include_final=True)
            if item.record.role is Role.PAYEE
        ]
    assert channels
    with LocalLedger.open(ledger) as chain:
        chain.mine()
        for record in channels:
            terms = record.terms
            assert terms.close_fee >= 2 * policy.required_fee(CLOSE_TX_MAX_SIZE), terms
            assert terms.refund_fee >= 2 * policy.required_fee(REFUND_TX_MAX_SIZE), terms
            assert record.close_txid, record
            assert chain.status(record.close_txid).state is TxState.MINED
            raw = chain.raw_tx(record.close_txid)
            assert raw is not None
            close = parse_exact(raw)
            paid = sum(int(o.satoshis) for o in close.outputs)
            assert terms.capacity - paid == terms.close_fee  # the fee the terms fixed
