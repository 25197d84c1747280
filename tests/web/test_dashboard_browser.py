"""The dashboard in a real browser: headless Debian Chromium opens the agents' own
pages while a payment stream runs, sees the values move, and saves a screenshot; the
site page of `mesh up` shows every agent. Real `mesh run` / `mesh up` processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mesh.certs import issue, type_id
from mesh.identity import Identity
from tests.web.agents import ROOT_DIR, get_json, streaming
from tests.web.browser import chromium, need_chromium, until


def number(driver: Any, element_id: str) -> int:
    """An element's text as an integer (thousands separators and units dropped)."""
    text = driver.find_element("id", element_id).text
    digits = re.sub(r"[^\d-]", "", text.split(".")[0])
    return int(digits) if digits not in ("", "-") else -1


def text(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def keep_screenshot(driver: Any, path: Path, name: str) -> None:
    """Save a screenshot; also into $M2MESH_SCREENSHOTS (how docs/ images are made)."""
    assert driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    where = os.environ.get("M2MESH_SCREENSHOTS")
    if where:
        shutil.copy(path, Path(where) / name)


def test_the_dashboard_shows_a_payment_stream_live_in_chromium(tmp_path: Path) -> None:
    need_chromium()
    with streaming(tmp_path) as stream, chromium() as driver:
        url = stream.url(stream.buyer)
        driver.get(url)
        load_ms = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            " return n.loadEventEnd - n.startTime;"
        )
        assert 0 < load_ms < 1000, load_ms
        until(lambda: text(driver, "connection") == "live", 10, "the page's events live")
        assert text(driver, "agent-name") == "buyer"
        assert text(driver, "peer-id").replace("…", "") in stream.buyer.peer_id
        first = until(lambda: max(0, number(driver, "payments-total")), 10, "payments shown")
        second = until(
            lambda: (n := number(driver, "payments-total")) > first and n, 5, "payments moving"
        )
        until(lambda: number(driver, "payments-total") > second, 5, "payments moving on")
        until(lambda: number(driver, "payments-rate") > 0, 10, "a payment rate")
        until(lambda: "open" in text(driver, "channels-table"), 5, "the open channel")
        assert "vibration" in text(driver, "wants-table")
        assert "seller" in text(driver, "peers-table")
        # The server's own figure, a moment later, is at least what the page showed.
        status = get_json(url + "api/status")
        shown = number(driver, "payments-total")
        stats = status["channel_stats"]
        assert shown <= stats["payments_signed"] + stats["payments_accepted"] + 40
        time.sleep(1.5)  # the chart has a few points
        keep_screenshot(driver, tmp_path / "dashboard.png", "dashboard.png")

        driver.get(stream.url(stream.seller))  # the seller: readings sold, money earned
        until(lambda: text(driver, "connection") == "live", 10, "the seller's page live")
        sold = until(lambda: max(0, number(driver, "readings-total")), 10, "readings shown")
        until(lambda: number(driver, "readings-total") > sold, 5, "readings moving")
        until(lambda: number(driver, "sat-earned") > 0, 5, "satoshis earned")
        assert "vibration" in text(driver, "services-table")


def test_the_dashboard_shows_what_a_peer_proved_and_only_that(tmp_path: Path) -> None:
    """The seller proves its calibration to the buyer: the buyer's page shows the
    calibration date and not the owner; the seller's page shows what it holds."""
    need_chromium()
    lab, seller = Identity.generate(), Identity.generate()
    (tmp_path / "seller").mkdir()
    values = {"calibrated_until": "2099-01-01", "owner": "ACME Leasing"}
    issued = issue(lab.key, seller.key.public_key(), type_id("m2mesh.calibration"), values)
    (tmp_path / "seller" / "cert.json").write_text(json.dumps(issued.to_json()))
    held = '\n[[certificates]]\nfile = "cert.json"\ndisclose = ["calibrated_until"]\n'
    required = (
        'require = "calibrated"\n\n[requirements.calibrated]\ntype = "m2mesh.calibration"\n'
        f'certifiers = ["{lab.peer_id}"]\nreveal = ["calibrated_until"]\n'
    )
    with (
        streaming(tmp_path, held, required, seller_identity=seller) as stream,
        chromium() as driver,
    ):
        driver.get(stream.url(stream.buyer))
        until(lambda: "proved" in text(driver, "certs-table"), 10, "the proof shown")
        shown = text(driver, "certs-table")
        assert "calibrated_until = 2099-01-01" in shown and "ACME" not in shown, shown
        assert "seller" in shown and "calibrated" in shown
        driver.get(stream.url(stream.seller))
        until(lambda: "owner" in text(driver, "held-table"), 10, "the held certificate")
        assert "calibrated_until" in text(driver, "held-table")


PROFILES = ROOT_DIR / "profiles"


def test_mesh_up_prints_one_url_that_shows_every_agent(tmp_path: Path) -> None:
    need_chromium()
    sensor = tmp_path / "line-sensor.toml"
    sensor.write_text((PROFILES / "vibration-sensor.toml").read_text())
    logger = tmp_path / "logger.toml"
    logger.write_text(
        '[agent]\nname = "Data Logger"\n\n[discovery]\ninterfaces = ["127.0.0.1"]\n\n'
        '[[wants]]\nservice = "vibration"\nkind = "data-feed"\ntick = 0.05\nmax_price = 2\n'
        "units = 300\nbudget = 600\nprepay = 2\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "up", str(sensor), str(logger), "--seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT_DIR,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("site view: "):
                url = line.split()[-1]
                break
        else:
            raise AssertionError("no site view URL:\n" + "".join(seen))
        with chromium() as driver:
            driver.get(url)
            until(lambda: text(driver, "connection") == "live", 15, "the site page live")
            rows = until(
                lambda: (
                    len(driver.find_elements("css selector", "#site-agents [data-agent]")) == 2
                    and driver.find_elements("css selector", "#site-agents [data-agent]")
                ),
                20,
                "a row per agent",
            )
            assert {r.get_attribute("data-agent") for r in rows} == {
                "line-sensor",
                "logger",
            }
            links = until(
                lambda: [
                    a.get_attribute("href")
                    for a in driver.find_elements("css selector", "#site-agents a[href]")
                    if a.get_attribute("href").startswith("http://127.0.0.1:")
                ],
                20,
                "links to the agents' dashboards",
            )
            assert len(set(links)) == 2, links
            site = get_json(url + "api/site")
            assert {a["name"] for a in site["agents"]} == {"line-sensor", "logger"}
            assert sorted(links) == sorted(a["dashboard"] for a in site["agents"])
            keep_screenshot(driver, tmp_path / "site.png", "site.png")
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
