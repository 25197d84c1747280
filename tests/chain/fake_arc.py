"""A stand-in for ARC and WhatsOnChain on 127.0.0.1, for protocol-contract tests only.

It speaks the documented endpoints our `ArcChain` uses — ARC ``POST /v1/tx`` (JSON
``{"rawTx": hex}``, raw or extended format) and ``GET /v1/tx/{txid}``, and WhatsOnChain
``GET /block/{height}/header``, ``/chain/info``, ``/address/{address}/unspent``,
``/tx/hash/{txid}`` and ``/tx/{txid}/{vout}/spent`` (404 while unspent) under ``/woc`` —
with response shapes taken from ARC's OpenAPI document, status codes from its
``pkg/api/status.go``, and WhatsOnChain's API documentation. Behind it is a real
`LocalLedger`, so what it accepts, rejects and proves is decided by the ledger's rules.
It is not a model of ARC's internals and must not be used outside tests.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bsv.transaction import Transaction
from bsv.utils import Reader, unsigned_to_varint

from mesh.chain.base import OutputState
from mesh.chain.errors import TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.tx import p2pkh_script

EF_MARKER = bytes.fromhex("0000000000ef")
STATUS_FOR_RULE = {
    "parse": 463,
    "empty": 463,
    "duplicate-input": 463,
    "oversize": 463,
    "output-value": 464,
    "outputs-exceed-inputs": 464,
    "fee": 465,
    "script": 461,
    "missing-input": 462,
    "spent-input": 462,
    "non-final": 409,
}


def ef_to_raw(ef: bytes) -> bytes:
    """Strip the extended-format additions (previous amounts and scripts)."""
    reader = Reader(ef)
    version = reader.read(4)
    if reader.read(6) != EF_MARKER:
        raise ValueError("not extended format")
    count = reader.read_var_int_num()
    raw = version + unsigned_to_varint(count)
    for _ in range(count):
        outpoint = reader.read(36)
        script = reader.read(reader.read_var_int_num())
        sequence = reader.read(4)
        reader.read(8)
        reader.read(reader.read_var_int_num())
        raw += outpoint + unsigned_to_varint(len(script)) + script + sequence
    rest: bytes = reader.read()
    return raw + rest


@dataclass
class FakeArc:
    """The server's state: the ledger behind it and what it was sent."""

    ledger: LocalLedger
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mine(self) -> None:
        with self.lock:
            self.ledger.mine()


def _now() -> str:
    return datetime.now(UTC).isoformat()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _problem(self, status: int, title: str, txid: str | None, extra: str) -> None:
        self._send(
            status,
            {
                "type": f"https://bitcoin-sv.github.io/arc/#/errors?id=_{status}",
                "title": title,
                "status": status,
                "detail": title,
                "instance": None,
                "txid": txid,
                "extraInfo": extra,
            },
        )

    def do_POST(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/tx":
            self._problem(404, "Not found", None, self.path)
            return
        try:
            hex_tx = json.loads(body)["rawTx"]
            raw = bytes.fromhex(hex_tx)
        except (ValueError, KeyError, TypeError):
            self._problem(400, "Bad request", None, "expected JSON {rawTx: hex}")
            return
        extended = raw[4:10] == EF_MARKER
        fake.requests.append(
            {"authorization": self.headers.get("Authorization"), "extended": extended}
        )
        try:
            raw = ef_to_raw(raw) if extended else raw
            with fake.lock:
                txid = fake.ledger.submit(raw)
                status = fake.ledger.status(txid)
        except TxRejected as exc:
            if exc.rule == "double-spend":
                winner = exc.detail.split("spent by ")[1].split()[0]
                self._send(
                    200,
                    {
                        **_status_body(exc.txid or "", None),
                        "competingTxs": [winner],
                        "txStatus": "DOUBLE_SPEND_ATTEMPTED",
                    },
                )
                return
            code = STATUS_FOR_RULE.get(exc.rule, 409)
            self._problem(code, "Rejected", exc.txid, f"arc error {code}: {exc.detail}")
            return
        except ValueError as exc:
            self._problem(463, "Malformed transaction", None, str(exc))
            return
        self._send(200, _status_body(txid, status.block_height))

    def do_GET(self) -> None:
        fake = self.server.fake
        if match := re.fullmatch(r"/v1/tx/([0-9a-f]{64})", self.path):
            txid = match.group(1)
            with fake.lock:
                status = fake.ledger.status(txid)
                proof = fake.ledger.merkle_proof(txid)
            if status.state.value == "unknown":
                self._problem(404, "Not found", txid, "")
                return
            body = _status_body(txid, status.block_height)
            if status.block_height is not None:
                body |= {
                    "blockHash": status.block_hash,
                    "merklePath": proof.to_hex() if proof else "",
                }
            self._send(200, body)
        elif match := re.fullmatch(r"/woc/block/(\d+)/header", self.path):
            with fake.lock:
                block = fake.ledger.block(int(match.group(1)))
            if block is None:
                self._send(404, {"error": "not found"})
                return
            self._send(
                200,
                {
                    "hash": block.hash,
                    "height": block.height,
                    "merkleroot": block.merkle_root,
                    "time": block.time,
                },
            )
        elif self.path == "/woc/chain/info":
            with fake.lock:
                height = fake.ledger.height()
            self._send(200, {"chain": "test", "blocks": height})
        elif match := re.fullmatch(r"/woc/address/(\w+)/unspent", self.path):
            with fake.lock:
                utxos = fake.ledger.utxos(p2pkh_script(match.group(1)))
            self._send(
                200,
                [
                    {
                        "height": u.block_height or 0,
                        "tx_pos": u.vout,
                        "tx_hash": u.txid,
                        "value": u.satoshis,
                    }
                    for u in utxos
                ],
            )
        elif match := re.fullmatch(r"/woc/tx/hash/([0-9a-f]{64})", self.path):
            with fake.lock:
                raw = fake.ledger.raw_tx(match.group(1))
                status = fake.ledger.status(match.group(1))
            if raw is None:
                self._send_text(404, "Not Found")
                return
            self._send(200, _woc_tx(Transaction.from_hex(raw), status.block_height))
        elif match := re.fullmatch(r"/woc/tx/([0-9a-f]{64})/(\d+)/spent", self.path):
            txid, vout = match.group(1), int(match.group(2))
            with fake.lock:
                output = fake.ledger.output(txid, vout)
                spender = fake.ledger.raw_tx(output.spent_by) if output.spent_by else None
                mined = output.spent_by and fake.ledger.status(output.spent_by).block_height
            if output.state is not OutputState.SPENT or spender is None:
                self._send_text(404, "Not Found")
                return
            inputs = Transaction.from_hex(spender).inputs
            vin = next(
                i
                for i, inp in enumerate(inputs)
                if (inp.source_txid, inp.source_output_index) == (txid, vout)
            )
            self._send(
                200,
                {
                    "txid": output.spent_by,
                    "vin": vin,
                    "status": "confirmed" if mined is not None else "unconfirmed",
                },
            )
        else:
            self._problem(404, "Not found", None, self.path)


def _woc_tx(tx: Transaction, block_height: int | None) -> dict[str, Any]:
    """WhatsOnChain's ``/tx/hash`` shape: values in BSV, scripts in hex."""
    body: dict[str, Any] = {
        "txid": tx.txid(),
        "hash": tx.txid(),
        "version": tx.version,
        "size": len(tx.serialize()),
        "locktime": tx.locktime,
        "vin": [
            {
                "txid": inp.source_txid,
                "vout": inp.source_output_index,
                "scriptSig": {"hex": inp.unlocking_script.hex() if inp.unlocking_script else ""},
                "sequence": inp.sequence,
            }
            for inp in tx.inputs
        ],
        "vout": [
            {
                "value": out.satoshis / 100_000_000,
                "n": n,
                "scriptPubKey": {"hex": out.locking_script.hex(), "isTruncated": False},
            }
            for n, out in enumerate(tx.outputs)
        ],
    }
    if block_height is not None:
        body |= {"blockheight": block_height, "confirmations": 1}
    return body


def _status_body(txid: str, block_height: int | None) -> dict[str, Any]:
    return {
        "txid": txid,
        "txStatus": "MINED" if block_height is not None else "SEEN_ON_NETWORK",
        "status": 200,
        "title": "OK",
        "blockHash": "",
        "blockHeight": block_height or 0,
        "merklePath": "",
        "extraInfo": "",
        "competingTxs": None,
        "timestamp": _now(),
    }


class _Server(ThreadingHTTPServer):
    fake: FakeArc


@contextmanager
def serve(path: Path) -> Iterator[FakeArc]:
    """Run the fake on an ephemeral 127.0.0.1 port over a new ledger at `path`."""
    ledger = LocalLedger.create(path, check_same_thread=False)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakeArc(ledger, f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        ledger.close()
