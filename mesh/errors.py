"""The error vocabulary shared by every layer of m2mesh.

Following h11's split: `LocalProtocolError` means *we* were about to break the
protocol (a bug or a bad call on our side); `RemoteProtocolError` means bytes that
came from a peer broke it. A remote error ends that peer's session with a clear
reason and never the agent. This module owns only the types; it does no I/O.
(docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error m2mesh raises on purpose."""


class LocalProtocolError(MeshError):
    """We were asked to do something the protocol does not allow."""


class RemoteProtocolError(MeshError):
    """A peer sent something the protocol does not allow.

    `field` names the offending part of the message (a dotted path such as
    ``"Hello.version"``, or ``"frame"`` for the envelope) and `reason` says what
    was wrong with it, so a log line can name both without a traceback.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class IdentityError(MeshError):
    """A key file or passphrase problem; the message says how to fix it."""
