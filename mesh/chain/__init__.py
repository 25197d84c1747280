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
(docs/ARCHITECTURE.md §5)
"""

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
