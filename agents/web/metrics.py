"""An agent's `/metrics`: the Prometheus text format, computed at scrape time from the
agent's status snapshot (the dict `mesh status --json` prints), so the two always agree and
nothing is counted on a hot path for it. A status key that is missing or null gives no
metric, never an error. This module only reads a status dict: it never reaches into the
agent's objects and serves nothing (the dashboard's HTTP shell does).

Counters count since the agent started. Metrics (type; labels): meaning --

- `m2mesh_info` (info; agent, site, network, peer_id): who the agent is; always 1
- `m2mesh_chain_height_blocks` (gauge): the chain height the agent last saw
- `m2mesh_wallet_available_satoshis` (gauge): wallet balance free to spend
- `m2mesh_wallet_reserved_satoshis` (gauge): wallet coins reserved for transactions in flight
- `m2mesh_peers` (gauge): peers known through discovery
- `m2mesh_sessions` (gauge): open Noise sessions
- `m2mesh_handshakes_pending` (gauge): handshakes under way
- `m2mesh_handshakes_completed_total` (counter): handshakes that opened a session
- `m2mesh_handshakes_refused_total` (counter; reason=failed|evicted|timed_out|limited|
  connection_refused): handshakes and connections that did not open a session
- `m2mesh_sessions_failed_total` (counter): sessions ended by an error
- `m2mesh_packets_received_total` (counter): packets received by the transport
- `m2mesh_packets_dropped_total` (counter): packets the transport dropped
- `m2mesh_discovery_accepted_total` (counter): discovery announcements accepted
- `m2mesh_discovery_ignored_total` (counter; reason=foreign|malformed|version|instance|
  signature): discovery announcements ignored
- `m2mesh_channels` (gauge; state, role): payment channels held, by state and role
- `m2mesh_channels_held` (gauge): payment channels whose state the agent holds in memory
- `m2mesh_channels_released_total` (counter): payment channels released
- `m2mesh_channels_compacted_total` (counter): payment channels compacted
- `m2mesh_channel_commits_total` (counter): group commits of channel state
- `m2mesh_channel_commit_seconds_total` (counter): time spent in group commits
- `m2mesh_channel_records_committed_total` (counter): channel records written by commits
- `m2mesh_channel_proposals_pending` (gauge): channel proposals awaiting an answer
- `m2mesh_channel_proposals_failed_total` (counter; reason=refused|expired): channel
  proposals that did not open a channel
- `m2mesh_channel_peers_set_aside_total` (counter): peers set aside after channel faults
- `m2mesh_channel_fundings_lost_total` (counter): channel fundings lost
- `m2mesh_payments_total` (counter; direction=sent|received): payment updates signed as
  payer (sent) and accepted as payee (received)
- `m2mesh_payment_acks_total` (counter; direction=sent|received): payment acks
- `m2mesh_payment_rejections_total` (counter): payment updates rejected
- `m2mesh_paid_satoshis_total` (counter): satoshis paid by the payments sent
- `m2mesh_earned_satoshis_total` (counter): satoshis earned by the payments received
- `m2mesh_orders_total` (counter; service, side=sold|bought): orders per service
- `m2mesh_deliveries_total` (counter; service, side=sold|bought): deliveries per service
  (a reading of a data feed, a unit of a metered service), delivered or accepted
- `m2mesh_records_logged_total` (counter): records logged for anchoring
- `m2mesh_records_waiting` (gauge): records logged and not yet in a batch
- `m2mesh_anchor_batches_total` (counter; state=anchored|mined): anchor batches
  broadcast (anchored) and seen in a block (mined)
- `m2mesh_anchor_batches_waiting` (gauge; state=unanchored|unconfirmed): anchor batches
  not yet broadcast, and broadcast but not yet mined
- `m2mesh_anchor_fees_satoshis_total` (counter): fees paid for anchoring
- `m2mesh_anchor_chain_bytes_total` (counter): bytes put on chain by anchoring
- `m2mesh_receipts_requested_total` (counter): receipt requests sent as a buyer
- `m2mesh_receipts_received_total` (counter; outcome=accepted|rejected): receipts received
- `m2mesh_receipts_records_proven_total` (counter): bought records proven by receipts
- `m2mesh_receipts_requests_total` (counter; outcome=answered|refused|throttled): receipt
  requests from buyers
- `m2mesh_receipts_sent_total` (counter): receipts sent as a producer
- `m2mesh_storage_healthy` (gauge): 1 while the agent's storage works, else 0
- `m2mesh_storage_errors_total` (counter): storage faults
- `m2mesh_event_loop_lag_seconds` (gauge): the Trio event loop's last measured lag
- `m2mesh_event_loop_lag_max_seconds` (gauge): the largest lag since the agent started

Unless `process=False`, prometheus_client's `process_*` metrics (CPU, memory, files) follow.
(docs/ARCHITECTURE.md §6.2)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["CONTENT_TYPE", "METRICS", "StatusCollector", "make_registry", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST  # what `render` returns, for the HTTP answer
Status = dict[str, Any]
Sample = tuple[tuple[str, ...], float]
Kind = Literal["counter", "gauge", "info"]
INFO_LABELS = ("agent", "site", "network", "peer_id")


def _num(value: object) -> float | None:
    """A status field as a number; None if missing, null or not a number (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _section(status: Status, key: str) -> dict[str, Any]:
    value = status.get(key)
    return value if isinstance(value, dict) else {}


def _field(section: str | None, key: str) -> Callable[[Status], list[Sample]]:
    """One unlabelled sample: `status[section][key]` (or `status[key]`)."""

    def samples(status: Status) -> list[Sample]:
        value = _num((status if section is None else _section(status, section)).get(key))
        return [] if value is None else [((), value)]

    return samples


def _fields(section: str, **keys: str) -> Callable[[Status], list[Sample]]:
    """One sample per label value, from the field of `status[section]` it names."""

    def samples(status: Status) -> list[Sample]:
        fields = _section(status, section)
        found = [((label,), _num(fields.get(key))) for label, key in keys.items()]
        return [(labels, value) for labels, value in found if value is not None]

    return samples


def _length(key: str) -> Callable[[Status], list[Sample]]:
    """How many entries the list `status[key]` holds."""

    def samples(status: Status) -> list[Sample]:
        value = status.get(key)
        return [((), float(len(value)))] if isinstance(value, list) else []

    return samples


def _trades(key: str) -> Callable[[Status], list[Sample]]:
    """`key` of each service in `sales` (side "sold") and `purchases` (side "bought")."""

    def samples(status: Status) -> list[Sample]:
        found: list[Sample] = []
        for side, section in (("sold", "sales"), ("bought", "purchases")):
            for service, counts in sorted(_section(status, section).items()):
                value = _num(counts.get(key)) if isinstance(counts, dict) else None
                if value is not None:
                    found.append(((str(service), side), value))
        return found

    return samples


def _channels(status: Status) -> list[Sample]:
    channels = status.get("channels")
    held = [c for c in channels if isinstance(c, dict)] if isinstance(channels, list) else []
    seen = Counter((str(c.get("state")), str(c.get("role"))) for c in held)
    return [(labels, float(n)) for labels, n in sorted(seen.items())]


def _healthy(status: Status) -> list[Sample]:
    healthy = _section(status, "storage").get("healthy")
    return [((), 1.0 if healthy else 0.0)] if isinstance(healthy, bool) else []


def _info(status: Status) -> list[Sample]:
    if all(status.get(key) is None for key in INFO_LABELS):
        return []
    values = tuple("" if status.get(key) is None else str(status[key]) for key in INFO_LABELS)
    return [(values, 1.0)]


@dataclass(frozen=True)
class _Spec:
    name: str  # as exposed: a counter's ends `_total`, the info's `_info`
    kind: Kind
    help: str
    samples: Callable[[Status], list[Sample]]
    labels: tuple[str, ...] = ()


_C: Final = "counter"
_G: Final = "gauge"
_CS = "channel_stats"
_SPECS: tuple[_Spec, ...] = (
    _Spec("m2mesh_info", "info", "Who the agent is; always 1.", _info, INFO_LABELS),
    _Spec("m2mesh_chain_height_blocks", _G, "Chain height last seen.", _field(None, "height")),
    _Spec("m2mesh_wallet_available_satoshis", _G, "Wallet balance free to spend.",
          _field("wallet", "available")),
    _Spec("m2mesh_wallet_reserved_satoshis", _G, "Wallet coins reserved for transactions.",
          _field("wallet", "reserved")),
    _Spec("m2mesh_peers", _G, "Peers known through discovery.", _length("peers")),
    _Spec("m2mesh_sessions", _G, "Open Noise sessions.", _length("sessions")),
    _Spec("m2mesh_handshakes_pending", _G, "Handshakes under way.",
          _field("node", "pending_handshakes")),
    _Spec("m2mesh_handshakes_completed_total", _C, "Handshakes that opened a session.",
          _field("node", "handshakes_completed")),
    _Spec("m2mesh_handshakes_refused_total", _C, "Handshakes and connections refused.",
          _fields("node", failed="handshakes_failed", evicted="handshakes_evicted",
                  timed_out="handshakes_timed_out", limited="handshakes_limited",
                  connection_refused="connections_refused"), ("reason",)),
    _Spec("m2mesh_sessions_failed_total", _C, "Sessions ended by an error.",
          _field("node", "sessions_failed")),
    _Spec("m2mesh_packets_received_total", _C, "Packets received by the transport.",
          _field("node", "packets_received")),
    _Spec("m2mesh_packets_dropped_total", _C, "Packets the transport dropped.",
          _field("node", "packets_dropped")),
    _Spec("m2mesh_discovery_accepted_total", _C, "Discovery announcements accepted.",
          _field("discovery", "accepted")),
    _Spec("m2mesh_discovery_ignored_total", _C, "Discovery announcements ignored.",
          _fields("discovery", foreign="ignored_foreign", malformed="rejected_malformed",
                  version="rejected_version", instance="rejected_instance",
                  signature="rejected_signature"), ("reason",)),
    _Spec("m2mesh_channels", _G, "Payment channels held.", _channels, ("state", "role")),
    _Spec("m2mesh_channels_held", _G, "Payment channels whose state is held in memory.",
          _field(_CS, "channels")),
    _Spec("m2mesh_channels_released_total", _C, "Payment channels released.",
          _field(_CS, "channels_released")),
    _Spec("m2mesh_channels_compacted_total", _C, "Payment channels compacted.",
          _field(_CS, "channels_compacted")),
    _Spec("m2mesh_channel_commits_total", _C, "Group commits of channel state.",
          _field(_CS, "commits")),
    _Spec("m2mesh_channel_commit_seconds_total", _C, "Time spent in group commits.",
          _field(_CS, "commit_seconds")),
    _Spec("m2mesh_channel_records_committed_total", _C, "Channel records written by commits.",
          _field(_CS, "records_committed")),
    _Spec("m2mesh_channel_proposals_pending", _G, "Channel proposals awaiting an answer.",
          _field(_CS, "proposals_pending")),
    _Spec("m2mesh_channel_proposals_failed_total", _C, "Channel proposals that failed.",
          _fields(_CS, refused="proposals_refused", expired="proposals_expired"), ("reason",)),
    _Spec("m2mesh_channel_peers_set_aside_total", _C, "Peers set aside after channel faults.",
          _field(_CS, "peers_set_aside")),
    _Spec("m2mesh_channel_fundings_lost_total", _C, "Channel fundings lost.",
          _field(_CS, "fundings_lost")),
    _Spec("m2mesh_payments_total", _C, "Payment updates signed as payer or accepted as payee.",
          _fields(_CS, sent="payments_signed", received="payments_accepted"), ("direction",)),
    _Spec("m2mesh_payment_acks_total", _C, "Payment acks.",
          _fields(_CS, sent="acks_sent", received="acks_received"), ("direction",)),
    _Spec("m2mesh_payment_rejections_total", _C, "Payment updates rejected.",
          _field(_CS, "rejections")),
    _Spec("m2mesh_paid_satoshis_total", _C, "Satoshis paid.", _field(_CS, "sat_paid")),
    _Spec("m2mesh_earned_satoshis_total", _C, "Satoshis earned.", _field(_CS, "sat_earned")),
    _Spec("m2mesh_orders_total", _C, "Orders per service.", _trades("orders"),
          ("service", "side")),
    _Spec("m2mesh_deliveries_total", _C, "Readings or units delivered or accepted.",
          _trades("deliveries"), ("service", "side")),
    _Spec("m2mesh_records_logged_total", _C, "Records logged for anchoring.",
          _field("anchoring", "records_logged")),
    _Spec("m2mesh_records_waiting", _G, "Records not yet in an anchor batch.",
          _field("anchoring", "records_waiting")),
    _Spec("m2mesh_anchor_batches_total", _C, "Anchor batches broadcast or mined.",
          _fields("anchoring", anchored="batches_anchored", mined="batches_mined"), ("state",)),
    _Spec("m2mesh_anchor_batches_waiting", _G, "Anchor batches not broadcast or not mined.",
          _fields("anchoring", unanchored="batches_unanchored",
                  unconfirmed="batches_unconfirmed"), ("state",)),
    _Spec("m2mesh_anchor_fees_satoshis_total", _C, "Fees paid for anchoring.",
          _field("anchoring", "fees_paid")),
    _Spec("m2mesh_anchor_chain_bytes_total", _C, "Bytes put on chain by anchoring.",
          _field("anchoring", "bytes_on_chain")),
    _Spec("m2mesh_receipts_requested_total", _C, "Receipt requests sent as a buyer.",
          _field("receipts", "requests_sent")),
    _Spec("m2mesh_receipts_received_total", _C, "Receipts received.",
          _fields("receipts", accepted="receipts_accepted", rejected="receipts_rejected"),
          ("outcome",)),
    _Spec("m2mesh_receipts_records_proven_total", _C, "Bought records proven by receipts.",
          _field("receipts", "records_proven")),
    _Spec("m2mesh_receipts_requests_total", _C, "Receipt requests from buyers.",
          _fields("receipts", answered="requests_answered", refused="requests_refused",
                  throttled="requests_throttled"), ("outcome",)),
    _Spec("m2mesh_receipts_sent_total", _C, "Receipts sent as a producer.",
          _field("receipts", "receipts_sent")),
    _Spec("m2mesh_storage_healthy", _G, "1 while storage works, else 0.", _healthy),
    _Spec("m2mesh_storage_errors_total", _C, "Storage faults.", _field("storage", "faults")),
    _Spec("m2mesh_event_loop_lag_seconds", _G, "The event loop's last measured lag.",
          _field("loop", "lag_seconds")),
    _Spec("m2mesh_event_loop_lag_max_seconds", _G, "The event loop's largest lag.",
          _field("loop", "lag_max_seconds")),
)  # fmt: skip
METRICS: tuple[tuple[str, str, str], ...] = tuple((s.name, s.kind, s.help) for s in _SPECS)


def _family(spec: _Spec, samples: list[Sample]) -> Metric:
    if spec.kind == "info":
        info = InfoMetricFamily(spec.name.removesuffix("_info"), spec.help)
        for values, _ in samples:
            info.add_metric([], dict(zip(spec.labels, values, strict=True)))
        return info
    family: CounterMetricFamily | GaugeMetricFamily
    if spec.kind == "counter":
        family = CounterMetricFamily(
            spec.name.removesuffix("_total"), spec.help, labels=spec.labels
        )
    else:
        family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class StatusCollector(Collector):
    """The agent's metrics, read from the status `latest()` returns at each scrape (None: none)."""

    def __init__(self, latest: Callable[[], Status | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        """One family per metric the status has a value for."""
        status = self._latest()
        if status is None:
            return
        for spec in _SPECS:
            samples = spec.samples(status)
            if samples:
                yield _family(spec, samples)


def make_registry(
    latest: Callable[[], Status | None], *, process: bool = True
) -> CollectorRegistry:
    """A private registry (never the global one) for a live agent's `/metrics`; with
    `process`, the `process_*` metrics of this process too."""
    registry = CollectorRegistry()
    registry.register(StatusCollector(latest))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(status: Status, *, process: bool = True) -> bytes:
    """`status` in the Prometheus text format (`CONTENT_TYPE`), with this process's
    `process_*` metrics unless `process` is False (a status that is not this process's)."""
    return generate_latest(make_registry(lambda: status, process=process))
