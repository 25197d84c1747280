"""ARC's answers as typed outcomes, and when to ask again: pure code, no I/O.

Every answer ARC gives — an HTTP status, and for HTTP 200 a ``txStatus`` — maps here to
exactly one `ArcOutcome`; `mesh.chain.arc.ArcChain` only moves bytes and acts on the
outcome. Where the lists come from (bitcoin-sv/arc at commit e7efc5b, 2026-04-01):

- ``txStatus``: the ``Status`` enum of ``internal/metamorph/metamorph_api/metamorph_api.proto``
  (numbered 0..120 in pipeline order) and the ``txStatus`` enum of ``pkg/api/arc.yaml``;
- HTTP error statuses: ``pkg/api/status.go`` (400, 404, 409, 460-466, 468, 469,
  471-475; 467 and 470 are no longer defined there — ``arc.yaml`` still lists 467 as
  "mined ancestors not found", which status.go now numbers 475);
- which failure gets which code: ``internal/validator`` (e.g. an empty input or output
  list is 462, a short or sigops-heavy or non-push-only transaction 463, outputs worth
  more than the inputs 465, an oversize one 474). ARC does not check lock times
  (``common_validation.go``: "checked by the node").

Decisions:
- HTTP 200 is not success: ``DOUBLE_SPEND_ATTEMPTED`` and ``REJECTED`` come with 200.
- 409 ("Generic error") is `Transient`: ARC answers it for its own trouble (no block
  height yet, a database error) and for statuses it cannot name, not for a rule.
- ``UNKNOWN`` and a 404 on a status query are `NotFound`: ARC holds no record, submit
  again. A ``REJECTED`` whose reason says the transaction is already known is `Accepted`
  (a re-broadcast is idempotent).
- Anything unreadable (a 200 without JSON, a status name ARC does not define, ``MINED``
  without a block) is `Transient`, never success.

(docs/ARCHITECTURE.md §5)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

_TXID = re.compile(r"[0-9a-f]{64}")


class ArcStatus(enum.Enum):
    """ARC's ``txStatus`` values, numbered as in its metamorph API (pipeline order)."""

    UNKNOWN = 0
    QUEUED = 10
    RECEIVED = 20
    STORED = 30
    ANNOUNCED_TO_NETWORK = 40
    REQUESTED_BY_NETWORK = 50
    SENT_TO_NETWORK = 60
    ACCEPTED_BY_NETWORK = 70
    SEEN_IN_ORPHAN_MEMPOOL = 80
    SEEN_ON_NETWORK = 90
    DOUBLE_SPEND_ATTEMPTED = 100
    REJECTED = 110
    MINED_IN_STALE_BLOCK = 115
    MINED = 120


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Accepted:
    """ARC holds the transaction and is taking it to the miners (`stage`), or said it
    already has it without naming a stage (`stage` None)."""

    stage: ArcStatus | None


@dataclass(frozen=True)
class Mined:
    """In a block of the best chain; `merkle_path` is ARC's BUMP (hex, may be empty)."""

    height: int
    block_hash: str
    merkle_path: str = ""


@dataclass(frozen=True)
class Orphan:
    """A node holds it as an orphan: a parent is unknown to the network. Submit the
    parents again and keep polling."""


@dataclass(frozen=True)
class StaleBlock:
    """Mined in a block that lost a reorg: submit again and keep polling."""


@dataclass(frozen=True)
class DoubleSpend:
    """Another transaction spends one of its inputs (`competing` names them)."""

    competing: tuple[str, ...]
    detail: str = ""


@dataclass(frozen=True)
class Rejected:
    """ARC or a node refused it for `rule` (a key of `mesh.chain.errors.RULES`, or
    ``arc-<code>`` for an error status ARC does not define)."""

    rule: str
    detail: str


@dataclass(frozen=True)
class NotFound:
    """ARC has no record of the transaction: submit it (again)."""


@dataclass(frozen=True)
class Transient:
    """No usable answer (timeout, 5xx, rate limit, unreadable body): try again later."""

    reason: str


@dataclass(frozen=True)
class AuthFailed:
    """ARC refused our credentials (401/403): retrying will not help."""

    detail: str


ArcOutcome = (
    Accepted
    | Mined
    | Orphan
    | StaleBlock
    | DoubleSpend
    | Rejected
    | NotFound
    | Transient
    | AuthFailed
)

#: The outcome kind of each ``txStatus`` (the payload-free ones are built from it).
STATUS_OUTCOMES: dict[ArcStatus, type[ArcOutcome]] = {
    ArcStatus.UNKNOWN: NotFound,
    ArcStatus.QUEUED: Accepted,
    ArcStatus.RECEIVED: Accepted,
    ArcStatus.STORED: Accepted,
    ArcStatus.ANNOUNCED_TO_NETWORK: Accepted,
    ArcStatus.REQUESTED_BY_NETWORK: Accepted,
    ArcStatus.SENT_TO_NETWORK: Accepted,
    ArcStatus.ACCEPTED_BY_NETWORK: Accepted,
    ArcStatus.SEEN_IN_ORPHAN_MEMPOOL: Orphan,
    ArcStatus.SEEN_ON_NETWORK: Accepted,
    ArcStatus.DOUBLE_SPEND_ATTEMPTED: DoubleSpend,
    ArcStatus.REJECTED: Rejected,
    ArcStatus.MINED_IN_STALE_BLOCK: StaleBlock,
    ArcStatus.MINED: Mined,
}

#: ARC's HTTP error statuses on ``POST /v1/tx`` that reject the transaction, and the
#: rule each one means (``pkg/api/status.go``; 467 from ``arc.yaml``).
ERROR_RULES: dict[int, str] = {
    400: "parse",  # the body did not hold a transaction ARC could read
    422: "rejected",  # RFC 7807 "unprocessable entity" (arc.yaml)
    460: "format",  # not extended format, and ARC could not extend it
    461: "script",  # unlocking scripts fail
    462: "missing-or-spent-input",  # inputs non-existent or spent (also: none at all)
    463: "malformed",  # under 61 bytes, too many sigops, non-push-only unlocking script
    464: "output-value",  # outputs non-existent or invalid (dust, over 21M BSV)
    465: "fee",  # fee too low (or outputs worth more than the inputs)
    466: "double-spend",  # a conflicting transaction is in the block template
    467: "spv",  # BEEF: mined ancestors not found (arc.yaml's number)
    468: "spv",  # BEEF: invalid BUMPs
    469: "spv",  # BEEF: Merkle roots do not validate
    471: "frozen",  # input frozen by policy
    472: "frozen",  # input frozen by consensus
    473: "fee",  # cumulative fee (with unmined ancestors) too low
    474: "oversize",  # larger than maxtxsizepolicy
    475: "spv",  # BEEF: mined ancestors not found in the BUMPs
}

#: HTTP statuses that mean "ask again later" whatever the request.
TRANSIENT_HTTP = frozenset({408, 409, 425, 429})

#: Node reject reasons (in ``extraInfo`` of a ``REJECTED`` status) and our rule for each,
#: first match wins; None means "already known", which is not a rejection.
REASON_RULES: tuple[tuple[str, str | None], ...] = (
    ("already known", None),
    ("already-known", None),
    ("already in the mempool", None),
    ("already-in-mempool", None),
    ("already in block chain", None),
    ("non-final", "non-final"),
    ("non-bip68-final", "non-final"),
    ("mempool-conflict", "double-spend"),
    ("double spend", "double-spend"),
    ("double-spend", "double-spend"),
    ("missingorspent", "missing-or-spent-input"),
    ("missing-inputs", "missing-or-spent-input"),
    ("fee", "fee"),
    ("insufficient priority", "fee"),
    ("script", "script"),
    ("oversize", "oversize"),
    ("tx-size", "oversize"),
)


def rule_for_reason(reason: str) -> str | None:
    """Our rule for a node's reject reason; None when it says "already known"."""
    text = reason.lower()
    for needle, rule in REASON_RULES:
        if needle in text:
            return rule
    return "rejected"


# ---------------------------------------------------------------- classification


@dataclass(frozen=True)
class ArcReply:
    """One exchange with ARC as the shell saw it.

    `http_status` is None when no HTTP answer came (then `transport_error` says why:
    ``"timeout"``, ``"unreachable"`` …); `body` is the JSON object ARC sent, or None
    when there was none or it was not a JSON object.
    """

    http_status: int | None
    body: Mapping[str, Any] | None = None
    transport_error: str = ""


Request = Literal["submit", "status"]


def classify(reply: ArcReply, txid: str, request: Request) -> ArcOutcome:
    """The outcome of one ARC answer about `txid` to a ``submit`` (``POST /v1/tx``)
    or a ``status`` query (``GET /v1/tx/{txid}``)."""
    code = reply.http_status
    if code is None:
        return Transient(f"no answer from ARC ({reply.transport_error or 'transport error'})")
    if code == 200:
        if reply.body is None:
            return Transient("ARC answered 200 with an unreadable body")
        return classify_status(reply.body, txid)
    detail = _error_detail(code, reply.body)
    if code in (401, 403):
        return AuthFailed(detail)
    if code == 404:
        # on a status query: no record; on a submit: no /v1/tx at this URL
        return NotFound() if request == "status" else Transient(f"{detail} (check the ARC URL)")
    if code in TRANSIENT_HTTP or code >= 500:
        return Transient(detail)
    if request == "submit" and 400 <= code < 500:
        return Rejected(ERROR_RULES.get(code, f"arc-{code}"), detail)
    return Transient(f"unexpected answer: {detail}")


def classify_status(body: Mapping[str, Any], txid: str) -> ArcOutcome:
    """The outcome a ``TransactionStatus``/``TransactionResponse`` body (HTTP 200) means."""
    answered = body.get("txid")
    if answered not in (None, "", txid):
        return Transient(f"ARC answered about {answered}, not {txid}")
    name = body.get("txStatus")
    try:
        status = ArcStatus[name] if isinstance(name, str) else None
    except KeyError:
        status = None
    if status is None:
        return Transient(f"ARC sent no txStatus ARC defines ({name!r})")
    extra = str(body.get("extraInfo") or "").strip()
    kind = STATUS_OUTCOMES[status]
    if kind is Accepted:
        return Accepted(status)
    if kind is Mined:
        height, block_hash = body.get("blockHeight"), body.get("blockHash")
        if (
            isinstance(height, bool)
            or not isinstance(height, int)
            or height <= 0
            or not isinstance(block_hash, str)
            or not _TXID.fullmatch(block_hash)
        ):
            return Transient(f"ARC says MINED but names no block ({height!r}, {block_hash!r})")
        return Mined(height, block_hash, str(body.get("merklePath") or ""))
    if kind is DoubleSpend:
        competing = body.get("competingTxs") or []
        named = tuple(c for c in competing if isinstance(c, str) and _TXID.fullmatch(c))
        return DoubleSpend(named, extra)
    if kind is Rejected:
        rule = rule_for_reason(extra)
        return Accepted(None) if rule is None else Rejected(rule, f"ARC REJECTED: {extra or '?'}")
    if kind is Orphan:
        return Orphan()
    if kind is StaleBlock:
        return StaleBlock()
    return NotFound()


def _error_detail(code: int, body: Mapping[str, Any] | None) -> str:
    """``ARC <code> <title>: <extraInfo or detail>`` from an RFC 7807 error body."""
    if body is None:
        return f"ARC {code}"
    title = str(body.get("title") or "").strip()
    why = str(body.get("extraInfo") or body.get("detail") or "").strip()
    return f"ARC {code}" + (f" {title}" if title else "") + (f": {why}" if why else "")


# ---------------------------------------------------------------- when to ask again


@dataclass(frozen=True)
class PollSchedule:
    """Capped exponential back-off for polls and for retrying a transient failure.

    The n-th wait at one status is ``min(cap, first * factor**n)``, shortened by up to
    `jitter` of itself (the caller passes the random draw, so this stays pure). Once ARC
    has seen the transaction on the network, only a block moves it on, so polls wait at
    least `block_wait`. `retries` is how many more times a submission is tried after a
    transient failure before `ChainUnavailable` is raised.
    """

    first: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    jitter: float = 0.5
    block_wait: float = 30.0
    retries: int = 3

    def __post_init__(self) -> None:
        if self.first <= 0 or self.factor < 1 or self.cap < self.first:
            raise ValueError("need first > 0, factor >= 1 and cap >= first")
        if not 0 <= self.jitter < 1 or self.block_wait < 0 or self.retries < 0:
            raise ValueError("need 0 <= jitter < 1, block_wait >= 0 and retries >= 0")

    def backoff(self, attempt: int, draw: float) -> float:
        """The wait before try `attempt` + 1 (0-based), `draw` uniform in [0, 1)."""
        base = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return base * (1 - self.jitter * draw)


def next_poll_delay(schedule: PollSchedule, attempt: int, last: ArcOutcome, draw: float) -> float:
    """How long to wait before polling again after `last`, the `attempt`-th (0-based)
    poll in a row with that outcome."""
    delay = schedule.backoff(attempt, draw)
    waiting_for_block = isinstance(last, Accepted) and (
        last.stage is None or last.stage.value >= ArcStatus.SEEN_ON_NETWORK.value
    )
    if waiting_for_block:
        return max(delay, min(schedule.block_wait, schedule.cap))
    return delay


def same_state(a: ArcOutcome | None, b: ArcOutcome) -> bool:
    """Whether two polls saw the same state, so the back-off goes on rather than
    restarting (the reason of a transient failure does not count)."""
    if isinstance(a, Accepted) and isinstance(b, Accepted):
        return a.stage == b.stage
    return type(a) is type(b)
