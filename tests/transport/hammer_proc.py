"""Hammer nng sockets the ways that crash the nng in pynng 0.9.0, in one process.

    python -m tests.transport.hammer_proc push0 --seconds 15     # crashes
    python -m tests.transport.hammer_proc pair1 --seconds 15
    python -m tests.transport.hammer_proc mailbox --seconds 15
    python -m tests.transport.hammer_proc close-redialling --seconds 60   # crashes
    python -m tests.transport.hammer_proc close --seconds 60

`push0`, `pair1`: a TCP listener here answers the SP header as a pull0 (or pair1)
mailbox would and hangs up at once, while `--dialers` dialers on one socket redial
it every 1-5 ms. `mailbox`: a node's mailbox socket is dialled by raw TCP clients
that complete the header and hang up, and by outbox sockets that dial, send one
packet and close. `close`: `--dialers` threads each open an outbox socket to a dead
port and close it 0-200 ms later, over and over; `close-redialling` does the same
with sockets that redial every 100-5000 ms, as outboxes once did.

Survivors print one JSON line (connections or sockets made) and exit 0. In our
trials `push0` died (SIGSEGV or abort) in every run, usually within 5 s, and
`close-redialling` about once per 35 000 sockets; the others never did
(`mesh.net.sockets` explains both crashes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable

import pynng

from mesh.net.sockets import SP_HEADER, mailbox_socket, outbox_socket

PULL0_HEADER = b"\x00SP\x00\x00\x51\x00\x00"


def hang_up_listener(header: bytes, stop: float) -> tuple[int, list[int]]:
    """Start a listener thread that answers `header` and hangs up; (port, [accepted])."""
    server = socket.create_server(("127.0.0.1", 0), backlog=512)
    server.settimeout(0.2)
    accepted = [0]

    def serve() -> None:
        with server:
            while time.monotonic() < stop:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                accepted[0] += 1
                with conn:
                    try:
                        conn.settimeout(1)
                        conn.sendall(header)
                        conn.recv(8)
                    except OSError:
                        pass

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], accepted


def hammer_dialers(kind: str, dialers: int, seconds: float) -> int:
    stop = time.monotonic() + seconds
    port, accepted = hang_up_listener(SP_HEADER if kind == "pair1" else PULL0_HEADER, stop)
    sock: pynng.Socket
    if kind == "pair1":
        sock = pynng.Pair1(reconnect_time_min=1, reconnect_time_max=5)
    else:
        sock = pynng.Push0(reconnect_time_min=1, reconnect_time_max=5)
    with sock:
        for _ in range(dialers):
            sock.dial(f"tcp://127.0.0.1:{port}", block=False)
        time.sleep(seconds)
    return accepted[0]


def hammer_mailbox(seconds: float) -> int:
    stop = time.monotonic() + seconds
    made = [0]
    with mailbox_socket(recv_max_size=65536, recv_buffer_size=16) as mailbox:
        port = int(mailbox.listen("tcp://127.0.0.1:0").local_address.port)
        address = f"tcp://127.0.0.1:{port}"

        def raw() -> None:
            while time.monotonic() < stop:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                        conn.sendall(SP_HEADER)
                        conn.recv(8)
                except OSError:
                    pass
                made[0] += 1

        def churn() -> None:
            while time.monotonic() < stop:
                with outbox_socket(send_buffer_size=4) as outbox:
                    try:
                        outbox.dial(address, block=True)
                    except pynng.ConnectionRefused:  # the backlog, full of raw clients
                        continue
                    outbox.send(bytes(100))
                made[0] += 1

        threads = run_threads([raw] * 4 + [churn])
        mailbox.recv_timeout = 100
        while time.monotonic() < stop:
            with contextlib.suppress(pynng.Timeout):
                mailbox.recv()
        for thread in threads:
            thread.join()
    return made[0]


def hammer_close(redial: bool, threads: int, seconds: float) -> int:
    stop = time.monotonic() + seconds
    made = [0]

    def cycle() -> None:
        rng = random.Random()
        while time.monotonic() < stop:
            if redial:
                sock = pynng.Pair1(reconnect_time_min=100, reconnect_time_max=5000)
            else:
                sock = outbox_socket(send_buffer_size=4)
            with sock:
                sock.dial("tcp://127.0.0.1:9", block=False)  # discard: nothing listens
                time.sleep(rng.random() * 0.2)
            made[0] += 1

    for thread in run_threads([cycle] * threads):
        thread.join()
    return made[0]


def run_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=["push0", "pair1", "mailbox", "close", "close-redialling"])
    parser.add_argument("--dialers", type=int, default=100, help="dialers, or closing threads")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.kind == "mailbox":
        made = hammer_mailbox(args.seconds)
    elif args.kind.startswith("close"):
        made = hammer_close(args.kind == "close-redialling", args.dialers, args.seconds)
    else:
        made = hammer_dialers(args.kind, args.dialers, args.seconds)
    print(json.dumps({"kind": args.kind, "made": made}), flush=True)


if __name__ == "__main__":
    main()
