"""The header rules' parameters of BSV mainnet and testnet, with their checkpoints (data).

Every value is taken from bitcoin-sv's ``src/chainparams.cpp`` (``CMainParams`` and
``CTestNetParams``: ``powLimit``, ``daaHeight``, ``fPowAllowMinDifficultyBlocks``, the
BIP34/66/65 heights and ``checkpointData``); the genesis hashes are
`mesh.chain.arc.GENESIS`. A header chain for ``main`` or ``test`` is trusted only when it
connects to one of these checkpoints (`mesh.anchoring.header_rules.judge_chain`); the
checkpoints from the Nov 2017 difficulty adjustment on can start a rule-checked chain.

A newer checkpoint would shorten the chain a verifier must check (everything from 146
headers below it); add one only from a source as trusted as the node software itself.
This module is data and one lookup; it does no I/O. (docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

from mesh.anchoring.header_rules import Checkpoint, NetworkParams
from mesh.chain.arc import GENESIS

_POW_LIMIT = (1 << 224) - 1
"""00000000ffff…ff: both networks' easiest target (bits 0x1d00ffff)."""

MAINNET = NetworkParams(
    name="main",
    genesis_hash=GENESIS["main"],
    pow_limit=_POW_LIMIT,
    daa_height=504031,
    checkpoints=(
        Checkpoint(0, GENESIS["main"]),
        Checkpoint(11111, "0000000069e244f73d78e8fd29ba2fd2ed618bd6fa2ee92559f542fdb26e7c1d"),
        Checkpoint(33333, "000000002dd5588a74784eaa7ab0507a18ad16a236e7b1ce69f00d7ddfb5d0a6"),
        Checkpoint(74000, "0000000000573993a3c9e41ce34471c079dcf5f52a0e824a81e7f953b8661a20"),
        Checkpoint(105000, "00000000000291ce28027faea320c8d2b054b2e0fe44a773f3eefb151d6bdc97"),
        Checkpoint(134444, "00000000000005b12ffd4cd315cd34ffd4a594f430ac814c91184a0d42d2b0fe"),
        Checkpoint(168000, "000000000000099e61ea72015e79632f216fe6cb33d7899acb35b75c8303b763"),
        Checkpoint(193000, "000000000000059f452a5f7340de6682a977387c17010ff6e6c3bd83ca8b1317"),
        Checkpoint(210000, "000000000000048b95347e83192f69cf0366076336c639f9b7228e9ba171342e"),
        Checkpoint(216116, "00000000000001b4f4b433e81ee46494af945cf96014816a4e2370f11b23df4e"),
        Checkpoint(225430, "00000000000001c108384350f74090433e7fcf79a606b8e797f065b130575932"),
        Checkpoint(250000, "000000000000003887df1f29024b06fc2200b55f8af8f35453d7be294df2d214"),
        Checkpoint(279000, "0000000000000001ae8c72a0b0c301f67e3afca10e819efa9041e458e9bd7e40"),
        Checkpoint(295000, "00000000000000004d9b4ef50f0f9d686fd69db2e03af35a100370c64632a983"),
        # The Aug 2017 fork (UAHF), the Nov 2017 difficulty adjustment's first block,
        # and the May 2018 upgrade (Monolith): the most recent checkpoints shipped.
        Checkpoint(478558, "0000000000000000011865af4122fe3b144e2cbeea86142e8ff2fb4107352d43"),
        Checkpoint(504031, "0000000000000000011ebf65b60d0a3de80b8175be709d653b4c1a1beeb6ab9c"),
        Checkpoint(530359, "0000000000000000011ada8bd08f46074f44a8f155396f43e38acf9501c49103"),
    ),
    version_heights=((227931, 2), (363725, 3), (388381, 4)),
)

TESTNET = NetworkParams(
    name="test",
    genesis_hash=GENESIS["test"],
    pow_limit=_POW_LIMIT,
    daa_height=1188697,
    checkpoints=(
        Checkpoint(0, GENESIS["test"]),
        Checkpoint(546, "000000002a936ca763904c3c35fce2f3556c559c0214345d31b1bcebf76acb70"),
        # The Aug 2017 fork (UAHF) and the Nov 2017 difficulty adjustment's first block.
        Checkpoint(1155875, "00000000f17c850672894b9a75b63a1e72830bbd5f4c8889b5c1a80e7faef138"),
        Checkpoint(1188697, "0000000000170ed0918077bde7b4d36cc4c91be69fa09211f748240dabe047fb"),
    ),
    allow_min_difficulty=True,
    version_heights=((21111, 2), (330776, 3), (581885, 4)),
)

NETWORK_PARAMS: dict[str, NetworkParams] = {"main": MAINNET, "test": TESTNET}
"""The real networks by name (the names of `mesh.chain.arc.NETWORKS`)."""


def network_params(name: str) -> NetworkParams:
    """The parameters of network `name`; KeyError for a network without shipped rules."""
    return NETWORK_PARAMS[name]
