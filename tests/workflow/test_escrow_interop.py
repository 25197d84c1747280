"""Every escrow transaction passes an independent script interpreter: the TypeScript
reference `@bsv/sdk` (run by node) judges each way out of the escrow -- the release
(machine + inspector, or buyer + inspector), the return and the refund -- that the
LocalLedger accepted, and refuses one whose signature was changed. (The funding is a
wallet's P2PKH spend, as every other payment the agent makes.)"""

from __future__ import annotations

from pathlib import Path

from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import parse_exact
from tests.certs.node_sdk import NodeSdk
from tests.workflow.test_orders import funded_order


def _judge(sdk: NodeSdk, ledger: LocalLedger, raw: bytes) -> bool:
    tx = parse_exact(raw)
    sources = []
    for inp in tx.inputs:
        source = ledger.raw_tx(str(inp.source_txid))
        assert source is not None
        sources.append(source.hex())
    return bool(sdk.call("verifyScripts", tx=raw.hex(), sources=sources)["valid"])


def test_the_reference_sdk_accepts_every_escrow_transaction(
    tmp_path: Path, bsv_sdk: NodeSdk
) -> None:
    ways = {}
    with LocalLedger.create(tmp_path / "ledger.db") as ledger:
        for name in ("release", "buyer-release", "return", "refund"):
            order = funded_order(ledger, refund_blocks=6)
            if name == "refund":
                ledger.mine(6)
                raw = order.buyer.refund()
            else:
                verdict, body = order.verdict(name != "return")
                buyer_side = order.buyer.judged(verdict, body)
                if name == "release":
                    raw = order.machine.judged(verdict, body) or b""
                elif name == "buyer-release":
                    raw = order.buyer.release()
                else:
                    raw = buyer_side or b""
            ledger.submit(raw)  # the ledger's interpreter (bsv-sdk, Python) first
            ways[name] = raw
        for name, raw in ways.items():
            assert _judge(bsv_sdk, ledger, raw), name
        # A changed byte in a signature: the reference refuses it too.
        forged = bytearray(ways["release"])
        forged[50] ^= 0x01  # inside the first signature of the unlocking script
        try:
            valid = _judge(bsv_sdk, ledger, bytes(forged))
        except Exception:  # (the SDK may throw instead of answering false)
            valid = False
        assert not valid
