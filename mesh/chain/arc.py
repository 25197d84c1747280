"""`ArcChain`: the `Chain` interface over ARC (broadcast, status, proofs) and WhatsOnChain
(headers, height, UTXOs, single outputs), for testnet and mainnet.

How it runs under Trio. bsv-sdk's `ARC` broadcaster has synchronous methods
(`sync_broadcast`, `check_transaction_status`) built on `requests`; they run in
`trio.to_thread`. bsv-sdk's `WhatsOnChainTracker` is async but written against an
injectable `HttpClient` whose default is aiohttp (asyncio-only); we hand it
`TrioHttpClient`, an `HttpClient` whose `fetch` runs bsv-sdk's own synchronous client in
`trio.to_thread`, so the tracker's coroutines run on Trio unchanged. We use no HTTP code
of our own beyond that adapter.

Two bsv-sdk behaviours handled here:
- `WhatsOnChainTracker.current_height` reads ``blocks`` from the response wrapper
  instead of its ``data`` and so always returns 0; `height` reads ``/chain/info`` itself.
- ARC answers a double spend with HTTP 200 and ``txStatus: DOUBLE_SPEND_ATTEMPTED``,
  which bsv-sdk reports as success; `broadcast` raises `TxRejected("double-spend")`.

ARC error statuses map to our rule names (465 → ``fee``, 461 → ``script`` …);
transport trouble (timeouts, 5xx, unreadable answers) is `ChainUnavailable`, worth
retrying. Configuration comes from `ArcSettings` (environment: ``M2MESH_NETWORK``,
``M2MESH_ARC_URL``, ``M2MESH_ARC_API_KEY``, ``M2MESH_WOC_URL``, ``M2MESH_WOC_API_KEY``);
the only host names in this module are the documented defaults in `DEFAULT_ARC_URLS`
(the WhatsOnChain default is bsv-sdk's own).

This module never signs, stores or validates transactions; it only carries them.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import trio
from bsv.broadcasters.arc import ARC, ARCConfig
from bsv.chaintrackers.whatsonchain import WhatsOnChainTracker
from bsv.http_client import HttpClient, HttpResponse, SyncHttpClient
from bsv.merkle_path import MerklePath
from bsv.transaction import Transaction

from mesh.chain.base import OutputState, OutputStatus, TxState, TxStatus, Utxo
from mesh.chain.errors import ChainError, ChainUnavailable, TxRejected
from mesh.chain.rules import MAX_MONEY, Policy
from mesh.chain.spv import ChainBackedTracker
from mesh.chain.tx import is_data_script, p2pkh_script, tx_id

#: Documented defaults, used only when ``M2MESH_ARC_URL`` is not set.
DEFAULT_ARC_URLS = {"main": "https://arc.taal.com", "test": "https://arc-test.taal.com"}
NETWORKS = ("main", "test")
GENESIS = {
    "main": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    "test": "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
}
"""The genesis block hash of each network: its network id (`Chain.network_id`)."""

#: ARC error statuses (bitcoin-sv/arc ``pkg/api/status.go``) and the rule each one means.
ARC_RULES = {
    "460": "format",
    "461": "script",
    "462": "missing-or-spent-input",
    "463": "parse",
    "464": "output-value",
    "465": "fee",
    "466": "double-spend",
    "467": "spv",
    "468": "spv",
    "469": "spv",
    "471": "frozen",
    "472": "frozen",
    "473": "fee",
}
_REJECTING_HTTP = {"400", "409", "422", *ARC_RULES}
_TXID = re.compile(r"[0-9a-f]{64}")
_MAX_VOUT = 0xFFFFFFFF
_SATOSHIS_PER_BSV = 100_000_000


@dataclass(frozen=True)
class ArcSettings:
    """Where ARC and WhatsOnChain are and how to authenticate."""

    arc_url: str
    network: str = "main"
    api_key: str | None = None
    woc_url: str | None = None  # None: bsv-sdk's WhatsOnChain URL for `network`
    woc_api_key: str | None = None
    timeout: int = 30

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


class TrioHttpClient(HttpClient):  # type: ignore[misc]  # bsv-sdk is untyped
    """bsv-sdk's `HttpClient` interface for Trio: the sync client runs in a thread."""

    def __init__(self, sync: SyncHttpClient) -> None:
        self._sync = sync

    async def fetch(self, url: str, options: dict[str, Any]) -> HttpResponse:
        """Perform the request in a worker thread."""
        return await trio.to_thread.run_sync(self._sync.fetch, url, options)


class ArcChain:
    """A `Chain` over the BSV network through ARC and WhatsOnChain."""

    def __init__(self, settings: ArcSettings, *, http: SyncHttpClient | None = None) -> None:
        self.settings = settings
        self._http = http or SyncHttpClient(default_timeout=settings.timeout)
        self._arc = ARC(
            settings.arc_url.rstrip("/"),
            ARCConfig(api_key=settings.api_key, sync_http_client=self._http),
        )
        self._woc = WhatsOnChainTracker(
            network=settings.network,
            api_key=settings.woc_api_key,
            http_client=TrioHttpClient(self._http),
        )
        if settings.woc_url:
            self._woc.URL = settings.woc_url.rstrip("/")

    def tracker(self) -> ChainBackedTracker:
        """A bsv-sdk `ChainTracker` over this chain (WhatsOnChain headers)."""
        return ChainBackedTracker(self)

    async def broadcast(self, tx: Transaction) -> str:
        """Submit `tx` to ARC (extended format when every input has its source linked)."""
        txid = tx_id(tx)
        result = await trio.to_thread.run_sync(self._arc.sync_broadcast, tx, self.settings.timeout)
        if result.status == "success":
            data = _arc_data(result.extra)
            if data.get("txStatus") == "DOUBLE_SPEND_ATTEMPTED":
                competing = ", ".join(data.get("competingTxs") or []) or "unknown"
                raise TxRejected("double-spend", f"ARC: competing transactions {competing}", txid)
            if result.txid != txid:
                raise ChainUnavailable(f"ARC acknowledged {result.txid}, but we sent {txid}")
            return txid
        code = str(result.code)
        extra = str(_arc_data(result.more).get("extraInfo") or "").strip()
        detail = f"ARC {code}: {result.description}" + (f" ({extra})" if extra else "")
        if code == "ARC_TX_STATUS":
            raise TxRejected("rejected", detail, txid)
        if code in ("401", "403"):
            raise ChainError(f"{detail}: check M2MESH_ARC_API_KEY")
        if code in _REJECTING_HTTP:
            raise TxRejected(ARC_RULES.get(code, f"arc-{code}"), detail, txid)
        raise ChainUnavailable(detail)

    async def status(self, txid: str) -> TxStatus:
        """The transaction's ARC status, mapped onto `TxState`."""
        data = await self._status_data(txid)
        if data is None:
            return TxStatus(txid, TxState.UNKNOWN)
        raw_status = str(data.get("txStatus") or "")
        category = ARC.categorize_transaction_status(data).get("status_category")
        if category == "mined":
            return TxStatus(
                txid,
                TxState.MINED,
                int(data["blockHeight"]),
                str(data.get("blockHash") or "") or None,
                raw_status,
            )
        if category == "rejected":
            return TxStatus(txid, TxState.REJECTED, detail=raw_status)
        if category in ("progressing", "0confirmation", "warning"):
            return TxStatus(txid, TxState.PENDING, detail=raw_status)
        return TxStatus(txid, TxState.UNKNOWN, detail=raw_status)

    async def merkle_proof(self, txid: str) -> MerklePath | None:
        """The BUMP ARC holds for a mined transaction."""
        data = await self._status_data(txid)
        if data is None or data.get("txStatus") != "MINED" or not data.get("merklePath"):
            return None
        try:
            proof = MerklePath.from_hex(str(data["merklePath"]))
            proof.compute_root(txid)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ChainUnavailable(f"ARC sent an unusable Merkle path for {txid}: {exc}") from None
        return proof

    async def network_id(self) -> str:
        """BSV mainnet's or testnet's genesis block hash, as configured."""
        return GENESIS[self.settings.network]

    async def height(self) -> int:
        """The best height, from WhatsOnChain ``/chain/info``."""
        data = await self._woc_json("/chain/info")
        if not isinstance(data, dict) or not isinstance(data.get("blocks"), int):
            raise ChainUnavailable("WhatsOnChain /chain/info has no block count")
        return int(data["blocks"])

    async def is_valid_root(self, merkle_root: str, height: int) -> bool:
        """Ask WhatsOnChain (through bsv-sdk's tracker) for the root at `height`."""
        try:
            return bool(await self._woc.is_valid_root_for_height(merkle_root, height))
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            raise ChainUnavailable(f"WhatsOnChain header {height}: {exc}") from None

    async def policy(self) -> Policy:
        """ARC's policy (``GET /v1/policy``): not read yet, so the default node policy."""
        return Policy()

    async def utxos(self, address: str) -> list[Utxo]:
        """Unspent outputs of `address` from WhatsOnChain (height 0 = unconfirmed)."""
        script = p2pkh_script(address)
        data = await self._woc_json(f"/address/{address}/unspent")
        if not isinstance(data, list):
            raise ChainUnavailable("WhatsOnChain unspent list is not a list")
        try:
            return [
                Utxo(
                    str(item["tx_hash"]),
                    int(item["tx_pos"]),
                    int(item["value"]),
                    script,
                    int(item["height"]) or None,
                )
                for item in data
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainUnavailable(f"WhatsOnChain unspent entry malformed: {exc}") from None

    async def output(self, txid: str, vout: int) -> OutputStatus:
        """Output `vout` of `txid` from WhatsOnChain (mempool included), and who spends it.

        Two requests: ``/tx/hash/{txid}`` for the amount (in BSV) and script, then
        ``/tx/{txid}/{vout}/spent``, which answers 404 while the output is unspent and
        the spending txid once it is spent. WhatsOnChain also answers 404 for a spend it
        has not indexed yet, so a seconds-old spend can still read UNSPENT: keep polling.
        A txid that is not 64 lowercase hex digits is UNKNOWN without a request; data
        outputs are UNKNOWN as in the ledger.
        """
        unknown = OutputStatus(txid, vout, OutputState.UNKNOWN)
        if not _TXID.fullmatch(txid) or not 0 <= vout <= _MAX_VOUT:
            return unknown
        tx = await self._woc_json(f"/tx/hash/{txid}", missing_ok=True)
        if tx is None:
            return unknown
        found = _woc_output(tx, txid, vout)
        if found is None or is_data_script(found[1]):
            return unknown
        satoshis, script = found
        spent = await self._woc_json(f"/tx/{txid}/{vout}/spent", missing_ok=True)
        if spent is None:
            return OutputStatus(txid, vout, OutputState.UNSPENT, satoshis, script)
        spender = spent.get("txid") if isinstance(spent, dict) else None
        if not isinstance(spender, str) or not _TXID.fullmatch(spender):
            raise ChainUnavailable(f"WhatsOnChain spent answer for {txid}:{vout} has no txid")
        return OutputStatus(txid, vout, OutputState.SPENT, satoshis, script, spender)

    async def _status_data(self, txid: str) -> dict[str, Any] | None:
        data: dict[str, Any] = await trio.to_thread.run_sync(
            self._arc.check_transaction_status, txid, self.settings.timeout
        )
        if data.get("status") == "failure":
            if str(data.get("code")) == "404":
                return None
            raise ChainUnavailable(f"ARC status of {txid}: {data.get('code')} {data.get('detail')}")
        return data

    async def _woc_json(self, path: str, *, missing_ok: bool = False) -> Any:
        """The JSON WhatsOnChain answers at `path`; None for a 404 when `missing_ok`."""
        headers = self._woc.get_headers()
        response = await trio.to_thread.run_sync(
            lambda: self._http.get(f"{self._woc.URL}{path}", headers=headers)
        )
        # bsv-sdk maps transport failures to 0/408/503, so a 404 is the server's answer
        if missing_ok and response.status_code == 404:
            return None
        if not response.ok:
            raise ChainUnavailable(f"WhatsOnChain {path}: HTTP {response.status_code}")
        body = response.json()
        if not isinstance(body, dict) or "data" not in body:
            raise ChainUnavailable(f"WhatsOnChain {path}: not JSON")
        return body["data"]


def _woc_output(tx: Any, txid: str, vout: int) -> tuple[int, bytes] | None:
    """Amount (satoshis) and script of output `vout` in a ``/tx/hash`` answer, if it has one."""
    if not isinstance(tx, dict) or tx.get("txid") != txid or not isinstance(tx.get("vout"), list):
        raise ChainUnavailable(f"WhatsOnChain /tx/hash/{txid}: not a transaction")
    for entry in tx["vout"]:
        if not isinstance(entry, dict) or entry.get("n") != vout:
            continue
        value, spk = entry.get("value"), entry.get("scriptPubKey")
        try:
            if isinstance(value, bool) or not isinstance(spk, dict):
                raise TypeError("no value or scriptPubKey")
            if spk.get("isTruncated"):
                raise ValueError("the script is truncated (over 100 kB)")
            amount = Decimal(str(value)) * _SATOSHIS_PER_BSV
            if amount != amount.to_integral_value() or not 0 <= amount <= MAX_MONEY:
                raise ValueError(f"value {value} BSV is not a whole number of satoshis")
            return int(amount), bytes.fromhex(str(spk["hex"]))
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            raise ChainUnavailable(f"WhatsOnChain output {txid}:{vout}: {exc}") from None
    return None


def _arc_data(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ARC response body bsv-sdk keeps under ``extra/more["arc_json"]["data"]``."""
    arc_json = (extra or {}).get("arc_json") or {}
    data = arc_json.get("data") if isinstance(arc_json, dict) else None
    return data if isinstance(data, dict) else {}
