"""Channel roles for the reliability helper process (see `tests.reliability.proc`).

provider  serve channels; on SIGTERM report statistics, records and peak memory
buyer     fund, open one channel, pay (a count, or for some seconds at a rate),
          wait for the acks, optionally close; redials a dropped session
buyers    many buyers, each its own agent (identity, store, node, channel), in one
          process: the load test's paying crowd
resume    restart a payer from its data dir and settle every channel it holds
Every role may be told to SIGKILL itself at an exact point (`--kill-at`). A payer
(buyer, resume) told `--refund-lead N` refunds as early as a chain could take it
(`refund_early`): it offers its refund from N blocks before the expiry on, and the
chain's finality rule alone decides when it gets in; `resume` then closes nothing
itself and waits for the payee's close or its own refund.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from agents.channels import ChannelConfig, ChannelFailure, ChannelManager
from mesh.anchoring.store import AnchorStore
from mesh.chain.errors import ChainUnavailable
from mesh.chain.local import LocalChain
from mesh.channel import Record, Role, State
from mesh.channel.store import ChannelStore
from mesh.errors import MeshError
from tests.channel.harness import Agentlet
from tests.reliability.agent import emit, keep_session, node_config, peak_rss_kib, reliable_agent

SERVICE = "spindle-time"


# --------------------------------------------------------------------------- crash points


ANCHOR_STORE_POINTS = ("insert_own", "plan_batches", "record_draft", "mark_broadcast", "mark_mined")


def arm_kill(spec: str | None) -> None:
    """Make this process SIGKILL itself at ``NAME:N:before|after``: around the N-th call
    of `ChannelStore.save` (a group commit), `ChannelStore.save_raw` (a funding or
    close tx recorded), `LocalChain.broadcast`, or one of the anchoring store's writes
    (`ANCHOR_STORE_POINTS`). The real methods still run."""
    if not spec:
        return
    name, nth, when = spec.split(":")
    owner: Any = LocalChain if name == "broadcast" else ChannelStore
    if name in ANCHOR_STORE_POINTS:
        owner = AnchorStore
    real = getattr(owner, name)
    calls = {"n": 0}

    def die() -> None:
        emit("killing", at=spec)
        os.kill(os.getpid(), signal.SIGKILL)

    if name == "broadcast":

        async def async_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == int(nth) and when == "before":
                die()
            result = await real(self, *args, **kwargs)
            if calls["n"] == int(nth) and when == "after":
                die()
            return result

        setattr(owner, name, async_wrapper)
        return

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == int(nth) and when == "before":
            die()
        result = real(self, *args, **kwargs)
        if calls["n"] == int(nth) and when == "after":
            die()
        return result

    setattr(owner, name, wrapper)


def describe(record: Record) -> dict[str, Any]:
    """A channel record as JSON."""
    return {
        "channel_id": record.terms.channel_id.hex(),
        "role": record.role.value,
        "state": record.state.value,
        "seq": record.seq,
        "total": record.total,
        "acked_seq": record.acked_seq,
        "acked_total": record.acked_total,
        "close_txid": record.close_txid,
        "expiry": record.terms.expiry_height,
    }


def config_from(args: argparse.Namespace) -> tuple[Any, ChannelConfig]:
    return node_config(args.heartbeat, args.dead_after), ChannelConfig(
        window=args.window, watch_interval=args.watch, open_timeout=args.open_timeout
    )


async def first(signals: AsyncIterator[int]) -> None:
    """Wait for the first signal from an `open_signal_receiver` opened at the role's
    start (a test may send SIGTERM as soon as it reads a result line; the default
    action would end the process unreported)."""
    async for _ in signals:
        return


FINAL = (State.CLOSED, State.REFUNDED, State.FAILED)


def serialize_expiry_checks() -> None:
    """Let one `ChannelManager.check_expiry` run at a time per manager: the manager's
    watcher and `refund_early` both call it, and a refund one of them has half done
    (broadcast, not yet recorded) must not be started again by the other."""
    real = ChannelManager.check_expiry
    locks: dict[int, trio.Lock] = {}

    async def check_expiry(self: ChannelManager, height: int) -> None:
        async with locks.setdefault(id(self), trio.Lock()):
            await real(self, height)

    ChannelManager.check_expiry = check_expiry  # type: ignore[method-assign,assignment]


async def refund_early(me: Agentlet, lead: int, every: float = 0.05) -> None:
    """Offer the refund of every unsettled payer channel as soon as `lead` blocks before
    its expiry, every `every` seconds (the chain rejects it while it is not final): the
    earliest a payer could get it in under any finality rule. The role must have called
    `serialize_expiry_checks` (the manager's own watcher keeps running).

    Reports ``refund-try`` (the first offer) and ``payer-settled`` (REFUNDED: the
    refund got in; CLOSED: the payee's close was there first) with the chain's height.
    """
    tried: set[bytes] = set()
    settled: set[bytes] = set()
    while True:
        try:
            height = await me.chain.height()
            for record, _ in me.manager.records():
                cid = record.terms.channel_id
                due = height + lead >= record.terms.expiry_height
                if record.role is Role.PAYER and due and cid not in tried:
                    tried.add(cid)
                    emit("refund-try", height=height, **describe(record))
            await me.manager.check_expiry(height + lead)
        except ChainUnavailable:
            pass
        for record, _ in me.manager.records():
            cid = record.terms.channel_id
            if record.role is Role.PAYER and record.state in FINAL and cid not in settled:
                settled.add(cid)
                emit("payer-settled", height=await me.chain.height(), **describe(record))
        await trio.sleep(every)


# --------------------------------------------------------------------------- provider


async def provider(args: argparse.Namespace) -> None:
    arm_kill(args.kill_at)
    nodes, channels = config_from(args)
    paid: dict[str, int] = {}

    def on_paid(cid: bytes, peer: str, service: str, total: int) -> None:
        paid[cid.hex()] = total

    with trio.open_signal_receiver(signal.SIGTERM) as sigterm:
        async with reliable_agent(
            args.data,
            args.ledger,
            listen=args.listen,
            config=nodes,
            channels=channels,
            on_paid=on_paid,
        ) as me:
            emit("ready", address=me.node.address, peer_id=me.node.peer_id, pid=os.getpid())
            await first(sigterm)
            emit(
                "stats",
                channels=me.manager.statistics().__dict__,
                node=me.node.statistics().__dict__,
                sessions=len(me.node.sessions()),
                records=[describe(r) for r, _ in me.manager.records()],
                paid=paid,
                peak_rss_kib=peak_rss_kib(),
            )


# --------------------------------------------------------------------------- buyer


@dataclass
class Meter:
    """Per-payment acknowledgement latency of one channel, from the payer's side."""

    signed_at: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    acked: int = 0

    def on_acked(self, _: bytes, seq: int) -> None:
        now = trio.current_time()
        for s in range(self.acked + 1, seq + 1):
            started = self.signed_at.pop(s, None)
            if started is not None:
                self.latencies.append(now - started)
        self.acked = max(self.acked, seq)


async def pay_stream(
    me: Agentlet,
    cid: bytes,
    meter: Meter,
    *,
    amount: int,
    payments: int | None,
    seconds: float | None,
    rate: float | None,
    progress: Callable[[Record], None] | None = None,
) -> int:
    """Pay `amount` per payment, `payments` times or for `seconds`, at most `rate`/s."""
    start = trio.current_time()
    count = 0
    while (payments is None or count < payments) and (
        seconds is None or trio.current_time() - start < seconds
    ):
        if rate:
            await trio.sleep_until(start + count / rate)
        record = await me.manager.pay(cid, amount)
        meter.signed_at[record.seq] = trio.current_time()
        count += 1
        if progress is not None and count % 200 == 0:
            progress(record)
    return count


async def open_channel(me: Agentlet, args: argparse.Namespace, peer: str) -> bytes:
    await me.fund(args.ledger, args.funds)
    return await me.manager.open(peer, SERVICE, args.capacity, args.lifetime)


async def buyer(args: argparse.Namespace) -> None:
    arm_kill(args.kill_at)
    if args.refund_lead:
        serialize_expiry_checks()
    nodes, channels = config_from(args)
    with trio.open_signal_receiver(signal.SIGTERM) as sigterm:
        async with (
            reliable_agent(
                args.data, args.ledger, listen=args.listen, config=nodes, channels=channels
            ) as me,
            trio.open_nursery() as nursery,
        ):
            emit("ready", peer_id=me.node.peer_id, pid=os.getpid())
            await nursery.start(
                functools.partial(
                    keep_session,
                    me.node,
                    args.connect,
                    args.peer,
                    on_change=lambda what, detail: emit("session", change=what, detail=detail),
                )
            )
            if args.refund_lead:
                nursery.start_soon(refund_early, me, args.refund_lead)
            if args.hold:  # buy, and report the channels whenever SIGTERM comes
                nursery.start_soon(buy_or_fail, me, args)
                await first(sigterm)
                emit("final", records=[describe(r) for r, _ in me.manager.records()])
            else:
                await buy_or_fail(me, args)
            nursery.cancel_scope.cancel()


async def buy_or_fail(me: Agentlet, args: argparse.Namespace) -> None:
    try:
        await buy(me, args)
    except (ChannelFailure, trio.TooSlowError, MeshError) as exc:
        emit("failed", error=f"{type(exc).__name__}: {exc}")


async def buy(me: Agentlet, args: argparse.Namespace) -> None:
    """Open, pay, wait for the acks, close: the buyer's life, reported as it goes."""
    cid = await open_channel(me, args, args.peer)
    emit("opened", channel_id=cid.hex(), expiry=me.manager.record(cid).terms.expiry_height)
    meter = Meter()
    me.manager.on_acked = meter.on_acked
    count = await pay_stream(
        me,
        cid,
        meter,
        amount=args.amount,
        payments=args.payments,
        seconds=args.seconds,
        rate=args.rate,
        progress=lambda r: emit(
            "progress", seq=r.seq, total=r.total, acked_seq=r.acked_seq, acked=r.acked_total
        ),
    )
    with trio.fail_after(args.timeout):
        record = await me.manager.wait_acked(cid)
    emit("acked", payments=count, **describe(record), **latency_summary(meter.latencies))
    if args.close:
        with trio.fail_after(args.timeout):
            record = await me.manager.close(cid)
        emit("closed", **describe(record))


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds (empty when nothing was measured)."""
    if not latencies:
        return {}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * p99,
        "max_ms": 1000 * ordered[-1],
    }


# --------------------------------------------------------------------------- buyers (load)


async def buyers(args: argparse.Namespace) -> None:
    """`args.count` buyers, each with its own identity, store, node and channel."""
    nodes, channels = config_from(args)
    results: list[dict[str, Any]] = []
    latencies: list[float] = []
    opened = trio.Event()
    ready = {"n": 0}

    async def one(i: int) -> None:
        data = args.data / f"buyer{i:03d}"
        async with reliable_agent(data, args.ledger, config=nodes, channels=channels) as me:
            await me.node.connect(args.connect, expect_peer=args.peer)
            cid = await open_channel(me, args, args.peer)
            ready["n"] += 1
            if ready["n"] == args.count:
                emit("opened", buyers=args.count)
                opened.set()
            await opened.wait()
            meter = Meter()
            me.manager.on_acked = meter.on_acked
            count = await pay_stream(
                me,
                cid,
                meter,
                amount=args.amount,
                payments=None,
                seconds=args.seconds,
                rate=args.rate,
            )
            with trio.fail_after(args.timeout):
                record = await me.manager.wait_acked(cid)
            latencies.extend(meter.latencies)
            if args.close:
                with trio.fail_after(args.timeout):
                    record = await me.manager.close(cid)
            results.append({"payments": count, **describe(record)})

    async with trio.open_nursery() as nursery:
        for i in range(args.count):
            nursery.start_soon(one, i)
    emit(
        "done",
        buyers=results,
        payments=sum(r["payments"] for r in results),
        peak_rss_kib=peak_rss_kib(),
        **latency_summary(latencies),
    )


# --------------------------------------------------------------------------- resume


async def settle(me: Agentlet, timeout: float) -> None:
    """What the runtime does for each payer channel it reloads: open a funded one once
    the payee acknowledges it, close an open one; a closing one is left to the channel
    manager (it resends the close request to the reconnected payee)."""
    for record, _ in me.manager.records():
        cid = record.terms.channel_id
        if record.role.value != "payer":
            continue
        try:
            with trio.fail_after(timeout):
                while me.manager.record(cid).state is State.FUNDED:
                    await trio.sleep(0.05)  # the payee's open ack after a resend
                if me.manager.record(cid).state is State.OPEN:
                    await me.manager.wait_acked(cid)
                    await me.manager.close(cid)
                while me.manager.record(cid).state is State.CLOSING:
                    await trio.sleep(0.05)
        except (trio.TooSlowError, ChannelFailure) as exc:
            emit("settle-failed", channel_id=cid.hex(), error=str(exc))


async def resume(args: argparse.Namespace) -> None:
    arm_kill(args.kill_at)
    if args.refund_lead:
        serialize_expiry_checks()
    nodes, channels = config_from(args)
    with trio.open_signal_receiver(signal.SIGTERM) as sigterm:
        async with (
            reliable_agent(
                args.data, args.ledger, listen=args.listen, config=nodes, channels=channels
            ) as me,
            trio.open_nursery() as nursery,
        ):
            emit("reloaded", records=[describe(r) for r, _ in me.manager.records()])
            await nursery.start(keep_session, me.node, args.connect, args.peer)
            if args.refund_lead:  # no close of our own: the payee's close or our refund
                nursery.start_soon(refund_early, me, args.refund_lead)
                while any(r.state not in FINAL for r, _ in me.manager.records()):
                    await trio.sleep(0.05)
            else:
                await settle(me, args.timeout)
            emit("settled", records=[describe(r) for r, _ in me.manager.records()])
            await first(sigterm)
            emit("final", records=[describe(r) for r, _ in me.manager.records()])
            nursery.cancel_scope.cancel()


ROLES: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "provider": provider,
    "buyer": buyer,
    "buyers": buyers,
    "resume": resume,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every channel role understands."""
    parser.add_argument("--data", type=Path)
    parser.add_argument("--ledger", type=Path)
    parser.add_argument("--listen", default="tcp://127.0.0.1:0")
    parser.add_argument("--connect")
    parser.add_argument("--peer")
    parser.add_argument("--payments", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--amount", type=int, default=1)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--funds", type=int, default=10_000_000)
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--lifetime", type=int, default=50)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--watch", type=float, default=0.2)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--dead-after", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--open-timeout", type=float, default=15.0)
    parser.add_argument("--close", action="store_true")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--kill-at")
    parser.add_argument("--refund-lead", type=int, default=0)
