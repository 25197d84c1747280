"""Folding a payer's queued `ChannelPay` frames into `ChannelPays` frames (no I/O).

The payer signs payments one at a time and queues one `ChannelPay` each until the
commit that makes them durable; what leaves together is then folded here: a run of
payments on one channel with consecutive seqs becomes one `ChannelPays`. The payee
then decodes, dispatches and records the run once instead of once per payment (the
signatures are still verified one by one). A lone payment stays a `ChannelPay`.
(docs/ARCHITECTURE.md §4, §9)
"""

from __future__ import annotations

from mesh.channel.frames import ChannelPay, ChannelPays
from mesh.channel.state import Record
from mesh.wire import Frame

MAX_PAYS = 256
"""Payments per `ChannelPays`: at most ~85 bytes each, well inside one frame."""


def fold_payments(frames: list[Frame]) -> list[Frame]:
    """`frames` with each run of consecutive payments on one channel as one frame;
    every other frame keeps its place, so the order on the wire is unchanged."""
    out: list[Frame] = []
    run: list[ChannelPay] = []
    for frame in frames:
        if type(frame) is ChannelPay:
            if run and (
                frame.channel_id != run[0].channel_id
                or frame.seq != run[-1].seq + 1
                or len(run) == MAX_PAYS
            ):
                out.append(_folded(run))
                run = []
            run.append(frame)
            continue
        if run:
            out.append(_folded(run))
            run = []
        out.append(frame)
    if run:
        out.append(_folded(run))
    return out


def latest_payment(record: Record) -> ChannelPay:
    """The frame that carries `record`'s latest signed payment (sent, or resent)."""
    return ChannelPay(record.terms.channel_id, record.seq, record.total, record.payer_sig)


def _folded(run: list[ChannelPay]) -> Frame:
    if len(run) == 1:
        return run[0]
    first = run[0]
    return ChannelPays(
        first.channel_id,
        first.seq,
        tuple(pay.total for pay in run),
        tuple(pay.signature for pay in run),
    )


__all__ = ["MAX_PAYS", "fold_payments", "latest_payment"]
