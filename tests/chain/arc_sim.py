"""A local ARC simulator, with the WhatsOnChain endpoints `ArcChain` reads, on 127.0.0.1.

TEST-ONLY. It speaks ARC's documented endpoints — ``POST /v1/tx`` (JSON
``{"rawTx": hex}``), ``GET /v1/tx/{txid}``, ``GET /v1/policy`` — with the shapes of ARC's
OpenAPI document (bitcoin-sv/arc ``pkg/api/arc.yaml``) and the error statuses of its
``pkg/api/status.go``, and WhatsOnChain's ``/chain/info``, ``/block/{h}/header``,
``/address/{a}/unspent``, ``/tx/hash/{txid}``, ``/tx/{txid}/{vout}/spent`` and
``/tx/{txid}/hex`` under ``/woc``. Behind it is a real `LocalLedger`: what is valid, what
is spent and what gets mined is the ledger's decision. What it reproduces of ARC:

- statuses move RECEIVED → STORED → SEEN_ON_NETWORK (``stage_delay`` seconds apart) and
  to MINED when the ledger mines; a resubmitted transaction is answered with its status;
- a double spend is HTTP 200 + ``DOUBLE_SPEND_ATTEMPTED`` naming ``competingTxs``;
- rule failures are ARC's codes (fee 465, malformed 463, script 461, …, see
  `STATUS_FOR_RULE`); a raw (non-EF) submission is 460 while ``require_ef``; EF amounts
  or scripts that differ from the real outputs are 461, as ARC's script check would say;
- a transaction whose parent is unknown is held as an orphan (``SEEN_IN_ORPHAN_MEMPOOL``)
  and enters the mempool once the parent arrives;
- lock times are NOT checked at submission, as ARC does not: a non-final transaction is
  answered 200 (``ACCEPTED_BY_NETWORK``: a node holds it) and enters the mempool, to be
  mined, only after a block makes it final;
- injected trouble for the next ARC requests (``fail_next``): an HTTP status, a
  ``"timeout"`` (no answer for ``hang`` seconds) or ``"garbage"`` (200, not JSON);
  ``stale`` txids read ``MINED_IN_STALE_BLOCK`` until submitted again; ``api_key``
  makes every ARC request need ``Authorization: Bearer <key>`` (else 401).

It is not a model of ARC's internals, and nothing outside tests may use it.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bsv.transaction import Transaction

from mesh.chain.arc_ef import from_extended, is_extended
from mesh.chain.base import OutputState, TxState
from mesh.chain.errors import TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy
from mesh.chain.tx import p2pkh_script, parse_exact, txid_of

#: The ARC error status for each ledger rule (from ARC's validator, see module docstring).
STATUS_FOR_RULE = {
    "parse": 463,
    "empty": 462,
    "duplicate-input": 463,
    "oversize": 474,
    "output-value": 464,
    "dust": 464,
    "outputs-exceed-inputs": 465,
    "fee": 465,
    "script": 461,
    "script-size": 461,
    "spent-input": 462,
}
STAGES = ("RECEIVED", "STORED", "SEEN_ON_NETWORK")


@dataclass
class Seen:
    """One ARC request the simulator answered."""

    method: str
    path: str
    status: int | None = None  # None: left unanswered (an injected timeout)
    extended: bool | None = None  # for POST /v1/tx: did the body carry the EF marker
    authorization: str | None = None
    raw: bytes = b""  # for POST /v1/tx: the transaction bytes (EF as sent)


@dataclass
class Submitted:
    """A transaction ARC took: its bytes, since when, and where it stands."""

    raw: bytes
    at: float
    state: str = "accepted"  # accepted | orphan | held | double-spend | rejected
    competing: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class ArcSim:
    """The simulator's state and knobs (see the module docstring)."""

    ledger: LocalLedger
    url: str = ""
    stage_delay: float = 0.0
    require_ef: bool = True
    api_key: str | None = None
    fail_next: list[int | str] = field(default_factory=list)
    hang: float = 1.0
    stale: set[str] = field(default_factory=set)
    mining_fee: tuple[int, int] | None = None  # (satoshis, bytes); None: the ledger's rate
    clock: Callable[[], float] = time.monotonic  # paces the stages
    requests: list[Seen] = field(default_factory=list)
    woc_requests: list[str] = field(default_factory=list)
    txs: dict[str, Submitted] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def posts(self) -> list[Seen]:
        """The ``POST /v1/tx`` requests so far."""
        return [r for r in self.requests if r.method == "POST"]

    def mine(self, count: int = 1) -> None:
        """Mine with the ledger, then let held and orphan transactions in if they now can."""
        with self.lock:
            self.ledger.mine(count)
            self._retry_waiting()

    # ---------------------------------------------------------------- ARC's answers

    def submit(self, hex_tx: str) -> tuple[int, dict[str, Any]]:
        """``POST /v1/tx``: the status code and body ARC would answer."""
        try:
            data = bytes.fromhex(hex_tx)
        except ValueError:
            return _problem(400, None, "rawTx is not hex")
        if not is_extended(data):
            if self.require_ef:
                return _problem(460, None, "transaction is not in extended format")
            raw, prevouts = data, None
        else:
            try:
                raw, prevouts = from_extended(data)
            except ValueError as exc:
                return _problem(463, None, str(exc))
        try:
            txid = txid_of(raw)
            tx = parse_exact(raw)
        except TxRejected as exc:
            return _problem(463, None, exc.detail)
        with self.lock:
            if txid in self.txs or self.ledger.status(txid).state is not TxState.UNKNOWN:
                self.stale.discard(txid)  # ARC takes a resubmission as news of the tx
                return 200, self._status_body(txid) or {}
            if prevouts is not None and (wrong := self._ef_mismatch(tx, prevouts)):
                return _problem(461, txid, wrong)
            return self._accept(txid, raw, tx)

    def status(self, txid: str) -> tuple[int, dict[str, Any]]:
        """``GET /v1/tx/{txid}``."""
        with self.lock:
            body = self._status_body(txid)
        return (200, body) if body else _problem(404, txid, "")

    def policy_body(self) -> dict[str, Any]:
        """``GET /v1/policy``."""
        policy: Policy = self.ledger.policy
        satoshis, per = self.mining_fee or (policy.fee_rate, 1000)
        return {
            "policy": {
                "maxscriptsizepolicy": policy.max_script_size,
                "maxtxsigopscountspolicy": 4294967295,
                "maxtxsizepolicy": policy.max_tx_size,
                "miningFee": {"satoshis": satoshis, "bytes": per},
                "standardFormatSupported": not self.require_ef,
            },
            "timestamp": _now(),
        }

    def _accept(self, txid: str, raw: bytes, tx: Transaction) -> tuple[int, dict[str, Any]]:
        try:
            self.ledger.submit(raw)
        except TxRejected as exc:
            if exc.rule in ("missing-input", "non-final"):
                state = "orphan" if exc.rule == "missing-input" else "held"
                self.txs[txid] = Submitted(raw, self.clock(), state)
                return 200, self._status_body(txid) or {}
            if exc.rule == "double-spend":
                competing = [
                    spender
                    for inp in tx.inputs
                    if (
                        spender := self.ledger.output(
                            inp.source_txid, inp.source_output_index
                        ).spent_by
                    )
                ]
                self.txs[txid] = Submitted(raw, self.clock(), "double-spend", competing)
                return 200, self._status_body(txid) or {}
            code = STATUS_FOR_RULE.get(exc.rule, 409)
            return _problem(code, txid, f"arc error {code}: {exc.rule}: {exc.detail}")
        self.txs[txid] = Submitted(raw, self.clock())
        self._retry_waiting()
        return 200, self._status_body(txid) or {}

    def _ef_mismatch(self, tx: Transaction, prevouts: list[Any]) -> str:
        """Why the EF fields disagree with the real spent outputs ("" when they agree)."""
        for index, (inp, prevout) in enumerate(zip(tx.inputs, prevouts, strict=True)):
            real = self.ledger.output(inp.source_txid, inp.source_output_index)
            if real.state is OutputState.UNKNOWN:
                continue  # an orphan's parent: ARC cannot know either
            if (real.satoshis, real.script) != (prevout.satoshis, prevout.locking_script):
                return f"input {index}: EF amount or script differs from the spent output"
        return ""

    def _retry_waiting(self) -> None:
        """Let orphans whose parents arrived, and held transactions now final, in."""
        progress = True
        while progress:
            progress = False
            for sub in self.txs.values():
                if sub.state not in ("orphan", "held"):
                    continue
                try:
                    self.ledger.submit(sub.raw)
                except TxRejected as exc:
                    if exc.rule in ("missing-input", "non-final"):
                        sub.state = "orphan" if exc.rule == "missing-input" else "held"
                    else:
                        sub.state, sub.reason = "rejected", f"{exc.rule}: {exc.detail}"
                    continue
                sub.state, sub.at, progress = "accepted", self.clock(), True

    def _status_body(self, txid: str) -> dict[str, Any] | None:
        ledger = self.ledger.status(txid)
        sub = self.txs.get(txid)
        body: dict[str, Any] = {
            "txid": txid,
            "blockHash": "",
            "blockHeight": 0,
            "merklePath": "",
            "extraInfo": "",
            "competingTxs": None,
            "timestamp": _now(),
            "status": 200,
            "title": "OK",
        }
        if ledger.state is TxState.MINED:
            if txid in self.stale:
                return body | {"txStatus": "MINED_IN_STALE_BLOCK"}
            proof = self.ledger.merkle_proof(txid)
            return body | {
                "txStatus": "MINED",
                "blockHash": ledger.block_hash,
                "blockHeight": ledger.block_height,
                "merklePath": proof.to_hex() if proof else "",
            }
        if sub is None:
            return (
                body | {"txStatus": "SEEN_ON_NETWORK"} if ledger.state is TxState.PENDING else None
            )
        if sub.state == "orphan":
            return body | {"txStatus": "SEEN_IN_ORPHAN_MEMPOOL"}
        if sub.state == "held":
            return body | {"txStatus": "ACCEPTED_BY_NETWORK"}
        if sub.state == "double-spend":
            return body | {"txStatus": "DOUBLE_SPEND_ATTEMPTED", "competingTxs": sub.competing}
        if sub.state == "rejected":
            return body | {"txStatus": "REJECTED", "extraInfo": sub.reason}
        stage = 0 if self.stage_delay <= 0 else int((self.clock() - sub.at) / self.stage_delay)
        return body | {"txStatus": STAGES[-1 if self.stage_delay <= 0 else min(stage, 2)]}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _problem(status: int, txid: str | None, extra: str) -> tuple[int, dict[str, Any]]:
    """An RFC 7807 error body as ARC sends it."""
    titles = {
        400: "Bad request",
        401: "Unauthorized",
        404: "Not found",
        409: "Generic error",
        460: "Not extended format",
        461: "Malformed transaction",
        462: "Invalid inputs",
        463: "Malformed transaction",
        464: "Invalid outputs",
        465: "Fee too low",
        474: "Transaction size validation failed",
    }
    title = titles.get(status, "Error")
    return status, {
        "type": f"https://bitcoin-sv.github.io/arc/#/errors?id=_{status}",
        "title": title,
        "status": status,
        "detail": title,
        "instance": None,
        "txid": txid,
        "extraInfo": extra,
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _arc_gate(self, seen: Seen) -> bool:
        """Record an ARC request and apply auth and injected trouble; False if answered."""
        sim = self.server.sim
        seen.authorization = self.headers.get("Authorization")
        with sim.lock:
            sim.requests.append(seen)
            trouble = sim.fail_next.pop(0) if sim.fail_next else None
        if sim.api_key is not None and seen.authorization != f"Bearer {sim.api_key}":
            seen.status = 401
            self._send(*_problem(401, None, "invalid API key"))
            return False
        if trouble == "timeout":
            time.sleep(sim.hang)  # the client has given up by now
            return False
        if trouble == "garbage":
            seen.status = 200
            self._send(200, b"<html>upstream hiccup</html>", "text/html")
            return False
        if isinstance(trouble, int):
            seen.status = trouble
            self._send(trouble, {"error": "injected"})
            return False
        return True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/tx":
            self._send(*_problem(404, None, self.path))
            return
        seen = Seen("POST", self.path)
        if not self._arc_gate(seen):
            return
        try:
            hex_tx = json.loads(body)["rawTx"]
            seen.raw = bytes.fromhex(hex_tx)
        except (ValueError, KeyError, TypeError):
            seen.status = 400
            self._send(*_problem(400, None, "expected JSON {rawTx: hex}"))
            return
        seen.extended = is_extended(seen.raw)
        seen.status, answer = self.server.sim.submit(hex_tx)
        self._send(seen.status, answer)

    def do_GET(self) -> None:
        if self.path.startswith("/woc/"):
            self.server.sim.woc_requests.append(self.path[4:])
            self._woc(self.path[4:])
            return
        seen = Seen("GET", self.path)
        if not self._arc_gate(seen):
            return
        sim = self.server.sim
        if match := re.fullmatch(r"/v1/tx/([0-9a-f]{64})", self.path):
            seen.status, body = sim.status(match.group(1))
        elif self.path == "/v1/policy":
            with sim.lock:
                seen.status, body = 200, sim.policy_body()
        else:
            seen.status, body = _problem(404, None, self.path)
        self._send(seen.status, body)

    def _woc(self, path: str) -> None:
        sim = self.server.sim
        ledger = sim.ledger
        if match := re.fullmatch(r"/block/(\d+)/header", path):
            with sim.lock:
                block = ledger.block(int(match.group(1)))
            if block is None:
                self._send(404, {"error": "not found"})
                return
            header = {"hash": block.hash, "height": block.height, "merkleroot": block.merkle_root}
            self._send(200, header | {"time": block.time})
        elif path == "/chain/info":
            with sim.lock:
                self._send(200, {"chain": "test", "blocks": ledger.height()})
        elif match := re.fullmatch(r"/address/(\w+)/unspent", path):
            with sim.lock:
                utxos = ledger.utxos(p2pkh_script(match.group(1)))
            entries = [
                {"height": u.block_height or 0, "tx_pos": u.vout, "tx_hash": u.txid}
                | {"value": u.satoshis}
                for u in utxos
            ]
            self._send(200, entries)
        elif match := re.fullmatch(r"/tx/hash/([0-9a-f]{64})", path):
            with sim.lock:
                raw = ledger.raw_tx(match.group(1))
                height = ledger.status(match.group(1)).block_height
            if raw is None:
                self._send(404, b"Not Found", "text/plain")
                return
            self._send(200, _woc_tx(Transaction.from_hex(raw), height))
        elif match := re.fullmatch(r"/tx/([0-9a-f]{64})/hex", path):
            with sim.lock:
                raw = ledger.raw_tx(match.group(1))
            if raw is None:
                self._send(404, b"Not Found", "text/plain")
                return
            self._send(200, raw.hex().encode(), "text/plain")
        elif match := re.fullmatch(r"/tx/([0-9a-f]{64})/(\d+)/spent", path):
            self._woc_spent(match.group(1), int(match.group(2)))
        else:
            self._send(404, b"Not Found", "text/plain")

    def _woc_spent(self, txid: str, vout: int) -> None:
        ledger = self.server.sim.ledger
        with self.server.sim.lock:
            output = ledger.output(txid, vout)
            spender = ledger.raw_tx(output.spent_by) if output.spent_by else None
            mined = output.spent_by and ledger.status(output.spent_by).block_height
        if output.state is not OutputState.SPENT or spender is None:
            self._send(404, b"Not Found", "text/plain")
            return
        inputs = Transaction.from_hex(spender).inputs
        vin = next(
            i
            for i, inp in enumerate(inputs)
            if (inp.source_txid, inp.source_output_index) == (txid, vout)
        )
        status = "confirmed" if mined is not None else "unconfirmed"
        self._send(200, {"txid": output.spent_by, "vin": vin, "status": status})


def _woc_tx(tx: Transaction, block_height: int | None) -> dict[str, Any]:
    """WhatsOnChain's ``/tx/hash`` shape: values in BSV, scripts in hex."""
    body: dict[str, Any] = {
        "txid": tx.txid(),
        "hash": tx.txid(),
        "version": tx.version,
        "size": len(tx.serialize()),
        "locktime": tx.locktime,
        "vin": [
            {"txid": inp.source_txid, "vout": inp.source_output_index, "sequence": inp.sequence}
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


class _Server(ThreadingHTTPServer):
    sim: ArcSim

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that timed out on an injected hang: expected
        super().handle_error(request, client_address)


@contextmanager
def serve(path: Path, *, fee_rate: int = 1, **knobs: Any) -> Iterator[ArcSim]:
    """Run the simulator on an ephemeral 127.0.0.1 port over a new ledger at `path`.

    `fee_rate` is the ledger's (and so ARC's) sat/kB; `knobs` set `ArcSim` fields.
    """
    ledger = LocalLedger.create(path, policy=Policy(fee_rate=fee_rate), check_same_thread=False)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.sim = ArcSim(ledger, f"http://127.0.0.1:{server.server_address[1]}", **knobs)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.sim
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        ledger.close()
