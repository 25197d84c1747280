"""Hostile roles for the reliability helper process (see `tests.reliability.proc`).

liar      a provider that, asked to close, claims a close that never happened
violator  a peer with a valid identity and session that sends channel frames the
          provider must refuse: payments and fundings for channels that do not
          exist, and channel offers whose fields no transaction can carry; per
          session it counts the `ChannelError`s it gets before the provider hangs up
flood     garbage at the mailbox through a pool of nng connections: random bytes
          of every packet kind, truncated handshakes, replays of a legitimate
          peer's captured handshake packets, forged handshake and data packets
          aimed at random indices, and messages above nng's size limit
slow      thousands of TCP connections that never finish: silent ones, ones
          stuck inside the 8-byte SP header, and ones that announce a message and
          then trickle it one byte a second
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import secrets
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pynng
import trio

from agents.channels import ChannelConfig
from mesh.chain.tx import p2pkh_script
from mesh.channel.frames import (
    ChannelClose,
    ChannelClosed,
    ChannelError,
    ChannelFunded,
    ChannelOpen,
    ChannelPay,
    ChannelPays,
)
from mesh.identity import Identity
from mesh.net.node import ConnectError, open_node
from mesh.net.sockets import SP_HEADER, outbox_socket
from mesh.session import DATA, HS1, HS2, HS3, MAX_PACKET_SIZE, REJECT, Handshake, LocalIdentity
from mesh.wire import Frame
from tests.reliability.agent import emit, node_config, reliable_agent
from tests.reliability.channel_roles import describe

# --------------------------------------------------------------------------- violator


def violations(rng: random.Random) -> list[Frame]:
    """Channel frames a provider must refuse with a ChannelError, never crash on."""
    payout = p2pkh_script(Identity.generate().key.address())

    def offer(**bad: object) -> ChannelOpen:
        fields: dict[str, object] = {
            "channel_id": secrets.token_bytes(32),
            "service": "x",
            "capacity": 10_000,
            "close_fee": 10,
            "refund_fee": 10,
            "expiry_height": 10**6,
            "funding_txid": secrets.token_hex(32),
            "funding_vout": 0,
            "payer_payout": payout,
        }
        fields.update(bad)
        return ChannelOpen(**fields)  # type: ignore[arg-type]

    return [
        # First the offers that used to crash a provider (fields no transaction can carry).
        offer(expiry_height=rng.choice([2**40, 500_000_000, 2**64 - 1])),
        offer(funding_vout=rng.choice([-1, 2**32, 2**63])),
        offer(funding_txid=rng.choice(["zz" * 32, "0" * 63 + " ", "é" * 64])),
        offer(refund_fee=10_000, capacity=10_000),
        ChannelPay(
            secrets.token_bytes(32), rng.randint(1, 2**63), rng.randint(1, 10**6), rng.randbytes(71)
        ),
        ChannelPay(
            secrets.token_bytes(rng.randint(0, 40)),
            rng.randint(-(2**63), 2**64 - 1),
            rng.randint(-(2**63), 2**63),
            b"",
        ),
        ChannelPays(
            secrets.token_bytes(32),
            rng.randint(1, 2**63),
            tuple(rng.randint(1, 10**6) for _ in range(rng.randint(0, 40))),
            tuple(rng.randbytes(71) for _ in range(rng.randint(0, 40))),
        ),
        ChannelFunded(secrets.token_bytes(32), rng.randbytes(rng.randint(0, 300))),
        offer(capacity=rng.choice([0, -5, 2**62])),
        offer(channel_id=secrets.token_bytes(rng.choice([0, 31, 33]))),
        offer(payer_payout=rng.randbytes(25)),
    ]


async def violator(args: argparse.Namespace) -> None:
    """Round after round: connect, send refused channel frames one by one (waiting for
    each answer) until the provider ends the session; report what happened."""
    rng = random.Random(args.seed)
    async with open_node(Identity.generate(), config=node_config(0.5, 3.0)) as node:
        emit("ready", peer_id=node.peer_id, pid=os.getpid())
        offset = 0  # every kind of violation is sent, in order, across the rounds
        for round_no in range(args.rounds):
            try:
                # Retry: the flood's stalled handshakes evict pending ones (by design).
                session = await node.connect(args.connect, expect_peer=args.peer, attempts=5)
            except ConnectError as exc:
                emit("round", round=round_no, connected=False, error=str(exc))
                continue
            sent, codes = 0, []
            frames = violations(rng)
            frames = frames[offset % len(frames) :] + frames[: offset % len(frames)]
            with trio.move_on_after(args.timeout):
                for frame in frames:
                    if session.closed.is_set():
                        break
                    await session.send(frame)
                    sent += 1
                    with trio.move_on_after(2.0):
                        while True:
                            _, reply = await node.receive()
                            if isinstance(reply, ChannelError):
                                codes.append(reply.code)
                                break
                await session.closed.wait()
            offset += len(codes)  # a frame sent after the hang-up is sent again later
            emit(
                "round",
                round=round_no,
                connected=True,
                sent=sent,
                codes=codes,
                closed=session.closed.is_set(),
                reason=session.close_reason,
            )


# --------------------------------------------------------------------------- liar


async def liar(args: argparse.Namespace) -> None:
    """A provider that takes payments honestly but, asked to close, claims it closed:
    `ChannelClosed` naming a transaction the chain does hold (the channel's funding)
    and the total it acknowledged (`--lie-total max`: the whole capacity) -- and never
    closes. It hopes the payer stops watching and never takes its refund."""
    nodes = node_config(args.heartbeat, args.dead_after)
    channels = ChannelConfig(watch_interval=3600)  # and it never closes by watcher either

    async def lie(peer_id: str, frame: Frame) -> bool:
        if not isinstance(frame, ChannelClose):
            return False
        record = me.manager.record(frame.channel_id)
        total = record.terms.max_total if args.lie_total == "max" else record.total
        claim = ChannelClosed(frame.channel_id, record.terms.funding_txid, total)
        session = me.node.session(peer_id)
        if session is not None:
            await session.send(claim)
        emit("lied", channel_id=frame.channel_id.hex(), total=total)
        return True

    with trio.open_signal_receiver(signal.SIGTERM) as sigterm:
        async with reliable_agent(
            args.data, args.ledger, listen=args.listen, config=nodes, channels=channels,
            intercept=lie,
        ) as me:  # fmt: skip
            emit("ready", address=me.node.address, peer_id=me.node.peer_id, pid=os.getpid())
            async for _ in sigterm:
                break
            emit("stats", records=[describe(r) for r, _ in me.manager.records()])


# --------------------------------------------------------------------------- flood


def garbage(rng: random.Random, me: LocalIdentity, captured: list[bytes]) -> tuple[str, bytes]:
    """One hostile packet below nng's size limit, and its kind."""
    kind = rng.choice(["random", "truncated-hs1", "replayed", "forged"])
    if kind == "replayed" and captured:
        return kind, rng.choice(captured)
    if kind == "truncated-hs1":
        hs1 = Handshake(me, initiator=True).start()
        return kind, hs1[: rng.randint(0, len(hs1) - 1)]
    if kind == "forged":
        first = rng.choice([HS2, HS3, DATA, REJECT])
        return kind, bytes([first]) + rng.randbytes(8) + rng.randbytes(rng.randint(0, 400))
    first = rng.choice([0, HS1, HS2, HS3, DATA, REJECT, 6, 255])
    return "random", bytes([first]) + rng.randbytes(rng.randint(0, 600))


async def flood(args: argparse.Namespace) -> None:
    """Send garbage for `args.seconds` through `args.count` nng connections, and every
    tenth round one message above the limit on a connection of its own (the mailbox
    drops a connection that sends one; a pynng client that keeps sending on such a
    connection crashes now and then -- in nng, on the attacker's side)."""
    rng = random.Random(args.seed)
    me = LocalIdentity.create(Identity.generate(), "tcp://127.0.0.1:9")
    captured = []
    if args.replay:
        captured = [bytes.fromhex(line) for line in args.replay.read_text().split()]
    target = f"tcp://{args.source};{args.connect.removeprefix('tcp://')}"
    # Outboxes as an agent's are: one connection each, never redialled (the mailbox
    # refuses connections past a source's share as they open).
    sockets = [outbox_socket(send_buffer_size=4) for _ in range(args.count)]
    for sock in sockets:
        sock.dial(target, block=False)
    one_shot: list[pynng.Pair1] = []
    emit("ready", pid=os.getpid(), captured=len(captured))
    sent: dict[str, int] = {}
    deadline = trio.current_time() + args.seconds
    rounds = 0
    while trio.current_time() < deadline:
        rounds += 1
        for sock in sockets:
            kind, packet = garbage(rng, me, captured)
            try:
                sock.send(packet, block=False)
            except pynng.TryAgain:
                continue
            sent[kind] = sent.get(kind, 0) + 1
        if rounds % 10 == 0:
            big = outbox_socket(send_buffer_size=2)
            big.dial(target, block=False)
            one_shot.append(big)
            with contextlib.suppress(pynng.TryAgain):
                big.send(bytes([DATA]) + bytes(MAX_PACKET_SIZE + rng.randint(1, 1000)), block=False)
                sent["oversized"] = sent.get("oversized", 0) + 1
        await trio.sleep(args.pause)
    emit("flooded", sent=sent, total=sum(sent.values()))
    os._exit(0)  # closing hundreds of dialers one by one is not what is under test


# --------------------------------------------------------------------------- slow


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


async def slow(args: argparse.Namespace) -> None:
    """Open `args.count` connections that never complete, trickle, and hold them."""
    host, port = args.connect.removeprefix("tcp://").rsplit(":", 1)
    raise_fd_limit(args.count + 100)
    conns: list[tuple[str, socket.socket]] = []
    kinds = ["silent", "half-header", "trickle"]
    for i in range(args.count):
        kind = kinds[i % 3]
        try:
            conn = socket.create_connection(
                (host, int(port)), timeout=5, source_address=(args.source, 0)
            )
        except OSError as exc:
            emit("refused", after=len(conns), error=str(exc))
            break
        conn.setblocking(False)
        try:
            if kind == "half-header":
                conn.send(SP_HEADER[:5])
            elif kind == "trickle":
                conn.send(SP_HEADER + struct.pack(">Q", args.claim) + b"\x04")
        except OSError:
            pass
        conns.append((kind, conn))
    emit("holding", count=len(conns), pid=os.getpid())
    while True:
        await trio.sleep(1.0)
        for kind, conn in conns:
            if kind == "trickle":
                with contextlib.suppress(OSError):
                    conn.send(b"\x00")


ROLES: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "violator": violator,
    "liar": liar,
    "flood": flood,
    "slow": slow,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the hostile roles (beside the channel roles' ones)."""
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replay", type=Path)
    parser.add_argument("--pause", type=float, default=0.01)
    parser.add_argument("--claim", type=int, default=64 * 1024)
    parser.add_argument("--source", default="127.0.0.1", help="address to connect from")
    parser.add_argument("--lie-total", choices=["acked", "max"], default="acked")
