"""nng 1.11 (in pynng 0.9.0) crashes a process whose dialer redials a mailbox that
hangs up as each connection opens; `mesh.nngguard` stops such redials.

The hostile mailbox here is a plain TCP listener that answers the SP header (as a
`Pull0` would) and closes at once. Before the guard, one first-handshake packet
naming it -- unauthenticated, from anyone who can reach a mailbox -- made the node
dial it, redial every ~100 ms, and die by SIGSEGV or abort within seconds.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass

import pynng
import trio

from mesh.identity import Identity
from mesh.nngguard import EARLY, RedialGuard
from mesh.session import Handshake, LocalIdentity
from tests.transport.procs import Proc
from tests.transport.test_node import free_port

SP_HEADER_PULL0 = b"\x00SP\x00\x00\x51\x00\x00"


@dataclass
class HangUpListener:
    """Accepts, completes the SP header, hangs up; counts the connections."""

    port: int = 0
    accepted: int = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started()
        async with listener:
            while True:
                stream = await listener.accept()
                self.accepted += 1
                # The dialer may reset first (its outbox let go, or the node exiting).
                async with stream:
                    with contextlib.suppress(trio.BrokenResourceError), trio.move_on_after(1):
                        await stream.send_all(SP_HEADER_PULL0)
                        await stream.receive_some(8)

    @property
    def mailbox(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


async def test_handshakes_naming_mailboxes_that_hang_up_no_longer_crash_the_node() -> None:
    node = Proc("idle", "--seconds", "8")
    try:
        address = node.line()["address"]
        async with trio.open_nursery() as nursery:
            hostile = [HangUpListener() for _ in range(5)]
            for listener in hostile:
                await nursery.start(listener.run)
            with pynng.Push0(send_timeout=1000) as push:
                push.dial(address, block=True)
                for _ in range(4):
                    for listener in hostile:
                        me = LocalIdentity.create(Identity.generate(), listener.mailbox)
                        with contextlib.suppress(pynng.Timeout):  # a crashed node
                            push.send(Handshake(me, initiator=True).start())
                    await trio.sleep(1)
                returncode = await trio.to_thread.run_sync(node.wait, 30)
            nursery.cancel_scope.cancel()
        assert returncode == 0, node.stderr()[-2000:]
        stats = node.line()
        # One connection per outbox, never redialled: a new one for each HS1 naming
        # the mailbox (unguarded, ~10 redials a second each).
        assert stats["redials_stopped"] >= 5
        assert all(1 <= listener.accepted <= 4 for listener in hostile), [
            listener.accepted for listener in hostile
        ]
    finally:
        node.stop()


async def test_a_guarded_dialer_does_not_redial_a_mailbox_that_hangs_up_at_once() -> None:
    async with trio.open_nursery() as nursery:
        hostile = HangUpListener()
        await nursery.start(hostile.run)
        with pynng.Push0(reconnect_time_min=20, reconnect_time_max=40) as push:
            guard = RedialGuard(push)
            guard.dial(hostile.mailbox)
            with trio.fail_after(5):
                while not guard.stopped:
                    await trio.sleep(0.01)
            await trio.sleep(0.5)  # unguarded, that is ~15 redials
            assert hostile.accepted == 1
        nursery.cancel_scope.cancel()


LISTENER = """
import sys, pynng
with pynng.Pull0() as pull:
    pull.listen(sys.argv[1])
    print("listening", flush=True)
    while True:
        print(pull.recv().decode(), flush=True)
"""


async def test_a_guarded_dialer_redials_a_peer_that_restarts() -> None:
    """A peer killed and restarted on its address: the connection it had lived, so the
    guarded dialer redials as nng always did, and the restarted peer gets the next
    message."""
    mailbox = f"tcp://127.0.0.1:{free_port()}"

    def peer() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", LISTENER, mailbox], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
        return proc

    first = await trio.to_thread.run_sync(peer)
    second = None
    try:
        with pynng.Push0(reconnect_time_min=50, reconnect_time_max=100, send_timeout=5000) as push:
            guard = RedialGuard(push)
            guard.dial(mailbox)
            await trio.to_thread.run_sync(push.send, b"one")
            assert first.stdout is not None
            assert await trio.to_thread.run_sync(first.stdout.readline) == "one\n"
            await trio.sleep(EARLY + 0.1)
            first.kill()  # the kernel closes its sockets at once
            first.wait()
            await trio.sleep(0.3)  # nng redials meanwhile, and is refused
            second = await trio.to_thread.run_sync(peer)
            await trio.to_thread.run_sync(push.send, b"two")  # once redialled
            assert second.stdout is not None
            assert await trio.to_thread.run_sync(second.stdout.readline) == "two\n"
            assert not guard.stopped
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()
