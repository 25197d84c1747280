"""The inspector's side of escrowed work orders: learn of a funded escrow, measure the
part when the buyer says it is made, decide by the profile's ``pass_when`` and give
both parties the verdict -- a signed record of its ``verdicts`` stream, and its
signature on the way out the verdict allows.

The measuring is a handler the profile names (``[inspection] handler``):
``builtin:cmm`` is m2mesh's simulated coordinate measuring machine; a vendor's is
``package.module:function``, a function of the part id returning the measured values
(name -> number or text). The decision is saved before the record is logged and the
verdict before it is sent, so asked again -- after a lost frame or a restart -- the
inspector gives the same verdict and never judges a part twice. (docs/ARCHITECTURE.md §4)
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from agents.profile_workflows import InspectionSpec
from agents.workflows.context import LogRecord, WorkContext, log
from agents.workflows.store import Saved, summary
from mesh.chain.tx import txid_of
from mesh.errors import MeshError
from mesh.wire import decode, encode
from mesh.workflow.escrow import EscrowError
from mesh.workflow.frames import EscrowFunded, EscrowRefused, InspectPart, Verdict
from mesh.workflow.orders import InspectorOrder, OrderState
from mesh.workflow.verdict import STREAM

ROLE = "inspector"
Measure = Callable[[str], Mapping[str, object]]


class InspectionError(MeshError):
    """A measuring handler that cannot be found or failed."""


def simulated_cmm(part: str) -> Mapping[str, object]:
    """m2mesh's simulated coordinate measuring machine: a part's deviation from
    nominal (µm), the same every time for one part id."""
    digest = hashlib.sha256(part.encode()).digest()
    return {"deviation_um": digest[0] % 40}


BUILTIN: dict[str, Measure] = {"cmm": simulated_cmm}


def resolve_measure(reference: str) -> Measure:
    """The measuring function ``[inspection] handler`` names; `InspectionError` else."""
    module, _, name = reference.partition(":")
    if module == "builtin":
        if name not in BUILTIN:
            raise InspectionError(f"{reference!r}: no such builtin (have {', '.join(BUILTIN)})")
        return BUILTIN[name]
    if not module or not name:
        raise InspectionError(f"{reference!r}: expected builtin:NAME or package.module:NAME")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise InspectionError(f"{reference!r}: {exc}") from None
    if not callable(found):
        raise InspectionError(f"{reference!r} is not a function")
    measure: Measure = found
    return measure


class InspectorWork:
    """The work orders this agent judges as the inspector."""

    def __init__(
        self, ctx: WorkContext, spec: InspectionSpec | None, log_record: LogRecord
    ) -> None:
        self.ctx = ctx
        self.spec = spec
        self.measure = resolve_measure(spec.handler) if spec is not None else None
        self._log_record = log_record

    async def handle(self, peer_id: str, frame: object) -> bool:
        """Handle a work-order frame addressed to the inspector; False when not one."""
        if isinstance(frame, EscrowFunded) and frame.inspector == self.ctx.peer_id:
            await self._funded(peer_id, frame)
        elif isinstance(frame, InspectPart):
            await self._inspect(peer_id, frame.order_id)
        else:
            return False
        return True

    async def _funded(self, buyer: str, frame: EscrowFunded) -> None:
        ctx = self.ctx
        if await ctx.db(ctx.orders.get, frame.order_id, ROLE) is not None:
            return
        if self.spec is None:
            await ctx.send(buyer, EscrowRefused(frame.order_id, "no-inspection",
                                                "this agent inspects nothing"))  # fmt: skip
            return
        try:
            txid = txid_of(frame.funding_tx)
            order = InspectorOrder.funded(ctx.identity.key, buyer, frame, txid)
            found = await ctx.funding_output(txid)
            if found != (order.terms.script, order.terms.amount):
                raise EscrowError("funding", "no such escrow on chain")
        except (EscrowError, ValueError) as exc:
            rule = exc.rule if isinstance(exc, EscrowError) else "funding"
            log.info("work order %s: not inspecting: %s", frame.order_id.hex()[:8], exc)
            await ctx.send(buyer, EscrowRefused(frame.order_id, rule, str(exc)))
            return
        data = {"buyer": buyer, "funded": encode(frame)}
        await ctx.save(Saved(frame.order_id, ROLE, "", frame.part, "funded", data))
        log.info("work order %s: part %s to inspect when made", frame.order_id.hex()[:8],
                 frame.part)  # fmt: skip

    def _order(self, saved: Saved) -> InspectorOrder:
        frame = decode(saved.data["funded"])
        assert isinstance(frame, EscrowFunded)
        order = InspectorOrder.funded(
            self.ctx.identity.key, saved.data["buyer"], frame, txid_of(frame.funding_tx)
        )
        if saved.data.get("verdict"):
            verdict = decode(saved.data["verdict"])
            assert isinstance(verdict, Verdict)
            order.verdict = verdict
        return order

    async def _inspect(self, buyer: str, order_id: bytes) -> None:
        ctx = self.ctx
        saved = await ctx.db(ctx.orders.get, order_id, ROLE)
        if saved is None or saved.data["buyer"] != buyer or self.measure is None:
            return
        assert self.spec is not None
        order = self._order(saved)
        if order.verdict is None:
            if "values" not in saved.data:  # measured once, decided once
                values = self._measure(saved.part)
                if values is None:
                    return
                today = datetime.now(UTC).date()
                failing = [str(c) for c in self.spec.pass_when if c.check(values, today)]
                saved.data["values"] = sorted(values.items())
                saved.data["passed"] = not failing
                saved.state = "decided"
                await ctx.save(saved)
            values_t = tuple((str(k), str(v)) for k, v in saved.data["values"])
            passed = bool(saved.data["passed"])
            body = order.body(passed, values_t)
            record, signature = await self._log_record(STREAM, body.encode(), buyer)
            verdict = order.judge(passed, record, signature)
            saved.state = (OrderState.PASSED if passed else OrderState.FAILED).value
            saved.data["verdict"] = encode(verdict)
            saved.done = True
            await ctx.save(saved)  # before it is sent
            shown = ", ".join(f"{k} {v}" for k, v in values_t)
            log.info("work order %s: part %s %s (%s)", order_id.hex()[:8], saved.part,
                     "PASS" if passed else "FAIL", shown)  # fmt: skip
        assert order.verdict is not None
        for peer in (buyer, order.machine):
            await ctx.send(peer, order.verdict)

    def _measure(self, part: str) -> dict[str, str] | None:
        assert self.measure is not None and self.spec is not None
        try:
            measured = self.measure(part)
            return {str(k): str(v) for k, v in dict(measured).items()}
        except Exception:  # vendor code: its failure leaves the part unjudged
            log.exception("inspection of %s: handler %s failed", part, self.spec.handler)
            return None

    def status(self, rows: list[Saved]) -> list[dict[str, object]]:
        """The inspector's orders for `mesh status`, with the values it measured."""
        return [
            summary(s, s.data["buyer"]) | {"values": dict(s.data.get("values", []))}
            for s in rows
            if s.role == ROLE
        ]


__all__ = ["BUILTIN", "InspectionError", "InspectorWork", "resolve_measure", "simulated_cmm"]
