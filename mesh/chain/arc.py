"""`ArcChain`: the `Chain` interface over ARC (broadcast, status, proofs, policy) and
WhatsOnChain (headers, height, UTXOs, single outputs, parents), for testnet and mainnet.

What it does before anything reaches ARC, because ARC will not:
- **Lock times.** ARC does not check them (a node holds or drops a non-final
  transaction later, and ARC still answers 200). `broadcast` refuses a non-final
  transaction itself with `TxRejected("non-final")`, judged by SV Node's (later) rule
  against WhatsOnChain's height; for a time lock, the current time stands in for the
  median time past, which it always exceeds, so a lock that has not passed by the clock
  is refused and one that has passed by less than an hour may still wait at the node.
- **Extended Format.** Every transaction goes out in EF (BRC-30); spent outputs the
  transaction does not carry are filled from its parents' bytes, fetched from
  WhatsOnChain (``GET /tx/{txid}/hex``, cached) and checked by hash
  (`mesh.chain.arc_ef`). A parent nobody knows is `TxRejected("missing-input")`, sent
  nowhere.

How ARC's answers are read: every answer becomes one typed outcome in
`mesh.chain.arc_status` (HTTP 200 + ``DOUBLE_SPEND_ATTEMPTED`` is a double spend,
``REJECTED`` a rejection, …); this shell only acts on it. `broadcast` retries transient
failures (timeouts, 5xx, 409, unreadable answers) with capped, jittered back-off, then
raises `ChainUnavailable`; a transaction ARC already holds is success (idempotent).
`wait_mined` polls until the transaction is in a block, submitting it again when ARC
has lost it or saw it in a stale block, and its parents first when it is an orphan.

How it runs under Trio: ARC requests go through bsv-sdk's synchronous HTTP client in
`trio.to_thread`, with the headers of bsv-sdk's `ARC` broadcaster (API key, deployment
id). We do not call the broadcaster's own `sync_broadcast`: it reports
``DOUBLE_SPEND_ATTEMPTED`` as success, sends the raw format whenever one input has no
linked parent, and folds exceptions and HTTP statuses into one ``code``.

Configuration comes from `ArcSettings` (environment: ``M2MESH_NETWORK``,
``M2MESH_ARC_URL``, ``M2MESH_ARC_API_KEY``, ``M2MESH_WOC_URL``, ``M2MESH_WOC_API_KEY``);
the only host names in this module are the documented defaults in `DEFAULT_ARC_URLS`
(the WhatsOnChain default is bsv-sdk's own).

This module never signs or stores transactions; it checks only what ARC does not.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from bsv.broadcasters.arc import ARC, ARCConfig
from bsv.http_client import HttpResponse, SyncHttpClient
from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction

from mesh.chain.arc_ef import fill_prevouts, known_prevouts, parents_needed, to_extended
from mesh.chain.arc_policy import policy_from_arc
from mesh.chain.arc_status import (
    Accepted,
    ArcOutcome,
    ArcReply,
    AuthFailed,
    DoubleSpend,
    Mined,
    NotFound,
    Orphan,
    PollSchedule,
    Rejected,
    StaleBlock,
    Transient,
    classify,
    next_poll_delay,
    same_state,
)
from mesh.chain.arc_woc import TrioHttpClient, Woc, woc_output
from mesh.chain.base import OutputStatus, TxState, TxStatus, Utxo
from mesh.chain.errors import ChainAuthError, ChainError, ChainUnavailable, TxRejected
from mesh.chain.rules import Policy, Tip, check_final
from mesh.chain.spv import ChainBackedTracker
from mesh.chain.tx import SEQUENCE_FINAL, parse_exact, tx_id, txid_of

__all__ = [
    "DEFAULT_ARC_URLS",
    "GENESIS",
    "NETWORKS",
    "ArcChain",
    "ArcSettings",
    "TrioHttpClient",
    "woc_output",
]

#: Documented defaults, used only when ``M2MESH_ARC_URL`` is not set.
DEFAULT_ARC_URLS = {"main": "https://arc.taal.com", "test": "https://arc-test.taal.com"}
NETWORKS = ("main", "test")
GENESIS = {
    "main": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    "test": "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
}
"""The genesis block hash of each network: its network id (`Chain.network_id`)."""

_TXID = re.compile(r"[0-9a-f]{64}")
POLICY_TTL = 300.0  # seconds a `/v1/policy` answer is reused
HEIGHT_TTL = 10.0  # seconds a `/chain/info` height is reused (blocks: ~600 s apart)


@dataclass(frozen=True)
class ArcSettings:
    """Where ARC and WhatsOnChain are and how to authenticate."""

    arc_url: str
    network: str = "main"
    api_key: str | None = None
    woc_url: str | None = None  # None: bsv-sdk's WhatsOnChain URL for `network`
    woc_api_key: str | None = None
    timeout: float = 30  # seconds per HTTP request

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise ChainError(f"network must be one of {NETWORKS}, not {self.network!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ArcSettings:
        """Settings from ``M2MESH_*`` environment variables, with documented defaults."""
        source = os.environ if env is None else env
        network = source.get("M2MESH_NETWORK", "main")
        if network not in NETWORKS:
            raise ChainError(f"M2MESH_NETWORK must be one of {NETWORKS}, not {network!r}")
        return cls(
            arc_url=source.get("M2MESH_ARC_URL") or DEFAULT_ARC_URLS[network],
            network=network,
            api_key=source.get("M2MESH_ARC_API_KEY") or None,
            woc_url=source.get("M2MESH_WOC_URL") or None,
            woc_api_key=source.get("M2MESH_WOC_API_KEY") or None,
        )


class ArcChain:
    """A `Chain` over the BSV network through ARC and WhatsOnChain.

    `schedule` paces polls and retries; `clock` (wall time, seconds) bounds the median
    time past for time locks; `draw` is the jitter source (uniform in [0, 1)).
    """

    def __init__(
        self,
        settings: ArcSettings,
        *,
        http: SyncHttpClient | None = None,
        schedule: PollSchedule | None = None,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        policy_ttl: float = POLICY_TTL,
        height_ttl: float = HEIGHT_TTL,
    ) -> None:
        self.settings = settings
        self._http = http or SyncHttpClient(default_timeout=math.ceil(settings.timeout))
        self._url = settings.arc_url.rstrip("/")
        self._arc = ARC(self._url, ARCConfig(api_key=settings.api_key, sync_http_client=self._http))
        self._woc = Woc(
            settings.network,
            self._http,
            url=settings.woc_url,
            api_key=settings.woc_api_key,
            timeout=settings.timeout,
        )
        self._schedule = schedule or PollSchedule()
        self._clock = clock
        self._draw = draw
        self._policy_ttl = policy_ttl
        self._height_ttl = height_ttl
        self._height: tuple[float, int] | None = None
        self._policy: tuple[float, Policy] | None = None

    def tracker(self) -> ChainBackedTracker:
        """A bsv-sdk `ChainTracker` over this chain (WhatsOnChain headers)."""
        return ChainBackedTracker(self)

    # ---------------------------------------------------------------- sending

    async def broadcast(self, tx: Transaction) -> str:
        """Check finality, build EF, submit to ARC; return the txid or raise.

        `TxRejected` names the rule (``non-final`` before anything is sent,
        ``missing-input`` for a parent nobody knows, ``double-spend`` with the competing
        txids, ARC's rule otherwise); `ChainUnavailable` after the retries ran out;
        `ChainAuthError` for refused credentials. A transaction ARC already holds, in
        any live state, is success.
        """
        raw: bytes = tx.serialize()
        txid = txid_of(raw)
        await self._check_final(tx, txid)
        ef = await self._extended(tx, raw)
        outcome = await self._submit(ef, txid)
        _raise_failure(outcome, txid)
        return txid

    async def broadcast_raw(self, raw: bytes) -> str:
        """`broadcast` for serialised bytes (`TxRejected("parse")` when they are not
        exactly one transaction)."""
        return await self.broadcast(parse_exact(raw))

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    async def wait_mined(self, tx: Transaction, *, timeout: float | None = None) -> TxStatus:
        """Poll ARC until `tx` is mined; return its MINED status (height, block hash).

        Submits `tx` again when ARC has no record of it or saw it in a stale block, and
        its unknown parents first when it is an orphan; waits with `schedule`'s
        back-off; keeps going through transient failures. Raises `TxRejected` when `tx`
        is a double spend or rejected (or, submitted again, refused: ``non-final``,
        ``missing-input``) and `trio.TooSlowError` after `timeout` seconds (None: no
        limit).
        """
        with trio.fail_after(math.inf if timeout is None else timeout):
            return await self._wait_mined(tx)

    async def _wait_mined(self, tx: Transaction) -> TxStatus:
        txid = tx_id(tx)
        last: ArcOutcome | None = None
        attempt = 0
        while True:
            outcome = await self._poll(txid)
            if isinstance(outcome, Mined):
                return TxStatus(txid, TxState.MINED, outcome.height, outcome.block_hash, "MINED")
            _raise_failure(outcome, txid)
            if isinstance(outcome, Orphan):
                await self._resubmit_parents(tx)
            if isinstance(outcome, Orphan | NotFound | StaleBlock):
                await self._resubmit(tx)
            attempt = attempt + 1 if same_state(last, outcome) else 0
            last = outcome
            await trio.sleep(next_poll_delay(self._schedule, attempt, outcome, self._draw()))

    async def _resubmit(self, tx: Transaction) -> None:
        """Submit again; a transient failure is left for the next poll to retry."""
        try:
            await self.broadcast(tx)
        except ChainUnavailable:
            return

    async def _resubmit_parents(self, tx: Transaction) -> None:
        """Submit each parent of `tx` that ARC has no record of (bytes linked or fetched).

        Best effort: a parent that cannot be fetched or is refused does not end the
        wait. It may be mined long ago (ARC keeps no record of what it did not take, and
        a node refuses a mined transaction again), or arrive by another route; the
        child's own status decides, and the caller's timeout bounds the wait.
        """
        for txid in dict.fromkeys(str(inp.source_txid) for inp in tx.inputs):
            if not isinstance(await self._poll(txid), NotFound):
                continue
            linked = next((i.source_transaction for i in tx.inputs if i.source_txid == txid), None)
            try:
                raw: bytes = (
                    linked.serialize() if linked is not None else await self._woc.raw_tx(txid)
                )
                await self.broadcast(parse_exact(raw))
            except (ChainUnavailable, TxRejected):
                continue

    async def _check_final(self, tx: Transaction, txid: str) -> None:
        """Refuse a non-final `tx` before it is sent (ARC does not check lock times)."""
        if int(tx.locktime) == 0 or all(int(i.sequence) == SEQUENCE_FINAL for i in tx.inputs):
            return
        height = await self._woc.height()
        tip = Tip(next_height=height + 1, median_time_past=int(self._clock()))
        try:
            check_final(tx, tip)  # SV Node's rule: the later of the two
        except TxRejected as exc:
            raise TxRejected(
                "non-final", f"{exc.detail}; ARC does not check lock times: not sent", txid
            ) from None

    async def _extended(self, tx: Transaction, raw: bytes) -> bytes:
        """`tx` in Extended Format, its missing spent outputs filled from WhatsOnChain."""
        known = known_prevouts(tx)
        for inp in tx.inputs:
            if inp.source_transaction is not None:
                self._woc.remember(str(inp.source_txid), inp.source_transaction.serialize())
        parents = {txid: await self._woc.raw_tx(txid) for txid in parents_needed(tx, known)}
        return to_extended(raw, fill_prevouts(tx, known, parents))

    async def _submit(self, ef: bytes, txid: str) -> ArcOutcome:
        """POST until an answer that is not transient, or the retries run out."""
        outcome: ArcOutcome = Transient("not tried")
        tries = self._schedule.retries + 1
        for attempt in range(tries):
            if attempt:
                await trio.sleep(self._schedule.backoff(attempt - 1, self._draw()))
            options = {
                "method": "POST",
                "headers": self._arc.request_headers(),
                "data": {"rawTx": ef.hex()},
                "timeout": self.settings.timeout,
            }
            response = await trio.to_thread.run_sync(
                self._http.fetch, f"{self._url}/v1/tx", options
            )
            outcome = classify(_reply(response), txid, "submit")
            if not isinstance(outcome, Transient | NotFound):
                return outcome
        why = outcome.reason if isinstance(outcome, Transient) else "ARC lost it each time"
        raise ChainUnavailable(f"ARC did not take {txid} in {tries} tries: {why}")

    # ---------------------------------------------------------------- reading

    async def status(self, txid: str) -> TxStatus:
        """The transaction's ARC status as a `TxState` (``detail``: ARC's status name).

        Orphan, stale-block and double-spend-attempted transactions are PENDING (ARC may
        still mine them); use `wait_mined` to act on them.
        """
        outcome = await self._poll(txid)
        if isinstance(outcome, Mined):
            return TxStatus(txid, TxState.MINED, outcome.height, outcome.block_hash, "MINED")
        if isinstance(outcome, Accepted):
            stage = outcome.stage.name if outcome.stage else "already known"
            return TxStatus(txid, TxState.PENDING, detail=stage)
        if isinstance(outcome, Orphan):
            return TxStatus(txid, TxState.PENDING, detail="SEEN_IN_ORPHAN_MEMPOOL")
        if isinstance(outcome, StaleBlock):
            return TxStatus(txid, TxState.PENDING, detail="MINED_IN_STALE_BLOCK")
        if isinstance(outcome, DoubleSpend):
            competing = ", ".join(outcome.competing) or "not named"
            detail = f"DOUBLE_SPEND_ATTEMPTED (competing: {competing})"
            return TxStatus(txid, TxState.PENDING, detail=detail)
        if isinstance(outcome, Rejected):
            return TxStatus(txid, TxState.REJECTED, detail=f"{outcome.rule}: {outcome.detail}")
        if isinstance(outcome, NotFound):
            return TxStatus(txid, TxState.UNKNOWN)
        if isinstance(outcome, AuthFailed):
            raise ChainAuthError(f"{outcome.detail}: check M2MESH_ARC_API_KEY")
        raise ChainUnavailable(f"ARC status of {txid}: {outcome.reason}")

    async def merkle_proof(self, txid: str) -> MerklePath | None:
        """The BUMP ARC holds for a mined transaction."""
        outcome = await self._poll(txid)
        if not isinstance(outcome, Mined) or not outcome.merkle_path:
            return None
        try:
            proof = MerklePath.from_hex(outcome.merkle_path)
            proof.compute_root(txid)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ChainUnavailable(f"ARC sent an unusable Merkle path for {txid}: {exc}") from None
        return proof

    async def policy(self) -> Policy:
        """ARC's policy (``GET /v1/policy``, `mesh.chain.arc_policy`), reused for
        `policy_ttl` seconds; an unreadable answer is `ChainUnavailable`."""
        now = trio.current_time()
        if self._policy is not None and now - self._policy[0] < self._policy_ttl:
            return self._policy[1]
        reply = await self._get("/v1/policy")
        if reply.http_status in (401, 403):
            raise ChainAuthError(f"ARC /v1/policy: {reply.http_status}: check M2MESH_ARC_API_KEY")
        if reply.http_status != 200 or reply.body is None:
            why = reply.transport_error or f"HTTP {reply.http_status}"
            raise ChainUnavailable(f"ARC /v1/policy: {why}")
        policy = policy_from_arc(reply.body)
        self._policy = (now, policy)
        return policy

    async def network_id(self) -> str:
        """BSV mainnet's or testnet's genesis block hash, as configured."""
        return GENESIS[self.settings.network]

    async def height(self) -> int:
        """The best height, from WhatsOnChain ``/chain/info``, reused for `height_ttl`
        seconds: an agent asks at every channel watch (each second), a block comes
        every ten minutes, and WhatsOnChain limits requests. (Finality is checked
        against a fresh height: `_check_final`.)"""
        now = trio.current_time()
        if self._height is not None and now - self._height[0] < self._height_ttl:
            return self._height[1]
        height = await self._woc.height()
        self._height = (now, height)
        return height

    async def is_valid_root(self, merkle_root: str, height: int) -> bool:
        """Ask WhatsOnChain for the Merkle root at `height`."""
        return await self._woc.is_valid_root(merkle_root, height)

    async def utxos(self, address: str) -> list[Utxo]:
        """Unspent outputs of `address` from WhatsOnChain (height 0 = unconfirmed)."""
        return await self._woc.utxos(address)

    async def output(self, txid: str, vout: int) -> OutputStatus:
        """Output `vout` of `txid` from WhatsOnChain (see `Woc.output`)."""
        return await self._woc.output(txid, vout)

    async def raw_tx(self, txid: str) -> bytes | None:
        """The bytes of `txid` from WhatsOnChain (checked by hash), None when unknown."""
        try:
            return await self._woc.raw_tx(txid)
        except TxRejected:  # WhatsOnChain does not know it (or `txid` is not a txid)
            return None

    async def _poll(self, txid: str) -> ArcOutcome:
        """ARC's status of `txid` as an outcome (one request, no retry)."""
        if not _TXID.fullmatch(txid):
            return NotFound()
        return classify(await self._get(f"/v1/tx/{txid}"), txid, "status")

    async def _get(self, path: str) -> ArcReply:
        headers = self._arc.request_headers()
        response = await trio.to_thread.run_sync(
            lambda: self._http.fetch(
                f"{self._url}{path}",
                {"method": "GET", "headers": headers, "timeout": self.settings.timeout},
            )
        )
        return _reply(response)


def _reply(response: HttpResponse) -> ArcReply:
    """What bsv-sdk's sync client got, as an `ArcReply`.

    The client wraps a JSON body as ``{"data": body}``, leaves ``{}`` for a body that is
    not JSON, and reports a request that got no answer as ``{"error", "error_type"}``
    with status 408 (timeout), 503 (connection) or 0.
    """
    payload: Any = response.json() or {}
    if "data" not in payload:
        if "error_type" in payload:
            kind = {408: "timeout", 503: "unreachable"}.get(response.status_code)
            return ArcReply(None, None, kind or str(payload["error_type"]))
        return ArcReply(int(response.status_code), None)
    data = payload["data"]
    return ArcReply(int(response.status_code), data if isinstance(data, dict) else None)


def _raise_failure(outcome: ArcOutcome, txid: str) -> None:
    """Raise the error a failed outcome means; return for every other outcome."""
    if isinstance(outcome, DoubleSpend):
        competing = ", ".join(outcome.competing) or "not named"
        raise TxRejected(
            "double-spend", f"ARC DOUBLE_SPEND_ATTEMPTED: competing transactions {competing}", txid
        )
    if isinstance(outcome, Rejected):
        raise TxRejected(outcome.rule, outcome.detail, txid)
    if isinstance(outcome, AuthFailed):
        raise ChainAuthError(f"{outcome.detail}: check M2MESH_ARC_API_KEY")
