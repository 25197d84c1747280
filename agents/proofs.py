"""Certificates in the mesh: asking peers for proof, answering their asks (a Trio shell).

`Proofs` runs `mesh.certs.policy` over the node's sessions and the chain. It asks a
peer to prove a profile requirement (`require`, from a want's task: a buyer that buys
only from calibrated sensors), answers what peers ask of this agent with the
certificates its profile holds (`handle`: only the asked fields, never one the profile
does not disclose), and tells the channel manager whether a buyer may open a channel
for a service that requires proof (`admit`: a provider that sells only to certified
cells). A proof stays good for `ttl` seconds (then it is asked again, revocation
included); a failure is remembered `failure_ttl` seconds, so a peer that cannot prove
is refused at once with its reason, on both sides, before anything is paid.
(docs/ARCHITECTURE.md §3, §6)
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from agents.logs import log_context
from mesh.certs.certificate import Certificate, CertificateError
from mesh.certs.frames import ProofOffer, ProofRefused, ProofRequest
from mesh.certs.policy import Held, Proven, Requirement, answer_request, check_offer
from mesh.certs.revocation import Revocation, judge, outpoint_of
from mesh.chain.base import Chain
from mesh.chain.errors import ChainUnavailable
from mesh.identity import Identity
from mesh.net.ratelimit import PeerBudgets
from mesh.wire import Frame

log = logging.getLogger("agents.proofs")
Send = Callable[[str, Frame], Awaitable[None]]
MAX_REMEMBERED = 1024
"""Most (peer, requirement) outcomes kept: a site of strangers cannot grow it."""
ANSWERS_PER_SECOND = 2.0
ANSWER_BURST = 8.0
"""How often one peer may have its asks answered (an answer costs a few ECDH
operations per field); beyond it an ask is refused ``busy`` at no cost."""


class Proofs:
    """This agent's side of every certificate exchange (see the module doc)."""

    def __init__(
        self,
        identity: Identity,
        held: Sequence[Held],
        requirements: Mapping[str, Requirement],
        send: Send,
        chain: Chain,
        *,
        ttl: float = 600.0,
        failure_ttl: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.identity = identity
        self.held = list(held)
        self.requirements = dict(requirements)
        self._send = send
        self._chain = chain
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._timeout = timeout
        self._pending: dict[bytes, trio.MemorySendChannel[Frame]] = {}
        self._outcomes: OrderedDict[tuple[str, str], tuple[Proven | CertificateError, float]]
        self._outcomes = OrderedDict()
        self._asking: set[tuple[str, str]] = set()
        self._answered: OrderedDict[bytes, str] = OrderedDict()  # our offers: id -> verifier
        self._verdicts: OrderedDict[str, tuple[str, str]] = OrderedDict()  # peer -> refusal
        self._nursery: trio.Nursery | None = None
        self._budgets = PeerBudgets(ANSWERS_PER_SECOND, ANSWER_BURST)
        self.counts = dict.fromkeys(
            ("asked", "proven", "refused", "answered", "declined", "throttled"), 0
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery the provider's background asks run in."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---------------------------------------------------------------- verifier

    async def require(self, peer_id: str, name: str) -> Proven:
        """`peer_id`'s proof of requirement `name` (asked now unless known and fresh);
        `CertificateError` says why there is none."""
        known = self._known(peer_id, name)
        if isinstance(known, Proven):
            return known
        if isinstance(known, CertificateError):
            raise known
        return await self._ask(peer_id, name)

    def admit(self, peer_id: str, name: str) -> tuple[str, str] | None:
        """Whether `peer_id` may open a channel for a service requiring `name`: None
        when it proved it; else the refusal (code, reason) -- and, unless one runs or a
        failure is fresh, an ask starts, so the buyer's next try can succeed."""
        known = self._known(peer_id, name)
        if isinstance(known, Proven):
            return None
        if isinstance(known, CertificateError):
            return "unproven", f"{name}: {known}"
        key = (peer_id, name)
        if key not in self._asking and self._nursery is not None:
            self._asking.add(key)
            self._nursery.start_soon(self._ask_quietly, peer_id, name)
        requirement = self.requirements[name]
        asked = ", ".join(requirement.reveal)
        return "proof-required", f"{name}: asked for a {requirement.type_name} ({asked})"

    async def _ask_quietly(self, peer_id: str, name: str) -> None:
        try:
            await self._ask(peer_id, name)
        except CertificateError:
            pass  # remembered and logged by _ask
        finally:
            self._asking.discard((peer_id, name))

    async def _ask(self, peer_id: str, name: str) -> Proven:
        requirement = self.requirements[name]
        request_id = secrets.token_bytes(16)
        send, receive = trio.open_memory_channel[Frame](1)
        self._pending[request_id] = send
        self.counts["asked"] += 1
        try:
            await self._send(peer_id, requirement.request(request_id))
            with trio.move_on_after(self._timeout):
                answer = await receive.receive()
                outcome = await self._judge(requirement, peer_id, answer)
                if isinstance(answer, ProofOffer) and isinstance(outcome, CertificateError):
                    # Tell the prover why: the deal is refused on both sides.
                    verdict = ProofRefused(request_id, outcome.code, outcome.reason[:300])
                    await self._send(peer_id, verdict)
                return self._remember(peer_id, name, outcome)
            error = CertificateError("timeout", f"no answer in {self._timeout:.0f} s")
            return self._remember(peer_id, name, error)
        finally:
            del self._pending[request_id]

    async def _judge(
        self, requirement: Requirement, peer_id: str, answer: Frame
    ) -> Proven | CertificateError:
        if isinstance(answer, ProofRefused):
            return CertificateError(answer.code, f"the peer says: {answer.reason}"[:300])
        assert isinstance(answer, ProofOffer)
        try:
            today = datetime.now(UTC).date()
            proven = check_offer(requirement, answer, peer_id, self.identity.key, today)
            if proven.revocable and proven.certificate is not None:
                await self._not_revoked(proven.certificate)
        except CertificateError as exc:
            return exc
        return proven

    async def _not_revoked(self, cert: Certificate) -> None:
        """Spent means revoked; an outpoint our chain does not know proves nothing
        (`mesh.certs.revocation.judge`)."""
        outpoint = outpoint_of(cert.revocation_outpoint)
        try:
            output = await self._chain.output(outpoint.txid, outpoint.vout)
        except ChainUnavailable as exc:
            raise CertificateError("revocation", f"the chain did not answer: {exc}") from None
        verdict = judge(cert, output.state)
        if verdict is Revocation.REVOKED:
            raise CertificateError(
                "revoked", f"the certifier revoked it (spent {outpoint.txid[:16]}…)"
            )
        if verdict is Revocation.UNKNOWN:
            raise CertificateError("revocation", "its revocation outpoint is not on our chain")

    def _remember(self, peer_id: str, name: str, outcome: Proven | CertificateError) -> Proven:
        """Keep an outcome (a proof for `ttl`, a failure for `failure_ttl`); log it;
        return the proof or raise the failure."""
        now = trio.current_time()
        key = (peer_id, name)
        with log_context(peer=peer_id):
            if isinstance(outcome, Proven):
                self.counts["proven"] += 1
                self._outcomes[key] = (outcome, now + self._ttl)
                shown = ", ".join(f"{k}={v}" for k, v in outcome.values.items())
                log.info("peer %s proved %s: %s", peer_id[:16], name, shown)
            else:
                self.counts["refused"] += 1
                self._outcomes[key] = (outcome, now + self._failure_ttl)
                log.warning("peer %s did not prove %s: %s", peer_id[:16], name, outcome)
        self._outcomes.move_to_end(key)
        while len(self._outcomes) > MAX_REMEMBERED:
            self._outcomes.popitem(last=False)
        if isinstance(outcome, CertificateError):
            raise outcome
        return outcome

    def _known(self, peer_id: str, name: str) -> Proven | CertificateError | None:
        kept = self._outcomes.get((peer_id, name))
        if kept is None or kept[1] <= trio.current_time():
            return None
        return kept[0]

    # ---------------------------------------------------------------- frames

    async def handle(self, peer_id: str, frame: Frame) -> bool:
        """A certificate frame from `peer_id`; False when it is not one."""
        if isinstance(frame, ProofRequest):
            if not self._budgets.take(peer_id, 1.0, trio.current_time()):
                self.counts["throttled"] += 1
                await self._send(peer_id, ProofRefused(frame.request_id, "busy", "ask later"))
                return True
            answer = answer_request(frame, self.held, self.identity.key, peer_id)
            if isinstance(answer, ProofRefused):
                self.counts["declined"] += 1
                log.warning(
                    "peer %s asked for a certificate; none given: %s: %s",
                    peer_id[:16],
                    answer.code,
                    answer.reason,
                )
            else:
                self.counts["answered"] += 1
                shown = ", ".join(k.name for k in answer.keyring)
                log.info("revealed %s to peer %s", shown or "nothing", peer_id[:16])
                self._answered[frame.request_id] = peer_id
                while len(self._answered) > MAX_REMEMBERED:
                    self._answered.popitem(last=False)
            await self._send(peer_id, answer)
            return True
        if isinstance(frame, ProofRefused) and self._answered.get(frame.request_id) == peer_id:
            del self._answered[frame.request_id]  # its verdict on the certificate we showed
            log.warning(
                "peer %s refused our certificate: %s: %s", peer_id[:16], frame.code, frame.reason
            )
            self._verdicts[peer_id] = (frame.code, frame.reason[:300])
            self._verdicts.move_to_end(peer_id)
            while len(self._verdicts) > MAX_REMEMBERED:
                self._verdicts.popitem(last=False)
            return True
        if isinstance(frame, ProofOffer | ProofRefused):
            waiting = self._pending.get(frame.request_id)
            if waiting is not None:
                with contextlib.suppress(trio.WouldBlock):  # answered twice: the first stands
                    waiting.send_nowait(frame)
            return True
        return False

    # ---------------------------------------------------------------- status

    def snapshot(self) -> dict[str, Any]:
        """What peers proved to us, what failed, and what we hold (JSON-ready)."""
        now = trio.current_time()
        proved: dict[str, list[dict[str, Any]]] = {}
        failed: dict[str, list[dict[str, str]]] = {}
        for (peer, name), (outcome, until) in self._outcomes.items():
            if until <= now:
                continue
            if isinstance(outcome, Proven):
                proved.setdefault(peer, []).append(
                    {
                        "requirement": name,
                        "type": outcome.type_name,
                        "certifier": outcome.certifier,
                        "fields": dict(outcome.values),
                        "revocable": outcome.revocable,
                    }
                )
            else:
                failed.setdefault(peer, []).append(
                    {"requirement": name, "code": outcome.code, "reason": outcome.reason}
                )
        held = [
            {
                "certifier": h.certificate.certifier,
                "serial": h.certificate.serial_number,
                "fields": sorted(h.certificate.fields),
                "disclose": list(h.disclose),
            }
            for h in self.held
        ]
        refused_ours = {
            peer: {"code": code, "reason": reason}
            for peer, (code, reason) in self._verdicts.items()
        }
        return {
            "proved": proved,
            "failed": failed,
            "refused_ours": refused_ours,
            "held": held,
            "counts": dict(self.counts),
        }


__all__ = ["Proofs"]
