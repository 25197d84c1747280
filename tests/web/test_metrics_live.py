"""`/metrics` of real agents, parsed by prometheus_client's own text parser, against
`mesh status --json`: bounded by two statuses while payments stream, and equal once
the stream stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.discovery.agents import RunningAgent
from tests.web.agents import ROOT_DIR, get, streaming

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    code, body = get(url + "metrics")
    assert code == 200, body[:300]
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def status_json(agent: RunningAgent) -> dict[str, Any]:
    """What `mesh status --json` prints, from the CLI itself."""
    done = subprocess.run(
        [sys.executable, "-m", "agents.cli", "status", "--json", "--data-dir", str(agent.data)],
        capture_output=True, text=True, cwd=ROOT_DIR, timeout=30, check=True,
    )  # fmt: skip
    return dict(json.loads(done.stdout))


def counters(status: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics a status implies, computed here independently of agents.web.metrics."""
    stats, node, anchoring = status["channel_stats"], status["node"], status["anchoring"]
    sold = status["sales"].get("vibration", {"orders": 0, "deliveries": 0})
    bought = status["purchases"].get("vibration", {"orders": 0, "deliveries": 0})
    return {
        ("m2mesh_payments_total", (("direction", "sent"),)): stats["payments_signed"],
        ("m2mesh_payments_total", (("direction", "received"),)): stats["payments_accepted"],
        ("m2mesh_paid_satoshis_total", ()): stats["sat_paid"],
        ("m2mesh_earned_satoshis_total", ()): stats["sat_earned"],
        ("m2mesh_packets_received_total", ()): node["packets_received"],
        ("m2mesh_records_logged_total", ()): anchoring["records_logged"],
        (
            "m2mesh_deliveries_total",
            (("service", "vibration"), ("side", "sold")),
        ): sold["deliveries"],
        (
            "m2mesh_deliveries_total",
            (("service", "vibration"), ("side", "bought")),
        ): bought["deliveries"],
    }


def test_metrics_parse_and_agree_with_mesh_status_json(tmp_path: Path) -> None:
    with streaming(tmp_path) as stream:
        for agent in (stream.buyer, stream.seller):
            url = stream.url(agent)
            before = status_json(agent)
            time.sleep(1.0)  # past the dashboard's snapshot age: the scrape is newer
            metrics = scrape(url)
            after = status_json(agent)
            low, high = counters(before), counters(after)
            for key, value in low.items():
                if high[key] == 0:
                    assert metrics.get(key, 0) == 0, key
                    continue
                assert value <= metrics[key] <= high[key], (key, value, metrics[key], high[key])
            assert metrics[("m2mesh_sessions", ())] == len(after["sessions"])
            assert metrics[("m2mesh_event_loop_lag_seconds", ())] >= 0
            assert metrics[("process_resident_memory_bytes", ())] > 10_000_000
            info = [k for k in metrics if k[0] == "m2mesh_info"]
            assert dict(info[0][1])["peer_id"] == agent.peer_id
        assert metrics[("m2mesh_paid_satoshis_total", ())] == 0  # the seller paid nothing

        stream.buyer.stop()  # the stream ends: the seller's figures stand still
        seller = stream.seller
        seller.wait(
            lambda s: all(c["state"] != "open" for c in s["channels"]), 20, "the channel closed"
        )
        time.sleep(1.0)
        status = status_json(seller)
        metrics = scrape(stream.url(seller))
        for key, value in counters(status).items():
            assert metrics.get(key, 0) == value, (key, metrics.get(key), value)
        assert metrics[("m2mesh_earned_satoshis_total", ())] > 0
        states: dict[tuple[str, str], int] = {}
        for channel in status["channels"]:
            pair = (channel["role"], channel["state"])
            states[pair] = states.get(pair, 0) + 1
        for (role, state), count in states.items():
            assert metrics[("m2mesh_channels", (("role", role), ("state", state)))] == count
        wallet = status["wallet"]["available"]
        assert metrics[("m2mesh_wallet_available_satoshis", ())] == wallet
        assert metrics[("m2mesh_storage_healthy", ())] == 1
        assert metrics[("m2mesh_storage_errors_total", ())] == status["storage"]["faults"]
