"""Errors of the anchoring layer, each naming what failed.

A proof that does not verify is a `ProofFailed` whose `reason` is one short stable
string from `REASONS` (tests, logs and `mesh verify` match on it) and whose `detail`
says what exactly was wrong. Bytes that came from a peer (a receipt) and do not hold
are a `ReceiptRejected`, a `RemoteProtocolError`: they end that exchange, never the
agent. This module owns only the types; it does no I/O. (docs/ARCHITECTURE.md §2)
"""

from __future__ import annotations

from mesh.errors import MeshError, RemoteProtocolError

#: Why a proof can fail, in the order `verify_proof` checks them.
REASONS: dict[str, str] = {
    "format": "the proof file is not a well-formed m2mesh proof (not JSON, a field missing"
    " or of the wrong type, bad hex, a record that does not decode)",
    "record-hash": "the record bytes do not hash to the stated record hash, or the readable"
    " fields do not match the signed bytes",
    "record-signature": "the signature is not the agent's signature over the record hash",
    "anchor-tx": "the anchor transaction does not hash to its txid, does not parse, carries no"
    " single m2mesh anchor output, or anchors another agent, stream or seq range",
    "anchor-root-mismatch": "the batch root in the proof is not the root the anchor tx carries",
    "merkle-path": "the Merkle path does not lead from the record hash to the batch root",
    "header-unknown": "the trusted header chain has no block with this hash at this height",
    "block-proof": "the BUMP does not prove the anchor txid into that block's Merkle root",
}


class AnchoringError(MeshError):
    """Base class of anchoring errors."""


class RecordError(AnchoringError):
    """A record is malformed, or asked to be built with values the format forbids.

    `field` names the offending field (``seq``, ``stream``, ``signature`` …).
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"record {field}: {detail}")
        self.field = field
        self.detail = detail


class ProofFailed(AnchoringError):
    """A proof does not verify; `reason` is a key of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class HeadersError(AnchoringError):
    """A header source (headers file or ledger) cannot be used."""


class NotAnchored(AnchoringError):
    """The record exists but its batch is not mined yet (or it is in no batch)."""


class RecordNotFound(AnchoringError):
    """No such record in the store."""


class ReceiptRejected(RemoteProtocolError):
    """A peer's anchor receipt does not hold; `field` names the part that failed."""


class RecordRejected(RemoteProtocolError):
    """A record a peer delivered is malformed, unsigned, or not the peer's."""


#: Why a header chain of a real network is refused (`HeaderRejected.rule`).
HEADER_RULES: dict[str, str] = {
    "link": "a header's prev_hash is not the hash of the header before it",
    "checkpoint": "the chain does not hold a shipped checkpoint with its exact hash, or"
    " lacks the headers below it that judging the headers above it needs",
    "pow": "the bits are not a valid target within the network's limit, or the hash does"
    " not meet it",
    "bits": "the bits are not what the difficulty adjustment requires",
    "time-too-old": "the time is not after the median time of the 11 headers before it",
    "time-too-new": "the time is more than two hours after the verifier's clock",
    "version": "the version is below what the network requires at that height",
}


class HeaderRejected(HeadersError):
    """A header chain breaks a consensus rule or misses the checkpoints.

    `rule` is a key of `HEADER_RULES`; `height` the first header that fails, if one does.
    """

    def __init__(self, rule: str, detail: str, height: int | None = None) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail
        self.height = height
