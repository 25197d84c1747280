"""`mesh ledger …`: drive the embedded local ledger from the command line.

    mesh ledger init   [--db FILE] [--fee-rate SAT_PER_KB]
    mesh ledger fund   [--db FILE] ADDRESS SATOSHIS [--mine]
    mesh ledger mine   [--db FILE] [COUNT] [--interval SECONDS]
    mesh ledger show   [--db FILE] [--address ADDRESS] [--json]
    mesh ledger tx     [--db FILE] TXID            (status, block, fee, proof, hex as JSON)
    mesh ledger tx     [--db FILE] --send HEX|-    (submit; prints the txid)
    mesh ledger export [--db FILE] --json

The ledger file defaults to ``$M2MESH_LEDGER`` or ``$M2MESH_HOME/ledger.db`` (home:
``~/.m2mesh``); every agent on the host shares it. Each handler returns an exit code;
expected failures (no ledger, a rejected transaction, a ledger another process keeps
locked) are `MeshError`s that `mesh` prints as one line. This module only parses
arguments and prints; the ledger does the work. (docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from mesh.chain.errors import LedgerError
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.rules import FINALITY_RULES, NONFINAL_RULES, Policy
from mesh.chain.tx import address_to_pkh, p2pkh_script
from mesh.store import StoreError

_HOME = Path(os.environ.get("M2MESH_HOME", Path.home() / ".m2mesh"))
DEFAULT_LEDGER = Path(os.environ.get("M2MESH_LEDGER", _HOME / "ledger.db"))
LOCK_WAIT = 5.0
"""Seconds a command waits for another process to let go of a database's write lock
before it gives up (the stores' own busy timeout, for agents, is 30 s)."""

log = logging.getLogger(__name__)


def wait_until_unlocked(path: Path, what: str, *, seconds: float = LOCK_WAIT) -> None:
    """Wait at most `seconds` until no other process holds `path`'s SQLite write lock.

    Says once (a warning on stderr) that it waits and for what; raises `StoreError`
    if the lock is still held then. A file that is missing, unreadable or not a
    database is left to the code that opens it next, which says what is wrong.
    """
    if not path.is_file():
        return
    try:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=0, isolation_level=None
        )
    except sqlite3.Error:
        return
    deadline = time.monotonic() + seconds
    said = False
    try:
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return
            except sqlite3.DatabaseError:
                return
            else:
                db.execute("ROLLBACK")
                return
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"{path}: the {what} is locked by another process (still after "
                    f"{seconds:.0f} s); stop the process holding it, or try again"
                )
            if not said:
                log.warning(
                    "waiting up to %.0f s for the %s %s: another process holds its lock",
                    seconds,
                    what,
                    path,
                )
                said = True
            time.sleep(0.1)
    finally:
        db.close()


def _open(db: Path) -> LocalLedger:
    """Open the ledger at `db`, waiting a little if another process holds it locked."""
    wait_until_unlocked(db, "ledger")
    return LocalLedger.open(db)


def _script_for(address: str) -> bytes:
    try:
        address_to_pkh(address)
    except ValueError as exc:
        raise LedgerError(str(exc)) from None
    return p2pkh_script(address)


_DONE = {"reject": "rejected", "hold": "held until final"}


def cmd_init(args: argparse.Namespace) -> int:
    """Create a ledger file with its genesis block."""
    args.db.parent.mkdir(parents=True, exist_ok=True)
    wait_until_unlocked(args.db, "ledger")
    policy = Policy(fee_rate=args.fee_rate, finality=args.finality, nonfinal=args.nonfinal)
    with LocalLedger.create(args.db, policy=policy) as ledger:
        genesis = ledger.headers()[0].hash_hex
        print(
            f"initialised {args.db}: genesis {genesis}, fee rate {args.fee_rate} sat/kB,"
            f" {args.finality} finality, non-final transactions {_DONE[args.nonfinal]}"
        )
    return 0


def cmd_fund(args: argparse.Namespace) -> int:
    """Mint test coins to an address; print the new outpoint."""
    script = _script_for(args.address)
    with _open(args.db) as ledger:
        outpoint = ledger.faucet(script, args.satoshis)
        if args.mine:
            ledger.mine()
    print(outpoint)
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    """Mine COUNT blocks now, or one every --interval seconds until interrupted."""
    if args.interval is not None:
        if args.interval <= 0:
            raise LedgerError("--interval must be positive")
        wait_until_unlocked(args.db, "ledger")
        trio.run(_mine_forever, args.db, args.interval)
        return 0
    with _open(args.db) as ledger:
        for block in ledger.mine(args.count):
            print(f"{block.height} {block.hash} {block.tx_count} tx")
    return 0


async def _mine_forever(db: Path, interval: float) -> None:
    chain = LocalChain.open(db)
    try:
        print(f"mining a block every {interval} s into {db}; Ctrl-C stops", file=sys.stderr)
        await chain.run_miner(interval)
    finally:
        chain.close()


def cmd_show(args: argparse.Namespace) -> int:
    """Summarise the ledger, or list an address's unspent outputs."""
    with _open(args.db) as ledger:
        if args.address:
            utxos = ledger.utxos(_script_for(args.address))
            rows = [
                {
                    "txid": u.txid,
                    "vout": u.vout,
                    "satoshis": u.satoshis,
                    "block_height": u.block_height,
                }
                for u in utxos
            ]
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                for row in rows:
                    mined = row["block_height"] if row["block_height"] is not None else "mempool"
                    print(f"{row['txid']}:{row['vout']} {row['satoshis']} sat ({mined})")
                print(f"{len(rows)} outputs, {sum(u.satoshis for u in utxos)} sat")
            return 0
        summary = ledger.summary()
        policy, held = ledger.policy, len(ledger.held())
    if args.json:
        print(json.dumps(asdict(summary), indent=1))
        return 0
    b = summary.balance
    print(f"ledger    {summary.path} (id {summary.ledger_id})")
    print(f"height    {summary.height}  tip {summary.tip}")
    print(f"mempool   {summary.mempool} of {summary.transactions} transactions")
    print(f"policy    {summary.fee_rate} sat/kB, {policy.finality} finality,"
          f" non-final {_DONE[policy.nonfinal]} ({held} held now)")  # fmt: skip
    print(f"supply    minted {b.minted}, fees {b.fees}, burned {b.burned} sat")
    print(f"unspent   {b.unspent} sat in {b.unspent_outputs} outputs (balanced: {b.balanced})")
    return 0


def cmd_tx(args: argparse.Namespace) -> int:
    """Show one transaction as JSON, or submit one with --send."""
    with _open(args.db) as ledger:
        if args.send is not None:
            text = sys.stdin.read() if args.send == "-" else args.send
            try:
                raw = bytes.fromhex(text.strip())
            except ValueError:
                raise LedgerError("--send takes a transaction in hex") from None
            print(ledger.submit(raw))
            return 0
        if not args.txid:
            raise LedgerError("give a TXID to show, or --send HEX to submit")
        raw_tx = ledger.raw_tx(args.txid)
        if raw_tx is None:
            raise LedgerError(f"no transaction {args.txid} in {args.db}")
        status = ledger.status(args.txid)
        proof = ledger.merkle_proof(args.txid)
    document: dict[str, Any] = {
        "txid": args.txid,
        "state": status.state.value,
        "block_height": status.block_height,
        "block_hash": status.block_hash,
        "merkle_path": None if proof is None else proof.to_hex(),
        "hex": raw_tx.hex(),
    }
    print(json.dumps(document, indent=1))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Print every block and transaction (JSON with --json, else a readable list)."""
    with _open(args.db) as ledger:
        document = ledger.export()
    if args.json:
        json.dump(document, sys.stdout)
        print()
        return 0
    for block in document["blocks"]:
        print(f"block {block['height']} {block['hash']} root {block['merkle_root']}")
        for txid in block["txids"]:
            print(f"  {txid}")
    unmined = [t["txid"] for t in document["transactions"] if t["block_height"] is None]
    print(f"mempool: {len(unmined)} transactions")
    for txid in unmined:
        print(f"  {txid}")
    return 0


def add_ledger_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ledger`` and its actions to the `mesh` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", type=Path, default=DEFAULT_LEDGER, help=f"ledger file (default {DEFAULT_LEDGER})"
    )
    ledger = subparsers.add_parser(
        "ledger",
        help="the embedded local BSV ledger: test coins, blocks, proofs",
        description="The embedded LocalLedger: one SQLite file that stands in for the BSV "
        "network on this host, shared by every agent on it. Create one, mint test coins, "
        "mine blocks, look at and submit transactions. The file defaults to "
        "$M2MESH_LEDGER or $M2MESH_HOME/ledger.db (home: ~/.m2mesh).",
    )
    actions = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")

    init = actions.add_parser(
        "init",
        parents=[common],
        help="create a ledger file",
        description="Create a ledger file with its genesis block (an existing ledger is "
        "never re-initialised).",
    )
    init.add_argument("--fee-rate", type=int, default=1, help="minimum fee, sat/kB (default 1)")
    init.add_argument(
        "--finality",
        choices=FINALITY_RULES,
        default="bitcoin",
        help="when a height-locked tx is final: 'bitcoin' (lock < next height, SV Node) or "
        "'teranode' (one block earlier, the strictest real node); default bitcoin",
    )
    init.add_argument(
        "--nonfinal",
        choices=NONFINAL_RULES,
        default="reject",
        help="a valid transaction that is not final yet: 'reject' it (Teranode) or 'hold'"
        " it aside until a block makes it final, unless a final one spends its inputs"
        " first (SV Node's non-final mempool); default reject",
    )
    init.set_defaults(func=cmd_init)

    fund = actions.add_parser(
        "fund",
        parents=[common],
        help="mint test coins to an address",
        description="Mint test coins to a P2PKH address from the ledger's faucet and print "
        "the new outpoint (txid:vout); --mine mines a block right after.",
    )
    fund.add_argument("address", help="P2PKH address to pay")
    fund.add_argument("satoshis", type=int, help="amount in satoshis")
    fund.add_argument("--mine", action="store_true", help="mine a block right after")
    fund.set_defaults(func=cmd_fund)

    mine = actions.add_parser(
        "mine",
        parents=[common],
        help="mine blocks",
        description="Mine COUNT blocks now and print each (height, hash, transactions), "
        "or with --interval keep mining one block every SECONDS until Ctrl-C.",
    )
    mine.add_argument("count", type=int, nargs="?", default=1, help="blocks to mine (default 1)")
    mine.add_argument("--interval", type=float, help="keep mining one block every SECONDS")
    mine.set_defaults(func=cmd_mine)

    show = actions.add_parser(
        "show",
        parents=[common],
        help="summary, or an address's coins",
        description="Print the ledger's height, mempool and coin supply, or with --address "
        "one address's unspent outputs.",
    )
    show.add_argument("--address", help="list this address's unspent outputs")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    tx = actions.add_parser(
        "tx",
        parents=[common],
        help="show or submit a transaction",
        description="Print one transaction's state, block, fee, BUMP proof and hex as JSON, "
        "or submit one with --send and print its txid (a rejection names the rule it broke).",
    )
    tx.add_argument("txid", nargs="?", help="transaction to show")
    tx.add_argument("--send", metavar="HEX", help="submit this transaction ('-': read stdin)")
    tx.set_defaults(func=cmd_tx)

    export = actions.add_parser(
        "export",
        parents=[common],
        help="dump blocks and transactions",
        description="Print every block with its transactions and the mempool (a readable "
        "list, or JSON with --json).",
    )
    export.add_argument("--json", action="store_true", help="print JSON")
    export.set_defaults(func=cmd_export)
