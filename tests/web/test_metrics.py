"""`/metrics` from a status snapshot: every value is the status field it comes from, a
missing or null key gives no metric, and the docstring lists exactly what is exposed."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.web import metrics
from agents.web.metrics import METRICS, StatusCollector, make_registry, render

Key = tuple[str, frozenset[tuple[str, str]]]

# A real `mesh status --json` (fields no metric reads left out), then the keys added with
# `/metrics`. Counters that are 0 in a quiet run are set apart so that a swap shows.
SAMPLE: dict[str, Any] = {
    "agent": "Vibration Sensor 7",
    "site": "demo-b976804e",
    "network": "2e809f800d04e183f3d836d3f118533b0a03598d113062b1cfbf8597cf36ea28",
    "height": 13,
    "peer_id": "038fa3ee44600a5518dd8e28f9d5acb41313e79a7274b67cc8b10a4848837d5b4c",
    "discovery": {
        "peers": 1, "accepted": 4, "rejected_malformed": 0, "rejected_version": 0,
        "rejected_instance": 0, "rejected_signature": 0, "ignored_foreign": 0,
        "resolve_failures": 0, "goodbyes": 2, "expired": 0, "events_dropped": 0,
    },
    "peers": [{"peer_id": "02de9f", "name": "Quality Lab", "confirmed": True}],
    "sessions": ["02de9f", "029107"],
    "node": {
        "sessions": 2, "pending_handshakes": 0, "outboxes": 2, "handshakes_completed": 3,
        "handshakes_failed": 0, "handshakes_evicted": 0, "handshakes_timed_out": 0,
        "handshakes_limited": 0, "connections_refused": 0, "outboxes_lost": 0,
        "sessions_failed": 0, "packets_dropped": 0, "packets_received": 130,
    },
    "channels": [{"channel_id": "c245", "role": "payee", "state": "closed", "total": 100}],
    "anchoring": {
        "records_logged": 102, "records_waiting": 2, "batches_anchored": 2,
        "batches_unanchored": 0, "batches_unconfirmed": 0, "batches_mined": 2,
        "fees_paid": 2, "bytes_on_chain": 646, "last_error": "",
    },
    "storage": {"healthy": True, "reason": None, "since": None, "faults": 0},
    "receipts": {
        "requests_sent": 0, "receipts_accepted": 0, "receipts_rejected": 0,
        "records_proven": 0, "requests_answered": 8, "requests_refused": 0,
        "requests_throttled": 0, "receipts_sent": 2,
    },
    "wallet": {"available": 5096, "reserved": 0},
}  # fmt: skip
CHANNEL_STATS_KEYS = [
    "channels", "commits", "records_committed", "payments_signed", "payments_accepted",
    "acks_sent", "acks_received", "rejections", "proposals_pending", "proposals_refused",
    "proposals_expired", "peers_set_aside", "fundings_lost", "channels_released",
    "channels_compacted", "sat_paid", "sat_earned",
]  # fmt: skip
CHANNEL_STATS = {key: n for n, key in enumerate(CHANNEL_STATS_KEYS, start=101)}


def full_status() -> dict[str, Any]:
    """The sample with every key `/metrics` reads, each counter a distinct value."""
    status = copy.deepcopy(SAMPLE)
    for n, key in enumerate(sorted(status["node"]), start=1):
        status["node"][key] = n
    for n, key in enumerate(sorted(status["discovery"]), start=21):
        status["discovery"][key] = n
    for n, key in enumerate(sorted(status["receipts"]), start=41):
        status["receipts"][key] = n
    status["channels"] += [
        {"channel_id": "c2", "role": "payer", "state": "open"},
        {"channel_id": "c3", "role": "payer", "state": "open"},
        {"channel_id": "c4", "role": "payee", "state": "open"},
    ]
    status["anchoring"].update(batches_unanchored=3, batches_unconfirmed=4, last_txid="ab")
    status["storage"] = {"healthy": False, "reason": "disk full", "since": 1.0, "faults": 7}
    status["wallet"]["reserved"] = 210
    status["channel_stats"] = dict(CHANNEL_STATS, commit_seconds=0.375)
    status["sales"] = {"vibration": {"orders": 5, "deliveries": 500}}
    status["purchases"] = {
        "inspection": {"orders": 2, "deliveries": 20},
        "vibration": {"orders": 1, "deliveries": 9},
    }
    status["loop"] = {"lag_seconds": 0.0125, "lag_max_seconds": 0.5}
    status["dashboard"] = "http://127.0.0.1:8080/"
    return status


def scrape(status: dict[str, Any], *, process: bool = False) -> dict[Key, float]:
    """What a Prometheus server would store: each sample's name and labels to its value."""
    text = render(status, process=process).decode()
    found: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"{key} exposed twice"
            found[key] = sample.value
    return found


def expected(status: dict[str, Any]) -> dict[Key, float]:
    """Each metric from the status field it comes from, written out apart from the module."""

    def k(name: str, **labels: str) -> Key:
        return (name, frozenset(labels.items()))

    node, disc, anch = status["node"], status["discovery"], status["anchoring"]
    cs, rec = status["channel_stats"], status["receipts"]
    want = {
        k("m2mesh_info", agent=status["agent"], site=status["site"], network=status["network"],
          peer_id=status["peer_id"]): 1.0,
        k("m2mesh_chain_height_blocks"): status["height"],
        k("m2mesh_wallet_available_satoshis"): status["wallet"]["available"],
        k("m2mesh_wallet_reserved_satoshis"): status["wallet"]["reserved"],
        k("m2mesh_peers"): len(status["peers"]),
        k("m2mesh_sessions"): len(status["sessions"]),
        k("m2mesh_handshakes_pending"): node["pending_handshakes"],
        k("m2mesh_handshakes_completed_total"): node["handshakes_completed"],
        k("m2mesh_sessions_failed_total"): node["sessions_failed"],
        k("m2mesh_packets_received_total"): node["packets_received"],
        k("m2mesh_packets_dropped_total"): node["packets_dropped"],
        k("m2mesh_discovery_accepted_total"): disc["accepted"],
        k("m2mesh_channels_held"): cs["channels"],
        k("m2mesh_channels_released_total"): cs["channels_released"],
        k("m2mesh_channels_compacted_total"): cs["channels_compacted"],
        k("m2mesh_channel_commits_total"): cs["commits"],
        k("m2mesh_channel_commit_seconds_total"): cs["commit_seconds"],
        k("m2mesh_channel_records_committed_total"): cs["records_committed"],
        k("m2mesh_channel_proposals_pending"): cs["proposals_pending"],
        k("m2mesh_channel_proposals_failed_total", reason="refused"): cs["proposals_refused"],
        k("m2mesh_channel_proposals_failed_total", reason="expired"): cs["proposals_expired"],
        k("m2mesh_channel_peers_set_aside_total"): cs["peers_set_aside"],
        k("m2mesh_channel_fundings_lost_total"): cs["fundings_lost"],
        k("m2mesh_payments_total", direction="sent"): cs["payments_signed"],
        k("m2mesh_payments_total", direction="received"): cs["payments_accepted"],
        k("m2mesh_payment_acks_total", direction="sent"): cs["acks_sent"],
        k("m2mesh_payment_acks_total", direction="received"): cs["acks_received"],
        k("m2mesh_payment_rejections_total"): cs["rejections"],
        k("m2mesh_paid_satoshis_total"): cs["sat_paid"],
        k("m2mesh_earned_satoshis_total"): cs["sat_earned"],
        k("m2mesh_records_logged_total"): anch["records_logged"],
        k("m2mesh_records_waiting"): anch["records_waiting"],
        k("m2mesh_anchor_batches_total", state="anchored"): anch["batches_anchored"],
        k("m2mesh_anchor_batches_total", state="mined"): anch["batches_mined"],
        k("m2mesh_anchor_batches_waiting", state="unanchored"): anch["batches_unanchored"],
        k("m2mesh_anchor_batches_waiting", state="unconfirmed"): anch["batches_unconfirmed"],
        k("m2mesh_anchor_fees_satoshis_total"): anch["fees_paid"],
        k("m2mesh_anchor_chain_bytes_total"): anch["bytes_on_chain"],
        k("m2mesh_receipts_requested_total"): rec["requests_sent"],
        k("m2mesh_receipts_received_total", outcome="accepted"): rec["receipts_accepted"],
        k("m2mesh_receipts_received_total", outcome="rejected"): rec["receipts_rejected"],
        k("m2mesh_receipts_records_proven_total"): rec["records_proven"],
        k("m2mesh_receipts_requests_total", outcome="answered"): rec["requests_answered"],
        k("m2mesh_receipts_requests_total", outcome="refused"): rec["requests_refused"],
        k("m2mesh_receipts_requests_total", outcome="throttled"): rec["requests_throttled"],
        k("m2mesh_receipts_sent_total"): rec["receipts_sent"],
        k("m2mesh_storage_healthy"): 1.0 if status["storage"]["healthy"] else 0.0,
        k("m2mesh_storage_errors_total"): status["storage"]["faults"],
        k("m2mesh_event_loop_lag_seconds"): status["loop"]["lag_seconds"],
        k("m2mesh_event_loop_lag_max_seconds"): status["loop"]["lag_max_seconds"],
    }  # fmt: skip
    for reason, field in [("failed", "handshakes_failed"), ("evicted", "handshakes_evicted"),
                          ("timed_out", "handshakes_timed_out"),
                          ("limited", "handshakes_limited"),
                          ("connection_refused", "connections_refused")]:  # fmt: skip
        want[k("m2mesh_handshakes_refused_total", reason=reason)] = node[field]
    for reason, field in [("foreign", "ignored_foreign"), ("malformed", "rejected_malformed"),
                          ("version", "rejected_version"), ("instance", "rejected_instance"),
                          ("signature", "rejected_signature")]:  # fmt: skip
        want[k("m2mesh_discovery_ignored_total", reason=reason)] = disc[field]
    for channel in status["channels"]:
        key = k("m2mesh_channels", state=channel["state"], role=channel["role"])
        want[key] = want.get(key, 0) + 1
    for side, section in (("sold", "sales"), ("bought", "purchases")):
        for service, counts in status[section].items():
            want[k("m2mesh_orders_total", service=service, side=side)] = counts["orders"]
            want[k("m2mesh_deliveries_total", service=service, side=side)] = counts["deliveries"]
    return {key: float(value) for key, value in want.items()}


def test_every_value_is_its_status_field() -> None:
    status = full_status()
    got = scrape(status)
    assert got == expected(status)
    # the oracle itself is not vacuous: counted channels, distinct counters, fractions
    assert got[("m2mesh_channels", frozenset({("state", "open"), ("role", "payer")}))] == 2.0
    assert got[("m2mesh_channels", frozenset({("state", "closed"), ("role", "payee")}))] == 1.0
    assert got[("m2mesh_payments_total", frozenset({("direction", "sent")}))] == 104.0
    assert got[("m2mesh_payments_total", frozenset({("direction", "received")}))] == 105.0
    assert got[("m2mesh_event_loop_lag_seconds", frozenset())] == 0.0125
    assert got[("m2mesh_storage_healthy", frozenset())] == 0.0


def test_the_real_sample_renders_its_values() -> None:
    got = scrape(SAMPLE)
    assert got[("m2mesh_packets_received_total", frozenset())] == 130.0
    assert got[("m2mesh_receipts_requests_total", frozenset({("outcome", "answered")}))] == 8.0
    assert got[("m2mesh_storage_healthy", frozenset())] == 1.0
    new = ("m2mesh_payments_total", "m2mesh_orders_total", "m2mesh_event_loop_lag_seconds")
    assert not [name for name, _ in got if name in new]  # not in this status: not exposed


FROM_CHANNEL_STATS = {
    "m2mesh_channels_held", "m2mesh_channels_released_total",
    "m2mesh_channels_compacted_total", "m2mesh_channel_commits_total",
    "m2mesh_channel_commit_seconds_total", "m2mesh_channel_records_committed_total",
    "m2mesh_channel_proposals_pending", "m2mesh_channel_proposals_failed_total",
    "m2mesh_channel_peers_set_aside_total", "m2mesh_channel_fundings_lost_total",
    "m2mesh_payments_total", "m2mesh_payment_acks_total", "m2mesh_payment_rejections_total",
    "m2mesh_paid_satoshis_total", "m2mesh_earned_satoshis_total",
}  # fmt: skip
FROM_KEY: dict[str, Callable[[Key], bool]] = {
    "channel_stats": lambda key: key[0] in FROM_CHANNEL_STATS,
    "sales": lambda key: ("side", "sold") in key[1],
    "purchases": lambda key: ("side", "bought") in key[1],
    "loop": lambda key: key[0].startswith("m2mesh_event_loop_"),
    "dashboard": lambda key: False,
}


@pytest.mark.parametrize("key", sorted(FROM_KEY))
@pytest.mark.parametrize("how", ["missing", "null"])
def test_a_missing_or_null_key_gives_no_metric(key: str, how: str) -> None:
    status = full_status()
    if how == "missing":
        del status[key]
    else:
        status[key] = None
    full = scrape(full_status())
    kept = {k: v for k, v in full.items() if not FROM_KEY[key](k)}
    assert scrape(status) == kept
    assert len(kept) < len(full) or key == "dashboard"


def test_null_node_and_anchoring_and_an_empty_status() -> None:
    status = full_status()
    status["node"] = None
    status["anchoring"] = None
    names = {name for name, _ in scrape(status)}
    assert not {n for n in names if "handshake" in n or "packets" in n or "anchor" in n}
    assert "m2mesh_records_logged_total" not in names
    assert "m2mesh_sessions_failed_total" not in names
    assert "m2mesh_sessions" in names  # from the sessions list, not the node
    assert scrape({"peers": [], "sessions": []}) == {
        ("m2mesh_peers", frozenset()): 0.0,
        ("m2mesh_sessions", frozenset()): 0.0,
    }
    assert scrape({}) == {}
    assert render({}, process=False) == b""


def test_odd_shapes_are_skipped_not_raised() -> None:
    status = full_status()
    status["channel_stats"] = "not a dict"
    status["sales"] = {"vibration": None, "feed": {"orders": True, "deliveries": "7"}}
    status["storage"] = {"healthy": None, "faults": None}
    status["channels"] = [None, {"state": "open", "role": "payer"}]
    got = scrape(status)
    names = {name for name, _ in got}
    assert "m2mesh_payments_total" not in names
    assert "m2mesh_storage_healthy" not in names
    assert "m2mesh_storage_errors_total" not in names
    sold = [key for key in got if ("side", "sold") in key[1]]
    assert sold == []
    channels = {key: v for key, v in got.items() if key[0] == "m2mesh_channels"}
    assert channels == {("m2mesh_channels", frozenset({("state", "open"), ("role", "payer")})): 1}


def test_every_metric_is_exposed_with_its_type_for_a_full_status() -> None:
    text = render(full_status(), process=False).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind, help_text in METRICS:
        family = name.removesuffix("_total") if kind == "counter" else name
        assert types.get(family) == ("gauge" if kind == "info" else kind), name
        assert f"# HELP {name} {help_text}\n" in text
    assert len(types) == len(METRICS)


def test_names_follow_the_conventions() -> None:
    names = [name for name, _, _ in METRICS]
    assert len(set(names)) == len(names)
    for name, kind, help_text in METRICS:
        assert re.fullmatch(r"m2mesh_[a-z_]+", name), name
        assert name.endswith("_total") == (kind == "counter"), name
        assert help_text.endswith("."), name
    # a counter `x_total` and a gauge `x` are one family to OpenMetrics and the parser
    families = [name.removesuffix("_total") for name in names]
    assert len(set(families)) == len(families)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process_* needs /proc")
def test_process_metrics_come_along_and_names_are_prefixed() -> None:
    names = {name for name, _ in scrape(full_status(), process=True)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert all(name.startswith(("m2mesh_", "process_")) for name in names), names
    assert not {name for name, _ in scrape(full_status()) if name.startswith("process_")}
    assert b"\nprocess_cpu_seconds_total " in render({})  # on by default: the agent's own


def test_the_collector_reads_the_latest_status_at_each_scrape() -> None:
    latest: list[dict[str, Any] | None] = [None]
    registry = make_registry(lambda: latest[0], process=False)
    assert generate_latest(registry) == b""
    latest[0] = {"height": 14}
    assert generate_latest(registry).endswith(b"\nm2mesh_chain_height_blocks 14.0\n")
    latest[0] = {"height": 15}
    assert b"m2mesh_chain_height_blocks 15.0" in generate_latest(registry)
    assert [m.name for m in StatusCollector(lambda: {"height": 1}).collect()] == [
        "m2mesh_chain_height_blocks"
    ]


def test_the_docstring_lists_exactly_the_metrics() -> None:
    doc = metrics.__doc__ or ""
    listed = re.findall(r"^- `(m2mesh_\w+)` \((\w+)", doc, flags=re.MULTILINE)
    assert listed == [(name, kind) for name, kind, _ in METRICS]
