"""The chain layer: one `Chain` interface, an embedded ledger, ARC, SPV and a wallet.

- `Chain` (`base`): broadcast, status, output, merkle_proof, height, utxos,
  is_valid_root.
- `LocalLedger` (`ledger`): the embedded SQLite ledger that enforces a node's rules;
  `LocalChain` (`local`) is its `Chain` face for Trio code.
- `ArcChain` (`arc`): the BSV network through ARC and WhatsOnChain.
- `verify_spv` and the `ChainTracker`s (`spv`): SPV that rejects fabricated ancestry.
- `Wallet` (`wallet`): the agent's own coins, with reservations.
- `rules`, `merkle`, `tx`: the pure parts (validation rules, Merkle/BUMP/headers, codecs).

Only the `Chain` shells (`local`, `arc`) use Trio; the rest is synchronous.

The names below are re-exported lazily: importing `mesh.chain` (or one of its pure
submodules, such as `mesh.chain.tx`) loads neither Trio nor SQLite; the first use of
``mesh.chain.ArcChain`` imports `mesh.chain.arc`, and so on.
(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.chain.arc import ArcChain, ArcSettings
    from mesh.chain.base import Chain, OutputState, OutputStatus, TxState, TxStatus, Utxo
    from mesh.chain.coins import Coin, Draft
    from mesh.chain.errors import (
        RULES,
        ChainAuthError,
        ChainError,
        ChainUnavailable,
        InsufficientFunds,
        LedgerError,
        SpvFailed,
        TxRejected,
        WalletError,
    )
    from mesh.chain.ledger import Balance, BlockInfo, LocalLedger
    from mesh.chain.local import LocalChain
    from mesh.chain.rules import Policy
    from mesh.chain.spv import ChainBackedTracker, HeaderTracker, parse_beef_exact, verify_spv
    from mesh.chain.tx import Outpoint, parse_exact, txid_of
    from mesh.chain.wallet import Wallet

_HOMES = {
    "arc": ("ArcChain", "ArcSettings"),
    "base": ("Chain", "OutputState", "OutputStatus", "TxState", "TxStatus", "Utxo"),
    "coins": ("Coin", "Draft"),
    "errors": (
        "RULES",
        "ChainAuthError",
        "ChainError",
        "ChainUnavailable",
        "InsufficientFunds",
        "LedgerError",
        "SpvFailed",
        "TxRejected",
        "WalletError",
    ),
    "ledger": ("Balance", "BlockInfo", "LocalLedger"),
    "local": ("LocalChain",),
    "rules": ("Policy",),
    "spv": ("ChainBackedTracker", "HeaderTracker", "parse_beef_exact", "verify_spv"),
    "tx": ("Outpoint", "parse_exact", "txid_of"),
    "wallet": ("Wallet",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
"""Each re-exported name's submodule."""


def __getattr__(name: str) -> Any:
    """A re-exported name, imported from its submodule on first use (then cached)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "RULES",
    "ArcChain",
    "ArcSettings",
    "Balance",
    "BlockInfo",
    "Chain",
    "ChainAuthError",
    "ChainBackedTracker",
    "ChainError",
    "ChainUnavailable",
    "Coin",
    "Draft",
    "HeaderTracker",
    "InsufficientFunds",
    "LedgerError",
    "LocalChain",
    "LocalLedger",
    "Outpoint",
    "OutputState",
    "OutputStatus",
    "Policy",
    "SpvFailed",
    "TxRejected",
    "TxState",
    "TxStatus",
    "Utxo",
    "Wallet",
    "WalletError",
    "parse_beef_exact",
    "parse_exact",
    "txid_of",
    "verify_spv",
]
