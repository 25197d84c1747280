"""The two nng sockets of a node, its mailbox and its outboxes, and the nng bugs they
are shaped around.

A node receives on one mailbox, a polyamorous `Pair1` listener that many peers dial,
and sends through one outbox per remote mailbox, a plain (monogamous) `Pair1` socket
that dials once and never redials. A mailbox never sends; an outbox never reads.

Both shapes avoid crashes in the nng inside pynng 0.9.0 (1.11), which any host that
can reach a mailbox could otherwise trigger with a few unauthenticated packets (every
agent dials the mailbox a first handshake packet names):

* *Push0 frees a connection it still lists.* `push0_pipe_start` posts a connection's
  first read and only then puts it on the socket's ready list, without checking that
  it is still open. When the far end hangs up at once, the failed read closes the
  connection on another thread -- taking it off the list before it is put there -- and
  nng frees it while the list still holds it: SIGSEGV, or aborts such as "appending
  node already on a list", within seconds of a listener that completes the SP header
  and hangs up. Pair1 registers a connection before its first read and unregisters it
  under the same lock. So mailboxes and outboxes are pair1, not pull/push.
* *Closing a socket while its dialer starts a redial.* Each connect attempt begins
  with a name lookup on nng's resolver threads; a socket closed just as a background
  redial begins one can leave the resolver finishing a freed request ("pthread_mutex_lock:
  Invalid argument"): about one crash in 35 000 closes of sockets redialling a dead port.
  An outbox therefore never redials: its only attempt starts inside `dial`, on the
  caller's thread, which is also the thread that closes it. A connection that fails or
  ends leaves the outbox `lost`; the node gives the next user a fresh one.

`python -m tests.transport.hammer_proc --help` reproduces both and
`tests/transport/test_nngsockets.py` holds the sockets to it. Pair1's polyamorous
mode is deprecated in nng 2 (removed there); pynng ships nng 1. (docs/ARCHITECTURE.md §8)
"""

from __future__ import annotations

import pynng

SP_HEADER = b"\x00SP\x00\x00\x11\x00\x00"
"""What either socket sends first on a TCP connection: "SP", version 0, protocol 0x11
(pair1), reserved. Tests that speak raw TCP to a mailbox start with it."""

NO_REDIAL_MS = 2**31 - 1
"""nng's redial delay for outboxes, its largest (~25 days). nng draws each delay at
random below it, so one lost outbox in ~36 000 redials within a minute; the node
closes a lost outbox within a timer pass or two (~1.25 s each) and a linger."""

OUTBOX_RECV_MAX = 64
"""Bytes: a mailbox never sends, so anything its end of an outbox's connection sends
is hostile; a message above this closes that connection, smaller ones sit unread."""


def mailbox_socket(*, recv_max_size: int, recv_buffer_size: int) -> pynng.Pair1:
    """A node's mailbox: receives from every peer that dials it; never sends."""
    return pynng.Pair1(
        polyamorous=True, recv_max_size=recv_max_size, recv_buffer_size=recv_buffer_size
    )


def outbox_socket(*, send_buffer_size: int) -> pynng.Pair1:
    """A socket to one remote mailbox: sends; never reads; never redials (dial it once,
    with `block=False`, on the thread that will close it).

    Sends wait (or, non-blocking, raise `pynng.TryAgain`) while the connection is not
    yet up or `send_buffer_size` packets are queued: backpressure, nothing dropped.
    """
    return pynng.Pair1(
        send_buffer_size=send_buffer_size,
        recv_max_size=OUTBOX_RECV_MAX,
        reconnect_time_min=NO_REDIAL_MS,
        reconnect_time_max=NO_REDIAL_MS,
    )


class MailboxReader:
    """Takes packets off a mailbox without building pynng's per-message objects.

    pynng's `recv_msg` wraps each message in a `Message` and looks its connection up
    in a locked table of `Pipe` objects: 11-15 us per packet on this 2-core VM, where
    the same read, copy and connection id through pynng's own cffi bindings (this)
    take 7. One reader per mailbox, used from one thread.
    """

    def __init__(self, sock: pynng.Socket) -> None:
        self._socket = sock.socket
        self._out = pynng.ffi.new("nng_msg **")

    def read_nowait(self) -> tuple[bytes, int] | None:
        """The next packet and the id of the connection it came on; None if none
        waits. Raises `pynng.Closed` once the mailbox is closed."""
        lib = pynng.lib
        err = lib.nng_recvmsg(self._socket, self._out, lib.NNG_FLAG_NONBLOCK)
        if err == lib.NNG_EAGAIN:
            return None
        pynng.check_err(err)
        msg = self._out[0]
        try:
            size = lib.nng_msg_len(msg)
            body = b""  # an empty message may have no body at all (NULL)
            if size:
                body = pynng.ffi.unpack(pynng.ffi.cast("char *", lib.nng_msg_body(msg)), size)
            connection = lib.nng_pipe_id(lib.nng_msg_get_pipe(msg))
        finally:
            lib.nng_msg_free(msg)
        return body, connection


class ConnectionWatch:
    """Whether a socket's one connection came up, and whether it has gone.

    nng calls the hooks on its own threads; the flags may be read from any thread.
    Attach it before dialling.
    """

    def __init__(self, sock: pynng.Socket) -> None:
        self.opened = False
        self.lost = False
        sock.add_post_pipe_connect_cb(self._on_open)
        sock.add_post_pipe_remove_cb(self._on_close)

    def _on_open(self, pipe: pynng.Pipe) -> None:
        self.opened = True

    def _on_close(self, pipe: pynng.Pipe) -> None:
        self.lost = True


__all__ = [
    "NO_REDIAL_MS",
    "OUTBOX_RECV_MAX",
    "SP_HEADER",
    "ConnectionWatch",
    "MailboxReader",
    "mailbox_socket",
    "outbox_socket",
]
