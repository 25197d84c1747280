"""`Woc`: what `ArcChain` asks WhatsOnChain — height, headers, UTXOs, single outputs and
parents' raw bytes — as a thin Trio shell over bsv-sdk's HTTP client and tracker.

How it runs under Trio. bsv-sdk's `WhatsOnChainTracker` is async but written against an
injectable `HttpClient` whose default is aiohttp (asyncio-only); we hand it
`TrioHttpClient`, whose `fetch` runs bsv-sdk's own synchronous client in
`trio.to_thread`, so the tracker's coroutines run on Trio unchanged. JSON endpoints go
through that synchronous client too. ``GET /tx/{txid}/hex`` answers plain text, which
bsv-sdk's client drops (it keeps JSON only), so that one request uses the standard
library's `urllib` in a worker thread.

bsv-sdk's `WhatsOnChainTracker.current_height` reads ``blocks`` from the response wrapper
instead of its ``data`` and so always returns 0; `height` reads ``/chain/info`` itself.

It never sends transactions and trusts nothing it fetches without a check: amounts
convert exactly or not at all, and raw transactions must hash to the txid asked for.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections import OrderedDict
from decimal import Decimal, InvalidOperation
from typing import Any

import trio
from bsv.chaintrackers.whatsonchain import WhatsOnChainTracker
from bsv.http_client import HttpClient, HttpResponse, SyncHttpClient

from mesh.chain.base import OutputState, OutputStatus, Utxo
from mesh.chain.errors import ChainUnavailable, TxRejected
from mesh.chain.rules import MAX_MONEY
from mesh.chain.tx import is_data_script, network_address, p2pkh_script, txid_of

_TXID = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_MAX_VOUT = 0xFFFFFFFF
_SATOSHIS_PER_BSV = 100_000_000
_RAW_CACHE = 512  # parents' bytes never change, so a plain LRU is enough


class TrioHttpClient(HttpClient):  # type: ignore[misc]  # bsv-sdk is untyped
    """bsv-sdk's `HttpClient` interface for Trio: the sync client runs in a thread."""

    def __init__(self, sync: SyncHttpClient) -> None:
        self._sync = sync

    async def fetch(self, url: str, options: dict[str, Any]) -> HttpResponse:
        """Perform the request in a worker thread."""
        return await trio.to_thread.run_sync(self._sync.fetch, url, options)


class Woc:
    """WhatsOnChain for one network, through bsv-sdk's tracker and HTTP client."""

    def __init__(
        self,
        network: str,
        http: SyncHttpClient,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30,
    ) -> None:
        self._http = http
        self._timeout = timeout
        self._network = network
        self.tracker = WhatsOnChainTracker(
            network=network, api_key=api_key, http_client=TrioHttpClient(http)
        )
        if url:
            self.tracker.URL = url.rstrip("/")
        self._raw: OrderedDict[str, bytes] = OrderedDict()

    @property
    def url(self) -> str:
        """The API root in use (bsv-sdk's default for the network unless configured)."""
        return str(self.tracker.URL)

    async def height(self) -> int:
        """The best height, from ``/chain/info``."""
        data = await self.json("/chain/info")
        if not isinstance(data, dict) or not isinstance(data.get("blocks"), int):
            raise ChainUnavailable("WhatsOnChain /chain/info has no block count")
        return int(data["blocks"])

    async def is_valid_root(self, merkle_root: str, height: int) -> bool:
        """Ask WhatsOnChain (through bsv-sdk's tracker) for the root at `height`."""
        try:
            return bool(await self.tracker.is_valid_root_for_height(merkle_root, height))
        except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
            raise ChainUnavailable(f"WhatsOnChain header {height}: {exc}") from None

    async def utxos(self, address: str) -> list[Utxo]:
        """Unspent outputs of `address` (height 0 = unconfirmed)."""
        script = p2pkh_script(address)
        data = await self.json(f"/address/{network_address(address, self._network)}/unspent")
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
        """Output `vout` of `txid` (mempool included), and who spends it.

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
        tx = await self.json(f"/tx/hash/{txid}", missing_ok=True)
        if tx is None:
            return unknown
        found = woc_output(tx, txid, vout)
        if found is None or is_data_script(found[1]):
            return unknown
        satoshis, script = found
        spent = await self.json(f"/tx/{txid}/{vout}/spent", missing_ok=True)
        if spent is None:
            return OutputStatus(txid, vout, OutputState.UNSPENT, satoshis, script)
        spender = spent.get("txid") if isinstance(spent, dict) else None
        if not isinstance(spender, str) or not _TXID.fullmatch(spender):
            raise ChainUnavailable(f"WhatsOnChain spent answer for {txid}:{vout} has no txid")
        return OutputStatus(txid, vout, OutputState.SPENT, satoshis, script, spender)

    async def raw_tx(self, txid: str) -> bytes:
        """The bytes of `txid` from ``GET /tx/{txid}/hex``, checked by hash and cached.

        A 404 is `TxRejected("missing-input")`: nothing was sent, and the transaction
        that needs this parent cannot be given to ARC in extended format without it.
        """
        cached = self._raw.get(txid)
        if cached is not None:
            self._raw.move_to_end(txid)
            return cached
        if not _TXID.fullmatch(txid):
            raise TxRejected("missing-input", f"{txid!r} is not a txid")
        headers = {k: str(v) for k, v in self.tracker.get_headers().items()}
        url = f"{self.url}/tx/{txid}/hex"
        status, text = await trio.to_thread.run_sync(_get_text, url, headers, self._timeout)
        if status == 404:
            raise TxRejected(
                "missing-input",
                f"WhatsOnChain does not know parent {txid}; link it to the input "
                "(source_transaction) or broadcast it first",
            )
        if status != 200 or not _HEX.fullmatch(text.strip()):
            raise ChainUnavailable(f"WhatsOnChain /tx/{txid}/hex: HTTP {status}, no hex")
        raw = bytes.fromhex(text.strip())
        if txid_of(raw) != txid:
            raise ChainUnavailable(f"WhatsOnChain /tx/{txid}/hex sent {txid_of(raw)}")
        self._raw[txid] = raw
        if len(self._raw) > _RAW_CACHE:
            self._raw.popitem(last=False)
        return raw

    def remember(self, txid: str, raw: bytes) -> None:
        """Cache bytes already in hand (a linked parent), so resubmitting needs no fetch."""
        self._raw[txid] = raw
        if len(self._raw) > _RAW_CACHE:
            self._raw.popitem(last=False)

    async def json(self, path: str, *, missing_ok: bool = False) -> Any:
        """The JSON WhatsOnChain answers at `path`; None for a 404 when `missing_ok`."""
        headers = self.tracker.get_headers()
        response = await trio.to_thread.run_sync(
            lambda: self._http.get(f"{self.url}{path}", headers=headers)
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


def _get_text(url: str, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    """GET `url` and return (HTTP status, body text); transport trouble is unavailable."""
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read().decode("ascii", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ChainUnavailable(f"WhatsOnChain unreachable: {exc}") from None


def woc_output(tx: Any, txid: str, vout: int) -> tuple[int, bytes] | None:
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
