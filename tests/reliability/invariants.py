"""The invariant checker of the crash, network-fault and load tests.

It reads only durable state -- the ledger file and the agents' SQLite stores, after
their processes have stopped -- and recomputes what it needs independently of the
code under test (the ledger's own bookkeeping is checked against a replay of its raw
transactions, the close transaction against bsv-sdk's interpreter).

For a channel it asserts (docs/ARCHITECTURE.md §4 and §7):

* satoshis are conserved: the ledger balances, and the funding output is spent
  exactly once -- by a close paying the payee its final total and the payer the rest
  less the agreed fee, or by the refund paying the payer back less the refund fee;
* no acknowledged payment is lost: the payee's close total is at least every
  `acked_total` either side ever stored; a refund happens only when nothing was
  acknowledged;
* the payer never pays more than it signed: the close total is at most the total
  the payer's store holds;
* every channel settled: both ends' records are final (closed, refunded, failed)
  and agree with the ledger; no coin stays reserved in the payer's wallet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.chain.ledger import LocalLedger
from mesh.chain.merkle import check_header_chain, display, internal, merkle_root
from mesh.chain.tx import is_data_script, p2pkh_script, parse_exact, txid_of
from mesh.chain.wallet import Wallet
from mesh.channel import Record, Role, State
from mesh.channel.store import ChannelStore
from mesh.channel.txs import Terms
from mesh.identity import Identity
from mesh.store import Store
from tests.channel.helpers import check_spends_funding

FINAL = {State.CLOSED, State.REFUNDED, State.FAILED}


def stored_records(data_dir: Path) -> dict[bytes, Record]:
    """Every channel record in an agent's store (final ones included), by channel id."""
    path = data_dir / "agent.db"
    if not path.exists():
        return {}
    with Store(path) as store:
        return {
            item.record.terms.channel_id: item.record
            for item in ChannelStore(store).load(include_final=True)
        }


def wallet_reserved(data_dir: Path, identity: Identity) -> int:
    """Satoshis the agent's wallet holds reserved (for a funding not yet sent)."""
    with Store(data_dir / "agent.db") as store:
        return Wallet(store, identity).balance().reserved


def phantom_coins(data_dir: Path, identity: Identity, ledger_path: Path) -> list[str]:
    """Coins the agent's wallet counts as available that the ledger does not hold
    unspent with that amount (the wallet must believe only what the chain shows)."""
    with Store(data_dir / "agent.db") as store, LocalLedger.open(ledger_path) as ledger:
        wallet = Wallet(store, identity)
        missing = []
        for coin in wallet.coins():
            unspent = {
                (u.txid, u.vout, u.satoshis)
                for u in ledger.utxos(p2pkh_script(wallet.address(coin.key_index)))
            }
            if (coin.txid, coin.vout, coin.satoshis) not in unspent:
                missing.append(f"{coin.txid}:{coin.vout} {coin.satoshis}")
        return missing


def stranded_coins(data_dir: Path, identity: Identity, ledger_path: Path) -> list[tuple[str, int]]:
    """Unspent outputs the ledger holds on the agent's addresses that its wallet does not
    count (in any state): coins it owns but will never spend, e.g. a payer's change from
    a close it learnt of only indirectly. Returns ``(outpoint, satoshis)`` pairs."""
    with Store(data_dir / "agent.db") as store, LocalLedger.open(ledger_path) as ledger:
        wallet = Wallet(store, identity)
        known = {
            (c.txid, c.vout)
            for state in ("available", "reserved", "spent")
            for c in wallet.coins(state)
        }
        return [
            (f"{u.txid}:{u.vout}", u.satoshis)
            for address in wallet.addresses()
            for u in ledger.utxos(p2pkh_script(address))
            if (u.txid, u.vout) not in known
        ]


@dataclass(frozen=True)
class LedgerFacts:
    """What the ledger holds, recomputed from its raw transactions."""

    height: int
    transactions: dict[str, bytes]
    spender: dict[tuple[str, int], str]
    mined: int


def check_ledger(path: Path) -> LedgerFacts:
    """The ledger is internally consistent and its supply balances.

    Replays every transaction in first-seen order: each spends outputs that exist
    and were unspent, outputs never exceed inputs, the unspent total equals minted
    less fees (the ledger's own `balance()` must agree); every block's Merkle root
    is the root of its transactions, headers link and meet their target, and every
    mined transaction's BUMP proof leads to its block's root.
    """
    with LocalLedger.open(path) as ledger:
        export = ledger.export()
        balance = ledger.balance()
        headers = ledger.headers()
        proofs_checked = 0
        for block in export["blocks"][-5:]:
            for txid in block["txids"][:5]:
                proof = ledger.merkle_proof(txid)
                if proof is not None:
                    assert proof.compute_root(txid) == block["merkle_root"]
                    proofs_checked += 1
    check_header_chain(headers)
    transactions: dict[str, bytes] = {}
    spender: dict[tuple[str, int], str] = {}
    unspent: dict[tuple[str, int], int] = {}
    minted = fees = 0
    for item in export["transactions"]:
        raw = bytes.fromhex(item["hex"])
        txid = item["txid"]
        assert txid_of(raw) == txid
        tx = parse_exact(raw)
        transactions[txid] = raw
        value_out = sum(int(o.satoshis) for o in tx.outputs)
        if str(tx.inputs[0].source_txid) == "00" * 32:
            minted += value_out
        else:
            value_in = 0
            for inp in tx.inputs:
                outpoint = (str(inp.source_txid), int(inp.source_output_index))
                assert outpoint not in spender, f"{outpoint} spent twice"
                assert outpoint in unspent, f"{txid} spends a missing output {outpoint}"
                spender[outpoint] = txid
                value_in += unspent.pop(outpoint)
            assert value_out <= value_in
            fees += value_in - value_out
        for vout, out in enumerate(tx.outputs):
            if not is_data_script(bytes(out.locking_script.serialize())):
                unspent[(txid, vout)] = int(out.satoshis)
    for block in export["blocks"]:
        assert display(merkle_root([internal(t) for t in block["txids"]])) == block["merkle_root"]
    assert balance.balanced
    assert balance.minted == minted and balance.fees == fees
    assert balance.unspent == sum(unspent.values())
    mined = sum(1 for t in export["transactions"] if t["block_height"] is not None)
    return LedgerFacts(export["height"], transactions, spender, mined)


@dataclass(frozen=True)
class Settlement:
    """How one channel ended, as the ledger shows it."""

    channel_id: str
    outcome: str  # "closed", "refunded", "never-funded"
    payee_total: int


def check_channel(
    facts: LedgerFacts,
    payer: Record | None,
    payee: Record | None,
    *,
    acked_bounds: list[int],
) -> Settlement:
    """One channel's invariants (see the module docstring).

    `payer`/`payee` are the final stored records (None: that end never stored the
    channel); `acked_bounds` every acked total any end stored at any earlier moment.
    """
    some = payer or payee
    assert some is not None
    terms = some.terms
    cid = terms.channel_id.hex()
    for end in (payer, payee):
        # A payee that was paid nothing has nothing to close: it may stay open.
        if end is not None and not (end.role is Role.PAYEE and end.total == 0):
            assert end.state in FINAL, f"{end.role.value} of {cid[:16]} is {end.state.value}"
    funding = (terms.funding_txid, terms.funding_vout)
    if terms.funding_txid not in facts.transactions:
        # Never funded: nobody may have acknowledged or been paid anything.
        assert max(acked_bounds, default=0) == 0
        for end in (payer, payee):
            assert end is None or end.state is State.FAILED or end.total == 0
        return Settlement(cid, "never-funded", 0)
    spend_txid = facts.spender.get(funding)
    assert spend_txid is not None, f"funding of {cid[:16]} is still unspent"
    raw = facts.transactions[spend_txid]
    tx = parse_exact(raw)
    check_spends_funding(raw, terms)  # bsv-sdk's interpreter accepts the spend
    outputs = [(bytes(o.locking_script.serialize()), int(o.satoshis)) for o in tx.outputs]
    if tx.locktime == terms.expiry_height and outputs == [
        (terms.payer_payout, terms.capacity - terms.refund_fee)
    ]:
        assert max(acked_bounds, default=0) == 0, "refunded although payments were acked"
        assert payer is None or payer.state in (State.REFUNDED, State.CLOSED)
        assert payee is None or payee.total == 0 or payee.state is State.REFUNDED
        return Settlement(cid, "refunded", 0)
    if tx.locktime == 0 and outputs == [(terms.payer_payout, terms.max_total)]:
        # A release: only for a channel nothing was paid (or acknowledged) on.
        assert max(acked_bounds, default=0) == 0, "released although payments were acked"
        assert payer is None or (payer.total == 0 and payer.state is State.CLOSED)
        assert payee is None or (payee.total == 0 and payee.state is State.CLOSED)
        return Settlement(cid, "released", 0)
    total = outputs[0][1]
    assert outputs[0][0] == terms.payee_payout
    rest = terms.max_total - total
    assert outputs[1:] == ([(terms.payer_payout, rest)] if rest > 0 else [])
    assert total >= max(acked_bounds, default=0), "an acknowledged payment was lost"
    assert payer is not None, "a payee holds a payment the payer never stored"
    assert total <= payer.total, "the payer paid more than it signed"
    if payee is not None:
        assert payee.state is State.CLOSED and payee.total == total
        assert payee.close_txid == spend_txid
    return Settlement(cid, "closed", total)


def acked_lost(facts: LedgerFacts, terms: Terms, acked_bounds: list[int]) -> int:
    """Satoshis acknowledged to the payee that the ledger does not pay it: all of them
    while the funding is unspent or after a refund or release, else what the close
    pays short of the highest acked total. Computed without asserting anything, so a
    trial can report it before `check_channel` judges the channel."""
    acked = max(acked_bounds, default=0)
    spend_txid = facts.spender.get((terms.funding_txid, terms.funding_vout))
    if spend_txid is None:
        return acked
    tx = parse_exact(facts.transactions[spend_txid])
    first = tx.outputs[0]
    if tx.locktime == 0 and bytes(first.locking_script.serialize()) == terms.payee_payout:
        return max(0, acked - int(first.satoshis))
    return acked


def acked_of(*records: Record | None) -> list[int]:
    """The acked totals (and, for a payee, the totals it held) a set of records prove."""
    bounds = []
    for record in records:
        if record is not None:
            bounds.append(record.acked_total)
    return bounds


def summary(settlements: list[Settlement]) -> dict[str, Any]:
    """Outcome counts, for the figures."""
    counts: dict[str, int] = {}
    for s in settlements:
        counts[s.outcome] = counts.get(s.outcome, 0) + 1
    return counts
