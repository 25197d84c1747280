"""BSV's header rules and checkpoint trust (`mesh.anchoring.header_rules`, `HeaderChain`).

The difficulty adjustment is checked against real headers: mainnet 886001..886300 (BSV
mainnet, Feb 2025) and testnet 1602530..1602710 (which holds minimum-difficulty blocks
mined more than 20 minutes after their parent), both taken from the teranode repository
(``services/blockchain/886001_888000_headers.bin``, the first 300 headers, and
``test/testnet_headers_1602530_1602710.bin``), in tests/anchoring/data as hex, one header
a line. Every header there from the 147th on must carry exactly the bits the rules
compute. The trust logic (checkpoints, re-mined, backdated, wrong-bits, future chains,
most work) runs on toy chains mined in Python under test-only parameters
(`tests.anchoring.header_chains`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mesh.anchoring.checkpoints import MAINNET, NETWORK_PARAMS, TESTNET
from mesh.anchoring.errors import HEADER_RULES, HeaderRejected, HeadersError
from mesh.anchoring.header_rules import (
    DAA_HISTORY,
    MAX_FUTURE_DRIFT,
    Checkpoint,
    NetworkParams,
    bits_from_target,
    block_proof,
    cash_target,
    cumulative_work,
    judge_chain,
    median_time_past,
    required_bits,
    suitable_index,
    target_from_bits,
)
from mesh.anchoring.headers import HeaderChain, best_chain
from mesh.chain.arc import GENESIS
from mesh.chain.merkle import BlockHeader
from tests.anchoring.header_chains import (
    CHECKPOINT,
    T0,
    Miner,
    genesis,
    mine,
    real_headers,
    relink,
    root_for,
    toy_chain,
    toy_params,
)

MAIN_FILE = "mainnet-886001-886300.hex"
TEST_FILE = "testnet-1602530-1602710.hex"


def rejected(headers: list[BlockHeader], start: int, params: NetworkParams, now: float) -> str:
    """The rule `judge_chain` refuses the chain by (and the detail, checked for a header)."""
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(headers, start, params, now)
    assert caught.value.rule in HEADER_RULES
    return caught.value.rule


def honest() -> tuple[NetworkParams, list[BlockHeader], float]:
    params, headers = toy_chain()
    return params, list(headers), headers[-1].time + 600


# --------------------------------------------------------------------------- targets


def test_compact_bits_decode_encode_and_refuse_what_nodes_refuse() -> None:
    assert target_from_bits(0x1D00FFFF) == 0xFFFF << 208
    assert bits_from_target(0xFFFF << 208) == 0x1D00FFFF
    assert bits_from_target(MAINNET.pow_limit) == 0x1D00FFFF  # precision is lost
    assert bits_from_target(0x80) == 0x02008000  # a set top bit would read as the sign
    assert target_from_bits(0x02008000) == 0x80
    assert target_from_bits(0x01123456) == 0x12
    for bad in (0x1D80FFFF, 0x1D000000, 0x01003456, 0x21010000, 0x23000001, 0x04923456):
        assert target_from_bits(bad) is None, hex(bad)  # negative, zero, or over 2**256
        assert block_proof(bad) == 0
    for name in (MAIN_FILE, TEST_FILE):
        for header in real_headers(name)[1]:
            target = target_from_bits(header.bits)
            assert target is not None and bits_from_target(target) == header.bits


def test_block_proof_is_the_nodes_chain_work() -> None:
    assert block_proof(0x1D00FFFF) == 0x100010001  # a difficulty-1 block: 4 295 032 833
    assert block_proof(0x207FFFFF) == 2
    assert block_proof(0x1F010000) == 0xFFFF  # 2**256 // (2**240 + 1), not 2**16
    # Mainnet's chain work after block 886000 and 886001, as a node reports them.
    start, headers = real_headers(MAIN_FILE)
    assert start == 886001
    assert block_proof(headers[0].bits) == (0x16354F6E546CEA378DE0E02 - 0x16354E91E00B76E48F14AEE)
    work = cumulative_work(headers[:3])
    assert work == [sum(block_proof(h.bits) for h in headers[: i + 1]) for i in range(3)]


# --------------------------------------------------------------------------- real headers


@pytest.mark.parametrize(("name", "params"), [(MAIN_FILE, MAINNET), (TEST_FILE, TESTNET)])
def test_the_difficulty_adjustment_gives_every_real_headers_bits(
    name: str, params: NetworkParams
) -> None:
    start, headers = real_headers(name)
    times, work = [h.time for h in headers], cumulative_work(headers)
    checked = 0
    for i in range(DAA_HISTORY + 1, len(headers)):
        expected = required_bits(times, work, i - 1, headers[i].time, params)
        assert expected == headers[i].bits, f"height {start + i}"
        checked += 1
    assert checked == len(headers) - DAA_HISTORY - 1
    # And a real chain passes every rule from a checkpoint 146 headers above its start
    # (a checkpoint taken from the file: the shipped ones are far below these heights).
    anchor = start + DAA_HISTORY
    trusted = dataclasses.replace(
        params, checkpoints=(*params.checkpoints, Checkpoint(anchor, headers[146].hash_hex))
    )
    trust = judge_chain(headers, start, trusted, now=headers[-1].time)
    assert trust.checkpoint.height == anchor and trust.judged == len(headers) - DAA_HISTORY - 1
    assert trust.cumulative_work == work[-1]


def test_testnet_minimum_difficulty_after_twenty_minutes() -> None:
    start, headers = real_headers(TEST_FILE)
    times, work = [h.time for h in headers], cumulative_work(headers)
    i = 1602683 - start  # mined 1208 s after its parent, at the limit's bits
    assert headers[i].time - headers[i - 1].time == 1208 and headers[i].bits == 0x1D00FFFF
    assert required_bits(times, work, i - 1, headers[i].time, TESTNET) == 0x1D00FFFF
    # Exactly 20 minutes is not more than 20: the adjustment applies.
    at_twenty = required_bits(times, work, i - 1, headers[i - 1].time + 1200, TESTNET)
    assert at_twenty not in (0x1D00FFFF, headers[i].bits)
    assert at_twenty == required_bits(times, work, i - 1, headers[i - 1].time + 1, TESTNET)
    # Mainnet rules have no such exception: the header's limit bits would be wrong there.
    assert required_bits(times, work, i - 1, headers[i].time, MAINNET) == at_twenty
    no_exception = dataclasses.replace(TESTNET, allow_min_difficulty=False)
    anchor = start + DAA_HISTORY
    no_exception = dataclasses.replace(
        no_exception,
        checkpoints=(*TESTNET.checkpoints, Checkpoint(anchor, headers[146].hash_hex)),
    )
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(headers, start, no_exception, now=headers[-1].time)
    assert caught.value.rule == "bits"
    assert caught.value.height is not None and headers[caught.value.height - start].bits == (
        0x1D00FFFF
    )


# --------------------------------------------------------------------------- the DAA by hand


def window(spacing: int, bits: int = 0x1812946D, count: int = DAA_HISTORY + 1) -> list[BlockHeader]:
    """`count` headers at `bits`, `spacing` s apart (not mined: the DAA reads bits and
    times only)."""
    return [
        BlockHeader(0x20000000, bytes(32), bytes(32), T0 + i * spacing, bits, 0)
        for i in range(count)
    ]


def by_hand(work_between: int, span: int) -> int:
    """The cw-144 target written out: span clamped to [72, 288] x 600, then
    (2**256 - W) // W with W = work * 600 // span."""
    span = min(max(span, 72 * 600), 288 * 600)
    w = work_between * 600 // span
    return ((1 << 256) - w) // w


@pytest.mark.parametrize(
    ("spacing", "span"),
    [(600, 144 * 600), (500, 144 * 500), (700, 144 * 700), (250, 72 * 600), (100, 72 * 600),
     (1300, 288 * 600), (6000, 288 * 600)],
)  # fmt: skip
def test_the_difficulty_follows_work_over_time_clamped(spacing: int, span: int) -> None:
    headers = window(spacing)
    times, work = [h.time for h in headers], cumulative_work(headers)
    proof = block_proof(0x1812946D)
    expected = bits_from_target(by_hand(144 * proof, span))
    assert required_bits(times, work, len(headers) - 1, times[-1] + 600, MAINNET) == expected
    assert cash_target(0, 144 * spacing, 144 * proof, MAINNET) == by_hand(144 * proof, span)
    # Faster blocks mean a smaller target (more difficulty), within the clamps.
    same = bits_from_target(by_hand(144 * proof, 144 * 600))
    assert (expected < same) == (spacing < 600) or spacing == 600


def test_the_suitable_block_is_the_median_of_three_by_time() -> None:
    assert suitable_index([10, 20, 30], 2) == 1
    assert suitable_index([10, 30, 20], 2) == 2
    assert suitable_index([30, 10, 20], 2) == 2
    assert suitable_index([20, 10, 30], 2) == 0
    # Equal times: the node's three compare-and-swap steps decide, and so the block
    # (and its chain work) is the one a node picks, not any block of that time.
    assert suitable_index([20, 20, 10], 2) == 1
    assert suitable_index([10, 20, 20], 2) == 1
    assert suitable_index([20, 10, 20], 2) == 0
    # A parent whose time lies far ahead does not stretch the span: the median is used.
    headers = window(600)
    skewed = [*headers[:-1], dataclasses.replace(headers[-1], time=headers[-1].time + 50_000)]
    times, work = [h.time for h in skewed], cumulative_work(skewed)
    parent = len(skewed) - 1
    last, first = parent - 1, parent - 1 - 144  # the medians of each three
    assert suitable_index(times, parent) == last
    expected = bits_from_target(by_hand(work[last] - work[first], times[last] - times[first]))
    assert required_bits(times, work, parent, times[parent] + 600, MAINNET) == expected
    naive = bits_from_target(by_hand(work[parent] - work[first], times[parent] - times[first]))
    assert naive != expected
    # The first block of the window too: one backdated block there is not the median.
    base = window(600)
    parent = len(base) - 1
    odd = parent - 145
    skewed = [*base[:odd], dataclasses.replace(base[odd], time=base[odd].time - 3000)]
    skewed += base[odd + 1 :]
    times, work = [h.time for h in skewed], cumulative_work(skewed)
    first = suitable_index(times, parent - 144)
    assert first == parent - 146  # times: X, X - 2400, X + 1200: the median is X
    expected = bits_from_target(
        by_hand(work[parent - 1] - work[first], times[parent - 1] - times[first])
    )
    assert required_bits(times, work, parent, times[parent] + 600, MAINNET) == expected
    naive = bits_from_target(by_hand(work[parent - 1] - work[odd], times[parent - 1] - times[odd]))
    assert naive != expected


def test_the_target_is_capped_at_the_limit() -> None:
    slow = window(6000, bits=0x1D00FFFF)  # at the limit, and slow: the target would rise
    times, work = [h.time for h in slow], cumulative_work(slow)
    assert by_hand(144 * block_proof(0x1D00FFFF), 144 * 6000) > MAINNET.pow_limit
    assert required_bits(times, work, len(slow) - 1, times[-1] + 600, MAINNET) == 0x1D00FFFF
    with pytest.raises(ValueError, match="146 headers"):
        required_bits(times, work, DAA_HISTORY - 1, times[-1], MAINNET)


def test_median_time_past_is_of_the_last_eleven() -> None:
    assert median_time_past([5, 1, 9]) == 5
    assert median_time_past(list(range(100, 0, -1))) == 6  # 11..1 -> 6
    assert median_time_past([7]) == 7


# --------------------------------------------------------------------------- trust from checkpoints


def test_an_honest_chain_is_trusted_from_its_checkpoint() -> None:
    params, headers, now = honest()
    trust = judge_chain(headers, 0, params, now)
    assert trust.checkpoint == Checkpoint(CHECKPOINT, headers[CHECKPOINT].hash_hex)
    assert trust.judged == len(headers) - CHECKPOINT - 1
    assert trust.cumulative_work == sum(block_proof(h.bits) for h in headers)
    assert len({h.bits for h in headers[CHECKPOINT:]}) > 1  # the difficulty really moved
    # From exactly 146 below the checkpoint is enough; the tip may be the checkpoint.
    assert judge_chain(headers[CHECKPOINT - DAA_HISTORY :], CHECKPOINT - DAA_HISTORY, params, now)
    assert judge_chain(headers[150 : CHECKPOINT + 1], 150, params, now).judged == 0


def test_a_re_mined_chain_does_not_connect_to_the_checkpoint() -> None:
    params, headers, now = honest()
    # Someone re-mines every header from genesis (cheap at these bits): all the rules
    # hold, the hashes differ, and at the checkpoint's height the hash is not the one.
    remined = Miner(params, [genesis()]).extend(169, 400, b"other").extend(230, 600, b"other")
    own = Checkpoint(CHECKPOINT, remined.headers[CHECKPOINT].hash_hex)
    judge_chain(remined.headers, 0, toy_params(genesis(), own), now)  # by its own checkpoint
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(remined.headers, 0, params, now)
    assert caught.value.rule == "checkpoint" and str(caught.value).startswith(
        f"does not connect to checkpoint at height {CHECKPOINT}: its header {CHECKPOINT} is "
    )
    # A chain that starts above the checkpoint does not reach it.
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(headers[CHECKPOINT + 1 :], CHECKPOINT + 1, params, now)
    assert str(caught.value) == (
        f"does not connect to checkpoint at height {CHECKPOINT}"
        f" (covers heights {CHECKPOINT + 1}..{len(headers) - 1})"
    )
    # One that holds it but not the 146 headers below it cannot judge what is above it.
    with pytest.raises(HeaderRejected, match="needs the 146 headers below it, from height 54"):
        judge_chain(headers[100:], 100, params, now)
    # The real networks' shipped checkpoints: a toy chain connects to none of them.
    for real in NETWORK_PARAMS.values():
        with pytest.raises(HeaderRejected, match="does not connect to checkpoint at height"):
            judge_chain(headers, 0, real, now)


def test_real_headers_far_above_the_shipped_checkpoints_are_refused_without_them() -> None:
    start, headers = real_headers(MAIN_FILE)
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(headers, start, MAINNET, headers[-1].time)
    assert str(caught.value) == (
        "does not connect to checkpoint at height 530359 (covers heights 886001..886300)"
    )


def test_a_header_with_another_hash_at_a_checkpoint_height_is_refused() -> None:
    params, headers, now = honest()
    # Below the checkpoint nothing is judged by the rules, only hash-linked into it:
    # change header 120 and everything above it changes hash, so the checkpoint misses.
    changed = relink(
        headers, 0, lambda h, x: dataclasses.replace(x, nonce=x.nonce + 1) if h == 120 else x
    )
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(changed, 0, params, now)
    assert caught.value.rule == "checkpoint" and caught.value.height == CHECKPOINT
    assert str(caught.value).startswith(
        f"does not connect to checkpoint at height {CHECKPOINT}: its header {CHECKPOINT} is "
    )
    # The genesis block is a checkpoint too.
    other = relink(headers, 0, lambda h, x: genesis(b"another") if h == 0 else x)
    with pytest.raises(HeaderRejected, match="does not connect to checkpoint at height 0: "):
        judge_chain(other, 0, params, now)


def test_a_broken_link_is_refused() -> None:
    params, headers, now = honest()
    broken = [
        *headers[:300],
        dataclasses.replace(headers[300], prev_hash=bytes(32)),
        *headers[301:],
    ]
    with pytest.raises(HeaderRejected, match="header 300 does not link to header 299"):
        judge_chain(broken, 0, params, now)


def test_a_header_backdated_by_100_million_seconds_is_refused() -> None:
    params, headers, now = honest()
    miner = Miner(params, headers[:301])
    back = miner.tip.time - 100_000_000
    miner.next(time=back)  # mined, at the bits the rules require at that time
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(miner.headers, 0, params, now)
    assert caught.value.rule == "time-too-old" and caught.value.height == 301
    assert "not after the median time" in str(caught.value)
    # Equal to the median of the last 11 is not after it either; one second later is.
    past = median_time_past([h.time for h in headers[290:301]])
    for time, ok in ((past, False), (past + 1, True)):
        miner = Miner(params, headers[:301])
        miner.next(time=time)
        if ok:
            judge_chain(miner.headers, 0, params, now)
        else:
            assert rejected(miner.headers, 0, params, now) == "time-too-old"


def test_bits_other_than_the_adjustments_are_refused_even_if_met() -> None:
    params, headers, now = honest()
    miner = Miner(params, headers[:301])
    required = miner.bits_for(miner.tip.time + 600)
    target = target_from_bits(required)
    assert target is not None
    harder = bits_from_target(target // 4)
    header = miner.next(600, bits=harder)
    assert header.meets_target() and header.bits != required
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(miner.headers, 0, params, now)
    assert caught.value.rule == "bits" and caught.value.height == 301
    assert f"requires {required:#010x}" in str(caught.value)
    # Easier than the limit is a proof-of-work failure, whatever the adjustment says.
    miner = Miner(params, headers[:301])
    miner.next(600, bits=0x2100FFFF)
    assert rejected(miner.headers, 0, params, now) == "pow"
    # And a header that does not meet its bits at all.
    unmet = [*headers[:301], dataclasses.replace(headers[301], nonce=headers[301].nonce + 1)]
    while unmet[-1].meets_target():
        unmet[-1] = dataclasses.replace(unmet[-1], nonce=unmet[-1].nonce + 1)
    assert rejected(unmet, 0, params, now) == "pow"


def test_a_header_too_far_in_the_future_is_refused() -> None:
    params, headers, _ = honest()
    tip_time = headers[-1].time
    judge_chain(headers, 0, params, now=tip_time - MAX_FUTURE_DRIFT)  # exactly 2 h ahead
    with pytest.raises(HeaderRejected) as caught:
        judge_chain(headers, 0, params, now=tip_time - MAX_FUTURE_DRIFT - 1)
    assert caught.value.rule == "time-too-new" and caught.value.height == len(headers) - 1
    # Headers below the checkpoint are history: the clock does not judge them.
    judge_chain(headers[: CHECKPOINT + 1], 0, params, now=T0)


def test_an_old_version_is_refused_where_the_network_requires_a_newer() -> None:
    params, headers, now = honest()
    strict = dataclasses.replace(params, version_heights=((250, 4),))
    judge_chain(headers, 0, strict, now)
    miner = Miner(strict, headers[:301])
    miner.next(600, version=3)
    assert rejected(miner.headers, 0, strict, now) == "version"
    miner = Miner(strict, headers[:241])  # below the height, version 3 was still fine
    miner.next(600, version=3)
    judge_chain(miner.headers, 0, strict, now)


def test_more_cumulative_work_wins() -> None:
    params, headers, now = honest()
    main = Miner(params, list(headers))
    short = main.fork(350).extend(20, 600, b"short")  # 370 headers
    long = main.fork(350).extend(40, 600, b"long")  # 390 headers
    chains = [
        HeaderChain.checked(m.headers, 0, name, network=params, now=now + 100_000)
        for name, m in (("short", short), ("long", long), ("main", main))
    ]
    assert [c.network for c in chains] == ["toy"] * 3
    assert best_chain(chains).source == "main"  # 400 headers: the most work
    assert best_chain(chains[:2]).source == best_chain(chains[1::-1]).source == "long"
    assert chains[2].cumulative_work > chains[1].cumulative_work > chains[0].cumulative_work
    # Work, not length: three headers at 4x the difficulty outweigh ten at the limit.
    first = mine(bytes(32), root_for(b"local", 0), T0, 0x207FFFFF)
    easy = Miner(params, [first])
    for _ in range(10):
        easy.next(600, bits=0x207FFFFF)
    hard = Miner(params, [first])
    for _ in range(3):
        hard.next(600, bits=0x201FFFFF)
    local = [HeaderChain.checked(m.headers, 0, n) for n, m in (("easy", easy), ("hard", hard))]
    assert local[0].cumulative_work == 22 and local[1].cumulative_work == 2 + 3 * 8
    assert best_chain(local).source == "hard"
    # A later start counts from there: only the part both may differ in is compared.
    later = HeaderChain.checked(headers[54:], 54, "later", network=params, now=now)
    assert best_chain([later, chains[2]]) is later  # a tie: the first wins
    with pytest.raises(ValueError, match="different networks"):
        best_chain([local[0], chains[0]])


# --------------------------------------------------------------------------- HeaderChain


def test_headerchain_checks_by_the_network_and_keeps_local_chains_as_they_were(
    tmp_path: Path,
) -> None:
    params, headers, now = honest()
    chain = HeaderChain.checked(headers, 0, "toy headers", network=params, now=now)
    assert chain.trust is not None and chain.trust.checkpoint.height == CHECKPOINT
    assert chain.describe_trust().startswith(f"toy headers 0..399: from checkpoint {CHECKPOINT} ")
    # Refusals name the source and the rule.
    remined = Miner(params, [genesis(b"x")]).extend(210, 600, b"x").headers
    with pytest.raises(HeaderRejected) as caught:
        HeaderChain.checked(remined, 0, "--headers h.json", network=params, now=now)
    assert str(caught.value).startswith("--headers h.json: does not connect to checkpoint")
    with pytest.raises(ValueError, match="needs `now`"):
        HeaderChain.checked(headers, 0, network=params)
    with pytest.raises(HeadersError, match="unknown network 'mars'"):
        HeaderChain.checked(headers, 0, network="mars", now=now)
    # The same re-mined chain as a local chain: links and its own bits, as before.
    local = HeaderChain.checked(remined, 0, "local file")
    assert local.network == "local" and local.trust is None
    assert local.describe_trust() == (
        "local headers 0..210: linked, each meets its own bits (no checkpoint)"
    )
    # A file names its network; asking for another is refused.
    document = chain.to_document()
    assert document["network"] == "toy" and document["start_height"] == 0
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(document))
    assert HeaderChain.load(path, network=params, now=now).trust == chain.trust
    with pytest.raises(HeadersError, match="a 'toy' headers file, not 'test'"):
        HeaderChain.load(path, network="test", now=now)
    with pytest.raises(HeadersError, match="unknown network 'toy'"):
        HeaderChain.load(path, now=now)  # "toy" ships no rules: not trusted by name
    old = {k: v for k, v in document.items() if k != "network"}  # files before the field
    path.write_text(json.dumps(old))
    with pytest.raises(HeadersError, match="unknown network"):
        HeaderChain.load(path, network="toy", now=now)
    assert HeaderChain.load(path).network == "local"  # unnamed: local, unless asked
    assert HeaderChain.load(path, network=params, now=now).trust == chain.trust
    with pytest.raises(HeaderRejected, match="does not connect to checkpoint at height 0"):
        HeaderChain.load(path, network="test", now=now)


def test_real_genesis_headers_are_not_accepted_as_a_local_chain() -> None:
    # Mainnet's genesis header (its hash is arc.GENESIS["main"]): as a local chain it
    # would be trusted for meeting its own bits; it is sent to mainnet's rules instead.
    header = BlockHeader(
        1,
        bytes(32),
        bytes.fromhex("3ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a"),
        1231006505,
        0x1D00FFFF,
        2083236893,
    )
    assert header.hash_hex == GENESIS["main"]
    with pytest.raises(HeadersError, match="these are main network headers"):
        HeaderChain.checked([header], 0, "file")
    with pytest.raises(HeaderRejected, match="does not connect to checkpoint at height 504031"):
        HeaderChain.checked([header], 0, "file", network="main", now=T0)
    assert HeaderChain.checked([header], 5, "file").start_height == 5  # not at height 0


def test_the_shipped_parameters_are_consistent() -> None:
    for name, params in NETWORK_PARAMS.items():
        assert params.name == name and params.checkpoints[0] == Checkpoint(0, GENESIS[name])
        assert params.pow_limit_bits == 0x1D00FFFF and params.target_spacing == 600
        assert params.anchors() and all(c.height >= params.daa_height for c in params.anchors())
    assert MAINNET.anchors()[-1] == Checkpoint(
        530359, "0000000000000000011ada8bd08f46074f44a8f155396f43e38acf9501c49103"
    )
    assert TESTNET.anchors() == (
        Checkpoint(1188697, "0000000000170ed0918077bde7b4d36cc4c91be69fa09211f748240dabe047fb"),
    )
    assert not MAINNET.allow_min_difficulty and TESTNET.allow_min_difficulty
    assert MAINNET.min_version(388381) == 4 and MAINNET.min_version(363724) == 2
    first = genesis()
    with pytest.raises(ValueError, match="genesis"):
        toy_params(first, Checkpoint(9, "00"), checkpoints=(Checkpoint(9, "00"),))
    with pytest.raises(ValueError, match="no checkpoint at or above the DAA height"):
        toy_params(first)  # only genesis, which nothing can be judged from
    with pytest.raises(ValueError, match="rising height"):
        toy_params(first, Checkpoint(9, "00"), Checkpoint(5, "00"))
    with pytest.raises(ValueError, match="256-bit"):
        toy_params(first, Checkpoint(9, "00"), pow_limit=1 << 256)
