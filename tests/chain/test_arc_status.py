"""The pure ARC cores: every ARC status and error code to its outcome, the poll schedule,
the policy mapping and the Extended Format codec (no I/O, no server).

The expected lists are ARC's own, read from bitcoin-sv/arc at commit e7efc5b
(2026-04-01): ``internal/metamorph/metamorph_api/metamorph_api.proto`` (``Status``),
``pkg/api/arc.yaml`` (``txStatus`` enum) and ``pkg/api/status.go`` (HTTP error codes).
"""

from __future__ import annotations

import math

import pytest
from bsv.constants import Network
from bsv.keys import PrivateKey
from bsv.transaction import Transaction

from mesh.chain.arc_ef import (
    from_extended,
    known_prevouts,
    parent_output,
    parents_needed,
    to_extended,
)
from mesh.chain.arc_policy import policy_from_arc
from mesh.chain.arc_status import (
    ERROR_RULES,
    REASON_RULES,
    Accepted,
    ArcReply,
    ArcStatus,
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
from mesh.chain.errors import RULES, ChainError, ChainUnavailable, TxRejected
from mesh.chain.ledger import LocalLedger
from mesh.chain.rules import Policy, Prevout
from mesh.chain.tx import network_address, tx_id
from tests.chain.helpers import mint, p2pkh, pay, spend

TXID = "ab" * 32
OTHER = "cd" * 32
BLOCK = "00" * 4 + "ef" * 28

#: metamorph_api.proto ``enum Status`` (names also the arc.yaml ``txStatus`` enum).
ARC_TX_STATUSES = {
    "UNKNOWN": 0,
    "QUEUED": 10,
    "RECEIVED": 20,
    "STORED": 30,
    "ANNOUNCED_TO_NETWORK": 40,
    "REQUESTED_BY_NETWORK": 50,
    "SENT_TO_NETWORK": 60,
    "ACCEPTED_BY_NETWORK": 70,
    "SEEN_IN_ORPHAN_MEMPOOL": 80,
    "SEEN_ON_NETWORK": 90,
    "DOUBLE_SPEND_ATTEMPTED": 100,
    "REJECTED": 110,
    "MINED_IN_STALE_BLOCK": 115,
    "MINED": 120,
}
#: status.go's ``ErrStatus*`` constants (467 only in arc.yaml).
ARC_ERROR_CODES = (
    *(400, 404, 409, 460, 461, 462, 463, 464, 465),
    *(466, 468, 469, 471, 472, 473, 474, 475),
)


def _body(status: str, **extra: object) -> dict[str, object]:
    return {"txid": TXID, "txStatus": status, "blockHash": "", "blockHeight": 0} | extra


EXPECTED_STATUS = {
    "UNKNOWN": NotFound(),
    "QUEUED": Accepted(ArcStatus.QUEUED),
    "RECEIVED": Accepted(ArcStatus.RECEIVED),
    "STORED": Accepted(ArcStatus.STORED),
    "ANNOUNCED_TO_NETWORK": Accepted(ArcStatus.ANNOUNCED_TO_NETWORK),
    "REQUESTED_BY_NETWORK": Accepted(ArcStatus.REQUESTED_BY_NETWORK),
    "SENT_TO_NETWORK": Accepted(ArcStatus.SENT_TO_NETWORK),
    "ACCEPTED_BY_NETWORK": Accepted(ArcStatus.ACCEPTED_BY_NETWORK),
    "SEEN_IN_ORPHAN_MEMPOOL": Orphan(),
    "SEEN_ON_NETWORK": Accepted(ArcStatus.SEEN_ON_NETWORK),
    "DOUBLE_SPEND_ATTEMPTED": DoubleSpend((OTHER,), "seen twice"),
    "REJECTED": Rejected("script", "ARC REJECTED: mandatory-script-verify-flag-failed"),
    "MINED_IN_STALE_BLOCK": StaleBlock(),
    "MINED": Mined(812_345, BLOCK, "fe00"),
}
EXTRA: dict[str, dict[str, object]] = {
    "DOUBLE_SPEND_ATTEMPTED": {"competingTxs": [OTHER, "not-a-txid"], "extraInfo": "seen twice"},
    "REJECTED": {"extraInfo": "mandatory-script-verify-flag-failed"},
    "MINED": {"blockHeight": 812_345, "blockHash": BLOCK, "merklePath": "fe00"},
}


def test_status_enum_is_arcs_list() -> None:
    assert {s.name: s.value for s in ArcStatus} == ARC_TX_STATUSES
    assert set(EXPECTED_STATUS) == set(ARC_TX_STATUSES)


@pytest.mark.parametrize("name", list(ARC_TX_STATUSES))
def test_every_tx_status_maps_to_its_outcome(name: str) -> None:
    body = _body(name, **EXTRA.get(name, {}))
    for request in ("submit", "status"):
        assert classify(ArcReply(200, body), TXID, request) == EXPECTED_STATUS[name]


EXPECTED_SUBMIT_HTTP = {
    400: Rejected("parse", "ARC 400 T: why"),
    404: Transient("ARC 404 T: why (check the ARC URL)"),
    409: Transient("ARC 409 T: why"),
    460: Rejected("format", "ARC 460 T: why"),
    461: Rejected("script", "ARC 461 T: why"),
    462: Rejected("missing-or-spent-input", "ARC 462 T: why"),
    463: Rejected("malformed", "ARC 463 T: why"),
    464: Rejected("output-value", "ARC 464 T: why"),
    465: Rejected("fee", "ARC 465 T: why"),
    466: Rejected("double-spend", "ARC 466 T: why"),
    468: Rejected("spv", "ARC 468 T: why"),
    469: Rejected("spv", "ARC 469 T: why"),
    471: Rejected("frozen", "ARC 471 T: why"),
    472: Rejected("frozen", "ARC 472 T: why"),
    473: Rejected("fee", "ARC 473 T: why"),
    474: Rejected("oversize", "ARC 474 T: why"),
    475: Rejected("spv", "ARC 475 T: why"),
}


@pytest.mark.parametrize("code", ARC_ERROR_CODES)
def test_every_arc_error_code_maps_to_its_outcome(code: int) -> None:
    problem = {"status": code, "title": "T", "detail": "long", "extraInfo": "why", "txid": TXID}
    assert classify(ArcReply(code, problem), TXID, "submit") == EXPECTED_SUBMIT_HTTP[code]


def test_every_rule_named_is_a_known_rule() -> None:
    named = set(ERROR_RULES.values()) | {r for _, r in REASON_RULES if r is not None}
    assert named <= set(RULES)


@pytest.mark.parametrize(
    ("reply", "request_kind", "expected"),
    [
        (ArcReply(401, {"title": "Unauthorized"}), "submit", AuthFailed("ARC 401 Unauthorized")),
        (ArcReply(403, None), "status", AuthFailed("ARC 403")),
        (ArcReply(404, None), "status", NotFound()),
        (ArcReply(500, None), "submit", Transient("ARC 500")),
        (ArcReply(502, None), "status", Transient("ARC 502")),
        (ArcReply(503, {"error": "x"}), "submit", Transient("ARC 503")),
        (ArcReply(408, None), "submit", Transient("ARC 408")),
        (ArcReply(429, None), "submit", Transient("ARC 429")),
        (ArcReply(470, None), "submit", Rejected("arc-470", "ARC 470")),
        (ArcReply(465, None), "status", Transient("unexpected answer: ARC 465")),
        (ArcReply(None, None, "timeout"), "submit", Transient("no answer from ARC (timeout)")),
        (ArcReply(200, None), "submit", Transient("ARC answered 200 with an unreadable body")),
    ],
)
def test_http_answers_map_to_outcomes(reply: ArcReply, request_kind: str, expected: object) -> None:
    assert classify(reply, TXID, request_kind) == expected  # type: ignore[arg-type]


def test_unreadable_200_bodies_are_transient_never_success() -> None:
    for body in (
        {"txid": TXID},  # no status
        _body("ALMOST_MINED"),  # a status ARC does not define
        _body("MINED", blockHeight=0, blockHash=BLOCK),  # mined nowhere
        _body("MINED", blockHeight=True, blockHash=BLOCK),
        _body("MINED", blockHeight=5, blockHash="nope"),
        _body("SEEN_ON_NETWORK", txid=OTHER),  # about another transaction
    ):
        assert isinstance(classify(ArcReply(200, body), TXID, "submit"), Transient), body


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("txn-already-known", Accepted(None)),
        ("Transaction already in the mempool", Accepted(None)),
        ("non-final", Rejected("non-final", "ARC REJECTED: non-final")),
        ("64: non-BIP68-final", Rejected("non-final", "ARC REJECTED: 64: non-BIP68-final")),
        ("txn-mempool-conflict", Rejected("double-spend", "ARC REJECTED: txn-mempool-conflict")),
        (
            "66: mempool min fee not met",
            Rejected("fee", "ARC REJECTED: 66: mempool min fee not met"),
        ),
        (
            "bad-txns-inputs-missingorspent",
            Rejected("missing-or-spent-input", "ARC REJECTED: bad-txns-inputs-missingorspent"),
        ),
        ("", Rejected("rejected", "ARC REJECTED: ?")),
    ],
)
def test_rejected_reasons_map_to_rules(reason: str, expected: object) -> None:
    body = _body("REJECTED", extraInfo=reason)
    assert classify(ArcReply(200, body), TXID, "status") == expected


def test_backoff_is_capped_exponential_with_jitter_passed_in() -> None:
    s = PollSchedule(first=1, factor=2, cap=10, jitter=0.5, block_wait=5)
    assert [s.backoff(n, 0.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert s.backoff(10_000, 0.0) == 10  # no overflow
    assert s.backoff(2, 0.5) == 3.0 and s.backoff(2, 0.99) == pytest.approx(2.02)
    for attempt in range(8):
        assert s.backoff(attempt, 0.999) >= s.backoff(attempt, 0.0) / 2
    # waiting for a block: no faster than block_wait, until the cap
    assert next_poll_delay(s, 0, Accepted(ArcStatus.RECEIVED), 0.0) == 1
    assert next_poll_delay(s, 0, Accepted(ArcStatus.SEEN_ON_NETWORK), 0.0) == 5
    assert next_poll_delay(s, 4, Accepted(ArcStatus.SEEN_ON_NETWORK), 0.0) == 10
    assert next_poll_delay(s, 0, Accepted(None), 0.0) == 5
    assert next_poll_delay(s, 1, Orphan(), 0.0) == 2
    assert next_poll_delay(s, 3, Transient("x"), 0.0) == 8
    assert same_state(Transient("a"), Transient("b"))
    assert not same_state(Accepted(ArcStatus.RECEIVED), Accepted(ArcStatus.STORED))
    assert not same_state(None, Orphan())
    for bad in ({"first": 0}, {"factor": 0.5}, {"cap": 0.1}, {"jitter": 1.0}, {"retries": -1}):
        with pytest.raises(ValueError):
            PollSchedule(**bad)


def _policy_answer(satoshis: object, per: object, **sizes: object) -> dict[str, object]:
    policy = {
        "maxscriptsizepolicy": 500_000,
        "maxtxsigopscountspolicy": 4_294_967_295,
        "maxtxsizepolicy": 10_000_000,
        "miningFee": {"satoshis": satoshis, "bytes": per},
    } | sizes
    return {"policy": policy, "timestamp": "2026-12-07T00:00:00Z"}


def test_policy_maps_arcs_fee_and_limits() -> None:
    assert policy_from_arc(_policy_answer(1, 1000)) == Policy(fee_rate=1, min_fee=1)
    assert policy_from_arc(_policy_answer(50, 1000)).fee_rate == 50
    assert policy_from_arc(_policy_answer(5, 10_000)).fee_rate == 1  # 0.5 sat/kB, rounded up
    assert policy_from_arc(_policy_answer(1, 3)).fee_rate == 334
    free = policy_from_arc(_policy_answer(0, 1000))
    assert (free.fee_rate, free.min_fee) == (0, 0)
    sized = policy_from_arc(_policy_answer(1, 1000, maxtxsizepolicy=2_000, maxscriptsizepolicy=0))
    assert (sized.max_tx_size, sized.max_script_size) == (2_000, Policy().max_script_size)


def _arc_fee(size: int, sat_per_kb: int) -> int:
    """ARC's fee (go-sdk v1.2.20 ``calculateFee``): ``ceil(float(size) / 1000 * rate)``."""
    return math.ceil(size / 1000 * sat_per_kb)


@pytest.mark.parametrize("sat_per_kb", [1, 2, 7, 50, 100, 500])
def test_mapped_policy_charges_what_arc_charges(sat_per_kb: int) -> None:
    policy = policy_from_arc(_policy_answer(sat_per_kb, 1000))
    # ARC computes in floating point: where size * rate / 1000 is a whole number the
    # product can land just above it and ARC asks one satoshi more than the exact fee
    # (140 B at 50 sat/kB: 8 sat, exactly 7). `required_fee` asks what ARC asks.
    off = [s for s in range(1, 20_001) if policy.required_fee(s) != _arc_fee(s, sat_per_kb)]
    assert off == []
    exact = [s for s in range(1, 20_001) if -(-s * sat_per_kb // 1000) != _arc_fee(s, sat_per_kb)]
    if sat_per_kb in (1, 2, 7):
        assert exact == []
    if sat_per_kb == 50:
        assert 140 in exact


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {"policy": None},
        {"policy": {"maxtxsizepolicy": 1}},
        _policy_answer(1, 0),
        _policy_answer(-1, 1000),
        _policy_answer(True, 1000),
        _policy_answer("1", 1000),
        _policy_answer(1, 1000, maxtxsizepolicy=-5),
    ],
)
def test_unreadable_policy_is_unavailable(answer: object) -> None:
    with pytest.raises(ChainUnavailable):
        policy_from_arc(answer)


def test_extended_format_matches_bsv_sdk_and_round_trips(ledger: LocalLedger) -> None:
    key = PrivateKey()
    coins = [mint(ledger, 40_000, key), mint(ledger, 2_000, key)]
    tx = spend(coins, [(p2pkh(key), 41_000)])  # inputs linked to their parents
    raw: bytes = tx.serialize()
    prevouts = [Prevout(40_000, p2pkh(key)), Prevout(2_000, p2pkh(key))]
    assert known_prevouts(tx) == prevouts
    ef = to_extended(raw, prevouts)
    assert ef == tx.to_ef()
    assert from_extended(ef) == (raw, prevouts)
    with pytest.raises(ValueError):
        from_extended(raw)  # no marker
    with pytest.raises(ValueError):
        from_extended(ef[:-3])


def test_prevouts_come_from_links_inputs_or_fetched_parents(ledger: LocalLedger) -> None:
    key = PrivateKey()
    coin = mint(ledger, 30_000, key)
    tx, _ = pay(coin)
    bare = Transaction.from_hex(tx.serialize())  # as read back from a store: nothing linked
    assert known_prevouts(bare) == [None]
    parent = tx_id(coin.tx)
    assert parents_needed(bare, [None]) == [parent]
    assert parent_output(coin.tx.serialize(), parent, 0) == Prevout(30_000, p2pkh(key))
    with pytest.raises(ChainUnavailable):
        parent_output(tx.serialize(), parent, 0)  # bytes of another transaction
    with pytest.raises(TxRejected) as caught:
        parent_output(coin.tx.serialize(), parent, 3)
    assert caught.value.rule == "missing-input"
    # channel style: amount and script on the input, no parent linked
    bare.inputs[0].satoshis = 30_000
    bare.inputs[0].locking_script = coin.tx.outputs[0].locking_script
    assert known_prevouts(bare) == [Prevout(30_000, p2pkh(key))]
    assert parents_needed(bare, known_prevouts(bare)) == []
    # a linked parent that is not the one the input names
    wrong, _ = pay(mint(ledger, 1_000))
    bare.inputs[0].source_transaction = wrong
    with pytest.raises(ChainError):
        known_prevouts(bare)


def test_an_address_is_written_for_the_network_asked() -> None:
    key = PrivateKey(1)
    main, test = key.address(), key.address(network=Network.TESTNET)
    assert network_address(main, "test") == test == network_address(test, "test")
    assert network_address(test, "main") == main
    with pytest.raises(KeyError):
        network_address(main, "regtest")
