"""Which chain an agent runs on: the local ledger file, or the BSV network through ARC.

``mesh run --chain local`` (the default, or ``$M2MESH_CHAIN``) uses the `LocalLedger`
file (``--ledger``); ``--chain arc:test`` / ``arc:main`` use `ArcChain` on testnet /
mainnet, configured from the environment (``M2MESH_ARC_URL``, ``M2MESH_ARC_API_KEY``,
``M2MESH_WOC_URL``, ``M2MESH_WOC_API_KEY``: `mesh.chain.arc.ArcSettings`). Everything
the agent does with the chain goes through `mesh.chain.base.AgentChain`, so nothing
else changes with the choice. (docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mesh.chain.arc import ArcChain, ArcSettings
from mesh.chain.base import AgentChain
from mesh.chain.local import LocalChain

CHAINS = ("local", "arc:test", "arc:main")
DEFAULT_CHAIN = "local"


def chain_choice(text: str) -> str:
    """`text` if it names a chain (argparse type); `ValueError` with the choices."""
    if text not in CHAINS:
        raise ValueError(f"--chain must be one of {', '.join(CHAINS)}, not {text!r}")
    return text


def default_chain(env: Mapping[str, str] | None = None) -> str:
    """``$M2MESH_CHAIN`` when set, else ``local``."""
    return chain_choice((os.environ if env is None else env).get("M2MESH_CHAIN") or DEFAULT_CHAIN)


def is_local(choice: str) -> bool:
    """Whether `choice` is the local ledger file."""
    return choice == "local"


def open_chain(choice: str, ledger: Path, env: Mapping[str, str] | None = None) -> AgentChain:
    """The chain `choice` names: the ledger at `ledger`, or ARC on its network."""
    if is_local(choice):
        return LocalChain.open(ledger)
    network = choice.split(":", 1)[1]
    source = dict(os.environ if env is None else env)
    source["M2MESH_NETWORK"] = network
    return ArcChain(ArcSettings.from_env(source))


__all__ = ["CHAINS", "DEFAULT_CHAIN", "chain_choice", "default_chain", "is_local", "open_chain"]
