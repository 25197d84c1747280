"""Two channel ends joined in memory, and an interpreter check for their txs."""

from __future__ import annotations

import secrets

from bsv.transaction import Transaction

from mesh.chain.rules import Prevout, check_scripts
from mesh.chain.tx import Outpoint, parse_exact
from mesh.channel import Payee, Payer, Record, Role, State, Terms, derive_channel_keys
from mesh.channel.txs import p2pkh_for_key
from mesh.identity import Identity

CAPACITY = 100_000
CLOSE_FEE = 50
REFUND_FEE = 40
EXPIRY = 500


def make_pair(
    capacity: int = CAPACITY, close_fee: int = CLOSE_FEE
) -> tuple[Payer, Payee, Identity, Identity]:
    """A payer and payee with BRC-42 channel keys, refund signed, funded and open."""
    buyer, seller = Identity.generate(), Identity.generate()
    channel_id = secrets.token_bytes(32)
    payer_keys = derive_channel_keys(buyer, seller.public_key, channel_id, Role.PAYER)
    payee_keys = derive_channel_keys(seller, buyer.public_key, channel_id, Role.PAYEE)
    assert (payer_keys.payer_key, payer_keys.payee_key) == (
        payee_keys.payer_key,
        payee_keys.payee_key,
    )
    terms = Terms(
        channel_id=channel_id,
        payer_key=payer_keys.payer_key,
        payee_key=payer_keys.payee_key,
        capacity=capacity,
        close_fee=close_fee,
        refund_fee=REFUND_FEE,
        expiry_height=EXPIRY,
        funding_txid=secrets.token_hex(32),
        funding_vout=1,
        payer_payout=p2pkh_for_key(Identity.generate().public_key),
        payee_payout=p2pkh_for_key(Identity.generate().public_key),
    )
    payer = Payer(Record(Role.PAYER, State.PROPOSED, terms, seller.peer_id), payer_keys.own)
    payee = Payee(Record(Role.PAYEE, State.PROPOSED, terms, buyer.peer_id), payee_keys.own)
    _, refund_sig = payee.sign_refund()
    payer.accept_refund_signature(refund_sig)
    payer.event("funding-accepted")
    payee.event("funding-accepted")
    payer.event("opened")
    return payer, payee, buyer, seller


def check_spends_funding(raw: bytes, terms: Terms) -> Transaction:
    """Run bsv-sdk's interpreter on a channel tx against the funding output."""
    tx = parse_exact(raw)
    prevouts = {
        Outpoint(terms.funding_txid, terms.funding_vout): Prevout(
            terms.capacity, terms.funding_script
        )
    }
    check_scripts(tx, prevouts)
    return tx
