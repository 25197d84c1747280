"""kill -9 at random points, for every role, then restart, settle and check invariants.

Roles and how a trial kills them:

* payer / payee: a buyer opens a channel to a provider and streams payments, then
  closes. The victim is killed either after a random delay (anywhere in open, pay,
  close) or -- to hit the narrow windows a timer rarely finds -- by itself, right
  before or after its N-th group commit, its N-th recorded funding/close
  transaction, or its N-th broadcast (`channel_roles.arm_kill`). The other end keeps
  running, as it would in a factory. The victim restarts from its data dir (a payee
  on the same mailbox; a payer as `resume`, which reloads and settles).
* ledger writer: a process hammering the shared LocalLedger file (mints, chains of
  spends, blocks) is killed mid-write while a payment stream uses the same file.
* anchoring agent: a process logging signed records and anchoring them in small
  batches (it also mines) dies by timer or right before/after a store write of the
  anchoring log or a broadcast; it restarts and settles.

Then blocks are mined up to the payee's close margin and past the expiry, so every
channel settles by cooperation, watcher or refund, and `invariants` checks the
ledger and every store: satoshis conserved, no acknowledged payment lost, the payer
never paying more than it signed, every channel final, nothing left reserved; for
the ledger writer, every write it had acknowledged is there and the ledger replays
consistently and still works; for the anchoring agent, every record it acknowledged
is there unchanged and every stored record is provable offline.

The fast-chain variant of the payer and payee trials (`fast_chain_trial`) mines a
block every second from start to end on a ledger under Teranode's finality rule (a
refund gets in once ``height + 1 >= nLockTime``), with channels that expire 15-25
blocks after they open, inside the trial. Nobody closes cooperatively: the payer
holds the channel and, restarted or not, offers its refund from two blocks before
the expiry on, so the payee's watcher must get its close in within its margin. Each
trial prints one line: the kill, the heights (expiry, kill, restart, settlement),
who settled the channel and the acknowledged satoshis lost (0 required).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from agents.channels import ChannelConfig, ChannelFailure
from mesh.chain.ledger import LocalLedger
from mesh.chain.local import LocalChain
from mesh.chain.rules import Policy
from mesh.chain.tx import parse_exact
from mesh.channel import Record, Role, State
from mesh.identity import load_identity
from tests.chain.helpers import mint, pay
from tests.channel.harness import agentlet
from tests.discovery.helpers import AgentProcess, agents_running
from tests.reliability.budget import (
    CI_CRASH_SEEDS,
    CI_CRASH_TRIALS,
    CI_FAST_CHAIN_SEEDS,
    CI_FAST_CHAIN_TRIALS,
    SLOW_CRASH_TRIALS,
    SLOW_FAST_CHAIN_TRIALS,
)
from tests.reliability.invariants import (
    FINAL,
    LedgerFacts,
    Settlement,
    acked_lost,
    acked_of,
    check_channel,
    check_ledger,
    stored_records,
    stranded_coins,
    wallet_reserved,
)
from tests.reliability.procs import (
    alive,
    command,
    event,
    events,
    free_port,
    kill,
    new_ledger,
    stop,
)

FAST = ("--heartbeat", 0.3, "--dead-after", 1.5, "--open-timeout", 3, "--timeout", 20)
LIFETIME = 30
MARGIN = ChannelConfig().close_margin_blocks


@dataclass
class Trial:
    """One crash trial's plan and what it observed (for the figures)."""

    victim: str
    seed: int
    kill: str = ""
    notes: list[str] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)


def plan(victim: str, rng: random.Random, payments: int) -> str:
    """Where to kill: "time:SECONDS" or an injected point "NAME:N:before|after"."""
    if rng.random() < 0.4:
        return f"time:{rng.uniform(0.0, 1.2):.3f}"
    commits = max(2, payments // 8)
    if victim == "payer":
        name, nth = rng.choice(
            [("save", rng.randint(1, commits)), ("save_raw", 1), ("broadcast", 1)]
        )
    else:
        name, nth = rng.choice(
            [("save", rng.randint(1, commits)), ("save_raw", 1), ("broadcast", rng.choice([1, 2]))]
        )
    return f"{name}:{nth}:{rng.choice(['before', 'after'])}"


async def channel_trial(tmp_path: Path, victim: str, seed: int) -> Trial:
    """One payer or payee crash trial, end to end."""
    rng = random.Random(seed)
    trial = Trial(victim, seed)
    payments, amount = rng.randint(200, 1200), rng.randint(1, 5)
    trial.kill = plan(victim, rng, payments)
    injected = [] if trial.kill.startswith("time") else ["--kill-at", trial.kill]
    ledger = new_ledger(tmp_path / "ledger.db")
    s_dir, b_dir = tmp_path / "payee", tmp_path / "payer"
    listen = f"tcp://127.0.0.1:{free_port()}"
    async with agents_running() as start:
        seller = ["--data", s_dir, "--ledger", ledger, "--listen", listen, *FAST]
        provider = await start(
            "provider", command("provider", *seller, *(injected if victim == "payee" else []))
        )
        hello = await event(provider, "ready")
        target = ["--connect", listen, "--peer", hello["peer_id"]]
        buyer = await start(
            "buyer",
            command(
                "buyer",
                "--data",
                b_dir,
                "--ledger",
                ledger,
                *target,
                *FAST,
                "--payments",
                payments,
                "--amount",
                amount,
                "--close",
                "--lifetime",
                LIFETIME,
                *(injected if victim == "payer" else []),
            ),
        )
        await event(buyer, "ready")
        doomed = provider if victim == "payee" else buyer
        if trial.kill.startswith("time"):
            await trio.sleep(float(trial.kill.split(":")[1]))
            kill(doomed)
        with trio.move_on_after(30):
            await doomed.process.wait()
        if alive(doomed):  # the injected point was never reached: kill it now
            trial.notes.append("point not reached")
            kill(doomed)
            await doomed.process.wait()
        before_payer, before_payee = stored_records(b_dir), stored_records(s_dir)
        if victim == "payee":
            provider = await start("provider-2", command("provider", *seller))
            await event(provider, "ready")
            await until_done(buyer, 40)
            if alive(buyer):
                kill(buyer)
        elif alive(provider) is False:
            raise AssertionError("the payee died although only the payer was killed")
        resumed = await start(
            "resume", command("resume", "--data", b_dir, "--ledger", ledger, *target, *FAST)
        )
        settled = await event(resumed, "settled", 60)
        trial.notes += [e["error"] for e in events(resumed, "settle-failed")]
        # With both ends back, a channel that paid anything closes cooperatively (no
        # waiting for the expiry), and a payer restarted after funding opens it.
        for r in settled["records"]:
            assert r["state"] == "closed" if r["total"] else r["state"] != "funded", r
        await expire_everything(ledger, settled["records"], [b_dir, s_dir])
        await stop(resumed, "final")
        await stop(provider, "stats")
    after_payer, after_payee = stored_records(b_dir), stored_records(s_dir)
    facts = check_ledger(ledger)
    for cid in set(after_payer) | set(after_payee):
        payer, payee = after_payer.get(cid), after_payee.get(cid)
        bounds = acked_of(before_payer.get(cid), before_payee.get(cid), payer, payee)
        trial.settlements.append(check_channel(facts, payer, payee, acked_bounds=bounds))
    identity = load_identity(b_dir / "identity.key")
    assert wallet_reserved(b_dir, identity) == 0, "coins left reserved in the payer's wallet"
    return trial


async def until_done(buyer: AgentProcess, timeout: float) -> None:
    """Wait until the buyer closed, gave up, or exited."""
    with trio.move_on_after(timeout):
        while alive(buyer) and not (events(buyer, "closed") or events(buyer, "failed")):
            await trio.sleep(0.05)


async def expire_everything(
    ledger: Path, records: list[dict[str, object]], dirs: list[Path]
) -> None:
    """Mine to the payee's close margin, then past the expiry, letting watchers act."""
    expiries = [int(r["expiry"]) for r in records]  # type: ignore[call-overload]
    expiries += [r.terms.expiry_height for d in dirs for r in stored_records(d).values()]
    if not expiries:
        return
    for goal in (min(expiries) - MARGIN, max(expiries) + 1):
        with LocalLedger.open(ledger) as chain:
            if chain.height() < goal:
                chain.mine(goal - chain.height())
        with trio.move_on_after(5):
            while not all_final(dirs, goal > min(expiries)):
                await trio.sleep(0.1)


def all_final(dirs: list[Path], past_expiry: bool) -> bool:
    records = [r for d in dirs for r in stored_records(d).values()]
    if past_expiry:  # a payee paid nothing has nothing to close and may stay open
        return all(r.state in FINAL or (r.role is Role.PAYEE and r.total == 0) for r in records)
    return all(r.state in FINAL or r.total == 0 for r in records)


async def test_payee_down_past_expiry_restarts_and_records_the_refund(tmp_path: Path) -> None:
    """A payee killed and kept down past the expiry loses the race to the payer's refund
    (Spilman: the payee must close within its margin). When it comes back it must not
    crash trying to close a spent funding output: it records the channel refunded."""
    ledger = new_ledger(tmp_path / "ledger.db")
    s_dir, b_dir = tmp_path / "payee", tmp_path / "payer"
    listen = f"tcp://127.0.0.1:{free_port()}"
    seller = ["--data", s_dir, "--ledger", ledger, "--listen", listen, *FAST]
    async with agents_running() as start:
        provider = await start("provider", command("provider", *seller))
        hello = await event(provider, "ready")
        buyer = await start(
            "buyer",
            command("buyer", "--data", b_dir, "--ledger", ledger, "--connect", listen,
                    "--peer", hello["peer_id"], *FAST, "--payments", 50, "--lifetime", 8,
                    "--hold"),
        )  # fmt: skip
        await event(buyer, "acked", 60)
        kill(provider)
        await provider.process.wait()
        [record] = stored_records(b_dir).values()
        await mine_to(ledger, record.terms.expiry_height + 1)
        with trio.fail_after(15):
            while stored_records(b_dir)[record.terms.channel_id].state is not State.REFUNDED:
                await trio.sleep(0.1)
        provider = await start("provider-2", command("provider", *seller))
        await event(provider, "ready")
        with trio.fail_after(15):
            while stored_records(s_dir)[record.terms.channel_id].state is not State.REFUNDED:
                assert alive(provider), "the payee crashed on a channel refunded meanwhile"
                await trio.sleep(0.1)
        await stop(provider, "stats")
        await stop(buyer, "final")
    assert stored_records(s_dir)[record.terms.channel_id].total == 50
    check_ledger(ledger)


async def test_close_with_a_vanished_payee_fails_as_a_channel_failure(tmp_path: Path) -> None:
    """Closing while the payee is gone ends in `ChannelFailure` after the timeout (what the
    runtime's shutdown catches), not in an exception that would abort the shutdown."""
    ledger = new_ledger(tmp_path / "ledger.db")
    quick = ChannelConfig(open_timeout=0.5)
    async with agentlet(tmp_path / "buyer", ledger, config=quick) as buyer:
        await buyer.fund(ledger, 1_000_000)
        async with agentlet(tmp_path / "seller", ledger) as seller:
            await buyer.node.connect(seller.node.address)
            cid = await buyer.manager.open(seller.node.peer_id, "x", 100_000, 20)
            await buyer.manager.pay(cid, 10)
            await buyer.manager.wait_acked(cid)
        with pytest.raises(ChannelFailure, match="not closed in time"):
            await buyer.manager.close(cid)


async def mine_to(ledger: Path, height: int) -> None:
    with LocalLedger.open(ledger) as chain:
        if chain.height() < height:
            chain.mine(height - chain.height())


# --------------------------------------------------------------------------- fast chain

BLOCK_SECONDS = 1.0
FAST_LIFETIMES = (15, 25)
"""Channel lifetimes in blocks (seconds, here): the expiry falls inside the trial."""
REFUND_LEAD = 2
"""The payer offers its refund from this many blocks before the expiry on: earlier
than any finality rule takes it, so the chain's rule alone decides when it gets in."""
EAGER_PAYER = ("--refund-lead", REFUND_LEAD)
"""A payer that refunds as soon as the chain lets it (`channel_roles.refund_early`,
beside the manager's own watcher, which waits for ``height >= expiry``)."""


@dataclass
class Outcome:
    """How one channel of a fast-chain trial ended."""

    channel_id: str
    acked: int  # the highest acked total either end ever stored
    paid: int  # what the ledger pays the payee
    lost: int  # acked satoshis the ledger does not pay the payee
    settled_by: str  # "payee-close", "payer-refund", "release", "unspent", "never-funded"
    block: int | None  # the block that holds the close or refund


@dataclass
class FastTrial:
    """One fast-chain trial: its plan, the heights it saw and how its channels ended."""

    victim: str
    seed: int
    kill: str
    lifetime: int
    reached: bool = True
    expiry: int | None = None
    killed_at: int | None = None  # the height when the victim was seen dead
    back_at: int | None = None  # the height when its restart was up and reloaded
    down: float = 0.0  # seconds from seeing the victim dead to its restart reloaded
    payer_events: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    unrecorded: int = 0
    """Satoshis the chain pays the payer that its wallet does not count: its change
    from a close it learnt of only through its refund's rejection (the runtime's
    wallet sync would add it; these helper agents have none)."""
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(o.lost for o in self.outcomes)

    def line(self) -> str:
        """The trial's summary line."""
        head = (
            f"fast-chain {self.victim} seed={self.seed} kill={self.kill}"
            f"{'' if self.reached else '(not reached)'} lifetime={self.lifetime}"
            f" expiry={self.expiry} killed@{self.killed_at} back@{self.back_at}"
            f" down={self.down:.2f}s"
        )
        ends = [
            f"{o.channel_id[:8]} {o.settled_by}@{o.block} acked={o.acked} paid={o.paid}"
            f" lost={o.lost}"
            for o in self.outcomes
        ] or ["no channel"]
        tail = [f"payer: {', '.join(self.payer_events)}"] if self.payer_events else []
        tail += [f"notes: {'; '.join(self.notes)}"] if self.notes else []
        lost = f"LOST {self.lost} sat | payer change unrecorded: {self.unrecorded} sat"
        return " | ".join([head, *ends, lost, *tail])


@asynccontextmanager
async def mining(ledger: Path, interval: float) -> AsyncIterator[LocalChain]:
    """A block every `interval` seconds on `ledger` until the block ends."""
    chain = LocalChain.open(ledger)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(chain.run_miner, interval)
            yield chain
            nursery.cancel_scope.cancel()
    finally:
        chain.close()


def fast_plan(victim: str, rng: random.Random, payments: int, lifetime: int) -> str:
    """Like `plan`, for a channel held to its expiry: the timer spreads over the channel's
    whole life (its last blocks, where the payee closes and the payer refunds,
    included); the N-th group commit is one of the stream's (about one per 30
    payments) or the first after it (the payee's close, the payer's settlement); the
    payee's first broadcast is the funding, its second (and its first recorded tx) the
    close its watcher makes ``close_margin_blocks`` before the expiry."""
    if rng.random() < 0.4:
        return f"time:{rng.uniform(0.0, lifetime * BLOCK_SECONDS + 1):.3f}"
    commits = payments // 30 + 2
    broadcast = 1 if victim == "payer" else rng.choice([1, 2])
    name, nth = rng.choice(
        [("save", rng.randint(1, commits)), ("save_raw", 1), ("broadcast", broadcast)]
    )
    return f"{name}:{nth}:{rng.choice(['before', 'after'])}"


async def fast_chain_trial(tmp_path: Path, victim: str, seed: int) -> FastTrial:
    """One payer or payee crash trial on a 1-block/s Teranode-rule chain, end to end.

    The victim is restarted the moment it is seen dead (down about 0.6 s, against the
    payee's ``close_margin_blocks - 1`` = 2 s between its close and the refund's
    finality); one whose kill point never comes is killed after the payer finished
    paying or, a payee, two blocks past the expiry -- after its close -- so no trial
    keeps a payee down across the moment its refund becomes final, which no code
    could survive.
    """
    rng = random.Random(seed)
    payments, amount = rng.randint(200, 1200), rng.randint(1, 5)
    lifetime = rng.randint(*FAST_LIFETIMES)
    trial = FastTrial(victim, seed, fast_plan(victim, rng, payments, lifetime), lifetime)
    injected = [] if trial.kill.startswith("time") else ["--kill-at", trial.kill]
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger, policy=Policy(finality="teranode")).close()
    s_dir, b_dir = tmp_path / "payee", tmp_path / "payer"
    listen = f"tcp://127.0.0.1:{free_port()}"
    seller = ["--data", s_dir, "--ledger", ledger, "--listen", listen, *FAST]
    async with mining(ledger, BLOCK_SECONDS) as chain, agents_running() as start:
        provider = await start(
            "provider", command("provider", *seller, *(injected if victim == "payee" else []))
        )
        hello = await event(provider, "ready")
        target = ["--connect", listen, "--peer", hello["peer_id"]]
        buyer = await start(
            "buyer",
            command("buyer", "--data", b_dir, "--ledger", ledger, *target, *FAST,
                    "--payments", payments, "--amount", amount, "--lifetime", trial.lifetime,
                    "--hold", *EAGER_PAYER, *(injected if victim == "payer" else [])),
        )  # fmt: skip
        await event(buyer, "ready")
        doomed = provider if victim == "payee" else buyer
        if trial.kill.startswith("time"):
            await trio.sleep(float(trial.kill.split(":")[1]))
            kill(doomed)
        trial.reached = await dies(doomed, buyer, chain, trial.lifetime + 10)
        if not trial.reached:  # the injected point was never reached: kill it now
            kill(doomed)
        await doomed.process.wait()
        dead_at, trial.killed_at = trio.current_time(), await chain.height()
        before_payer, before_payee = stored_records(b_dir), stored_records(s_dir)
        expiries = {r.terms.expiry_height for r in [*before_payer.values(), *before_payee.values()]}
        trial.expiry = max(expiries, default=None)
        if victim == "payee":
            provider = await start("provider-2", command("provider", *seller))
            await event(provider, "ready")
            payer = buyer
        else:
            if alive(provider) is False:
                raise AssertionError("the payee died although only the payer was killed")
            payer = await start(
                "resume",
                command("resume", "--data", b_dir, "--ledger", ledger, *target, *FAST,
                        *EAGER_PAYER),
            )  # fmt: skip
            await event(payer, "reloaded")
        trial.back_at, trial.down = await chain.height(), trio.current_time() - dead_at
        await settled(chain, [b_dir, s_dir], [payer, provider])
        trial.payer_events = [
            f"{e['event']} {e['state']}@{e['height']}"
            for e in payer.events
            if e["event"] in ("refund-try", "payer-settled")
        ]
        for agent in (payer, provider):
            if not alive(agent):
                trial.notes.append(f"{agent.label} exited ({agent.process.returncode})")
        if alive(payer):
            await stop(payer, "final")
        if alive(provider):
            await stop(provider, "stats")
    after_payer, after_payee = stored_records(b_dir), stored_records(s_dir)
    facts = check_ledger(ledger)
    judged: list[tuple[Record | None, Record | None, list[int]]] = []
    for cid in sorted(set(after_payer) | set(after_payee)):
        payer_end, payee_end = after_payer.get(cid), after_payee.get(cid)
        bounds = acked_of(before_payer.get(cid), before_payee.get(cid), payer_end, payee_end)
        some = payer_end or payee_end
        assert some is not None
        trial.outcomes.append(outcome(facts, ledger, some, bounds))
        judged.append((payer_end, payee_end, bounds))
    identity = load_identity(b_dir / "identity.key")
    trial.unrecorded = sum(sats for _, sats in stranded_coins(b_dir, identity, ledger))
    print(trial.line())
    assert trial.lost == 0, "acknowledged satoshis lost"
    assert not trial.notes, "a process exited by itself"
    for payer_end, payee_end, bounds in judged:
        check_channel(facts, payer_end, payee_end, acked_bounds=bounds)
    assert wallet_reserved(b_dir, identity) == 0, "coins left reserved in the payer's wallet"
    assert trial.unrecorded == 0, "the payer's wallet misses what a close paid it back"
    return trial


async def dies(doomed: AgentProcess, buyer: AgentProcess, chain: LocalChain, cap: float) -> bool:
    """Wait for `doomed` (killed by timer or by its injected point) to die; False when its
    point will not come: a payer that finished paying (or gave up) is still alive, a
    payee is alive two blocks past the expiry or after the buyer gave up opening."""
    with trio.move_on_after(cap):
        while alive(doomed):
            if doomed is buyer and (events(buyer, "acked") or events(buyer, "failed")):
                await trio.sleep(0.5)  # a kill point right after the last payment
                return not alive(doomed)
            opened = events(buyer, "opened")
            if doomed is not buyer and not opened and events(buyer, "failed"):
                return False
            if opened and await chain.height() >= opened[0]["expiry"] + 2:
                return False
            await trio.sleep(0.05)
        return True
    return False


async def settled(chain: LocalChain, dirs: list[Path], agents: list[AgentProcess]) -> None:
    """Wait until every channel is final (a payee paid nothing may stay open) and two
    more blocks are mined (so the close or refund is in a block) or, at the latest,
    five blocks past the last expiry (or 60 s)."""
    with trio.move_on_after(60):
        while True:
            records = [r for d in dirs for r in stored_records(d).values()]
            if all_final(dirs, True) or not all(alive(a) for a in agents):
                final = await chain.height()
                while await chain.height() < final + 2:
                    await trio.sleep(0.1)
                return
            expiries = [r.terms.expiry_height for r in records]
            if expiries and await chain.height() > max(expiries) + 5:
                return
            await trio.sleep(0.1)


def outcome(facts: LedgerFacts, ledger: Path, some: Record, bounds: list[int]) -> Outcome:
    """How the ledger settled a channel, read without judging it (`check_channel` does)."""
    terms = some.terms
    cid, acked = terms.channel_id.hex(), max(bounds, default=0)
    lost = acked_lost(facts, terms, bounds)
    if terms.funding_txid not in facts.transactions:
        return Outcome(cid, acked, 0, lost, "never-funded", None)
    spend = facts.spender.get((terms.funding_txid, terms.funding_vout))
    if spend is None:
        return Outcome(cid, acked, 0, lost, "unspent", None)
    with LocalLedger.open(ledger) as chain:
        block = chain.status(spend).block_height
    tx = parse_exact(facts.transactions[spend])
    first = tx.outputs[0]
    if tx.locktime == terms.expiry_height:
        return Outcome(cid, acked, 0, lost, "payer-refund", block)
    if bytes(first.locking_script.serialize()) == terms.payee_payout:
        return Outcome(cid, acked, int(first.satoshis), lost, "payee-close", block)
    return Outcome(cid, acked, 0, lost, "release", block)


# --------------------------------------------------------------------------- ledger writer


async def ledger_trial(tmp_path: Path, seed: int) -> dict[str, object]:
    """kill -9 a process writing the ledger while a payment stream uses the same file."""
    rng = random.Random(seed)
    ledger = new_ledger(tmp_path / "ledger.db")
    s_dir, b_dir = tmp_path / "payee", tmp_path / "payer"
    async with agents_running() as start:
        writer = await start("writer", command("ledger-writer", "--ledger", ledger, "--seed", seed))
        await event(writer, "ready")
        provider = await start(
            "provider", command("provider", "--data", s_dir, "--ledger", ledger, *FAST)
        )
        hello = await event(provider, "ready")
        buyer = await start(
            "buyer",
            command(
                "buyer",
                "--data",
                b_dir,
                "--ledger",
                ledger,
                "--connect",
                hello["address"],
                "--peer",
                hello["peer_id"],
                *FAST,
                "--payments",
                400,
                "--close",
                "--lifetime",  # the writer mines fast: keep the expiry out of its reach
                1_000_000,
            ),
        )
        await event(buyer, "opened", 30)
        await trio.sleep(rng.uniform(0.0, 0.6))
        assert alive(writer), "the writer must die by our hand, mid-write"
        kill(writer)
        await writer.process.wait()
        closed = await event(buyer, "closed", 60)
        await stop(provider, "stats")
    acknowledged = [e["txid"] for e in events(writer, "tx")]
    heights = [e["height"] for e in events(writer, "block")]
    facts = check_ledger(ledger)
    assert set(acknowledged) <= set(facts.transactions), "an acknowledged write was lost"
    assert facts.height >= max(heights, default=0)
    # The ledger is still usable by anyone: accept, mine, prove.
    with LocalLedger.open(ledger) as chain:
        tx, _ = pay(mint(chain, 50_000))
        chain.submit(tx.serialize())
        chain.mine()
    check_ledger(ledger)
    payer, payee = stored_records(b_dir), stored_records(s_dir)
    [cid] = payer
    settlement = check_channel(
        check_ledger(ledger), payer[cid], payee[cid], acked_bounds=acked_of(payer[cid])
    )
    assert settlement.payee_total == closed["total"] == 400
    return {"writes_acknowledged": len(acknowledged), "blocks": len(heights)}


# --------------------------------------------------------------------------- anchoring agent

ANCHOR_POINTS = ("insert_own", "plan_batches", "record_draft", "mark_broadcast", "mark_mined")


async def anchoring_trial(tmp_path: Path, seed: int) -> dict[str, object]:
    """kill -9 an agent logging and anchoring records; restart it and prove everything."""
    rng = random.Random(seed)
    ledger = new_ledger(tmp_path / "ledger.db")
    data = tmp_path / "anchorer"
    if rng.random() < 0.4:
        kill_at = f"time:{rng.uniform(0.1, 1.5):.3f}"
    else:
        name = rng.choice([*ANCHOR_POINTS, "broadcast"])
        nth = rng.randint(1, 30 if name == "insert_own" else 3)
        kill_at = f"{name}:{nth}:{rng.choice(['before', 'after'])}"
    injected = [] if kill_at.startswith("time") else ["--kill-at", kill_at]
    base = ["--data", data, "--ledger", ledger, "--seed", seed]
    async with agents_running() as start:
        agent = await start("anchorer", command("anchorer", *base, *injected))
        await event(agent, "ready")
        if kill_at.startswith("time"):
            await trio.sleep(float(kill_at.split(":")[1]))
            kill(agent)
        with trio.move_on_after(20):
            await agent.process.wait()
        reached = not alive(agent)
        if not reached:
            kill(agent)
            await agent.process.wait()
        restarted = await start("settle", command("anchorer", *base, "--settle"))
        settled = await event(restarted, "settled", 90)
    logged = events(agent, "logged")
    verified: dict[str, list[str]] = settled["verified"]
    # Every record `log` had returned is still there, unchanged (no loss, no fork) ...
    for item in logged:
        assert verified[item["stream"]][item["seq"]] == item["hash"], item
    # ... every stored record is provable offline, and every stream audits clean.
    assert settled["findings"] == []
    assert settled["reserved"] == 0
    check_ledger(ledger)
    return {
        "kill": kill_at,
        "reached": reached,
        "logged_before_kill": len(logged),
        "proved": sum(len(v) for v in verified.values()),
    }


# --------------------------------------------------------------------------- tests


def trials(
    budget: dict[str, int], role: str, base: int, chosen: dict[str, list[int]] | None = None
) -> list[int]:
    """Seeds for a role: CI's `chosen` ones, or `budget[role]` consecutive ones."""
    if chosen is not None:
        assert len(chosen[role]) == budget[role]
        return chosen[role]
    return [base + i for i in range(budget[role])]


@pytest.mark.parametrize("seed", trials(CI_CRASH_TRIALS, "payer", 100, CI_CRASH_SEEDS))
async def test_payer_killed_then_restarted_settles(tmp_path: Path, seed: int) -> None:
    """The payer dies anywhere (timer or exact point); the restarted payer settles with
    every invariant holding."""
    print(await channel_trial(tmp_path, "payer", seed))


@pytest.mark.parametrize("seed", trials(CI_CRASH_TRIALS, "payee", 200, CI_CRASH_SEEDS))
async def test_payee_killed_then_restarted_settles(tmp_path: Path, seed: int) -> None:
    """The payee dies anywhere; restarted on its mailbox, the stream resumes or the
    channel settles, with every invariant holding."""
    print(await channel_trial(tmp_path, "payee", seed))


@pytest.mark.parametrize("seed", trials(CI_CRASH_TRIALS, "ledger", 300, CI_CRASH_SEEDS))
async def test_ledger_writer_killed_mid_write(tmp_path: Path, seed: int) -> None:
    """A ledger writer dies mid-write: nothing it acknowledged is lost, the ledger replays
    consistently, stays usable, and a concurrent payment stream settles exactly."""
    print(await ledger_trial(tmp_path, seed))


@pytest.mark.parametrize("seed", trials(CI_CRASH_TRIALS, "anchoring", 400, CI_CRASH_SEEDS))
async def test_anchoring_agent_killed_then_restarted_proves_everything(
    tmp_path: Path, seed: int
) -> None:
    """An anchoring agent dies anywhere (timer or exact store/broadcast point): after a
    restart every record it had acknowledged is there unchanged and, once anchored,
    provable offline against the ledger's headers; streams audit clean."""
    print(await anchoring_trial(tmp_path, seed))


@pytest.mark.slow
@pytest.mark.parametrize("seed", trials(SLOW_CRASH_TRIALS, "payer", 1000))
async def test_payer_crash_soak(tmp_path: Path, seed: int) -> None:
    """50 payer trials."""
    print(await channel_trial(tmp_path, "payer", seed))


@pytest.mark.slow
@pytest.mark.parametrize("seed", trials(SLOW_CRASH_TRIALS, "payee", 2000))
async def test_payee_crash_soak(tmp_path: Path, seed: int) -> None:
    """50 payee trials."""
    print(await channel_trial(tmp_path, "payee", seed))


@pytest.mark.slow
@pytest.mark.parametrize("seed", trials(SLOW_CRASH_TRIALS, "ledger", 3000))
async def test_ledger_writer_crash_soak(tmp_path: Path, seed: int) -> None:
    """50 ledger-writer trials."""
    print(await ledger_trial(tmp_path, seed))


@pytest.mark.slow
@pytest.mark.parametrize("seed", trials(SLOW_CRASH_TRIALS, "anchoring", 4000))
async def test_anchoring_crash_soak(tmp_path: Path, seed: int) -> None:
    """50 anchoring-agent trials."""
    print(await anchoring_trial(tmp_path, seed))


@pytest.mark.parametrize("seed", trials(CI_FAST_CHAIN_TRIALS, "payer", 5000, CI_FAST_CHAIN_SEEDS))
async def test_payer_killed_on_a_fast_teranode_chain_loses_no_acked_payment(
    tmp_path: Path, seed: int
) -> None:
    """With a block a second under Teranode's finality rule, the payer dies anywhere and
    restarts refunding as soon as the chain lets it: the payee's watcher closes with its
    latest acked state first, and every channel ends closed or refunded."""
    await fast_chain_trial(tmp_path, "payer", seed)


@pytest.mark.parametrize("seed", trials(CI_FAST_CHAIN_TRIALS, "payee", 6000, CI_FAST_CHAIN_SEEDS))
async def test_payee_killed_on_a_fast_teranode_chain_closes_before_the_refund(
    tmp_path: Path, seed: int
) -> None:
    """With a block a second under Teranode's finality rule, the payee dies anywhere
    (its close near the expiry included) while the payer waits to refund as soon as the
    chain lets it: restarted, the payee closes with its latest acked state first."""
    await fast_chain_trial(tmp_path, "payee", seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", trials(SLOW_FAST_CHAIN_TRIALS, "payer", 5000))
async def test_payer_crash_fast_chain_soak(tmp_path: Path, seed: int) -> None:
    """200 fast-chain payer trials."""
    await fast_chain_trial(tmp_path, "payer", seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", trials(SLOW_FAST_CHAIN_TRIALS, "payee", 6000))
async def test_payee_crash_fast_chain_soak(tmp_path: Path, seed: int) -> None:
    """200 fast-chain payee trials."""
    await fast_chain_trial(tmp_path, "payee", seed)
