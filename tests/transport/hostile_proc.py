"""A hostile neighbour: 200 connections of garbage against one mailbox.

Usage: hostile_proc.py MAILBOX [--rounds N] [--source IP]. Each round opens 200
connections, from --source (127.0.0.2: a neighbouring machine, as loopback has
every 127/8 address; the mailbox limits what one source may hold):
garbage packets, truncated handshakes, oversized messages, stalled handshakes
(a valid HS1, never finished) and raw TCP bytes that are not nng at all.
Prints a JSON line with what it has sent after every round, then exits
without closing its sockets one by one (os._exit): tearing down hundreds of
half-open nng dialers at once is not what is under test here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import time

import pynng

from mesh.identity import Identity
from mesh.net.sockets import outbox_socket
from mesh.session import DATA, HS1, HS3, MAX_PACKET_SIZE, Handshake, LocalIdentity


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mailbox")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", default="127.0.0.2")
    args = parser.parse_args()
    host, port = args.mailbox.removeprefix("tcp://").rsplit(":", 1)
    rng = random.Random(7)
    # A real identity for stalled handshakes, so they pass HS1 checks.
    me = LocalIdentity.create(Identity.generate(), "tcp://127.0.0.1:9")
    sent = {"garbage": 0, "truncated": 0, "oversized": 0, "stalled": 0, "raw_tcp": 0}
    sockets: list[pynng.Pair1] = []
    raw: list[socket.socket] = []
    for _ in range(args.rounds):

        def push(packet: bytes, kind: str, sockets: list[pynng.Pair1] = sockets) -> None:
            sock = outbox_socket(send_buffer_size=2)  # one connection, never redialled
            sock.dial(f"tcp://{args.source};{host}:{port}", block=False)
            try:
                sock.send(packet, block=False)
                sent[kind] += 1
            except pynng.TryAgain:
                pass
            sockets.append(sock)

        for _ in range(60):
            first = rng.choice([0, HS1, 2, HS3, DATA, 5, 9, 255])
            push(bytes([first]) + rng.randbytes(rng.randint(0, 300)), "garbage")
        for _ in range(40):
            hs1 = Handshake(me, initiator=True).start()
            push(hs1[: rng.randint(0, len(hs1) - 1)], "truncated")
        for _ in range(20):
            push(bytes([DATA]) + bytes(MAX_PACKET_SIZE + 100), "oversized")
        for _ in range(60):
            push(Handshake(me, initiator=True).start(), "stalled")
        for _ in range(20):
            try:
                conn = socket.create_connection(
                    (host, int(port)), timeout=2, source_address=(args.source, 0)
                )
                conn.sendall(rng.randbytes(200))
            except OSError:
                continue  # the target may already have finished and exited
            sent["raw_tcp"] += 1
            raw.append(conn)
        time.sleep(0.3)
        print(json.dumps(sent), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
