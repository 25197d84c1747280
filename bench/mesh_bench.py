"""Authenticated mesh: N real agents (`mesh run`) on one host until every buyer holds a
session with its seller.

    python -m bench mesh          (or python -m bench.mesh_bench [--quick])

Each agent is a full runtime (discovery on loopback, Noise XX handshakes bound to its
identity key, heartbeats). Agents hold sessions with their trading partners only
(`agents.partners`): here agent 0 sells a feed and every other agent wants it, so
"meshed" means every buyer's status lists a live, authenticated session with the
seller and the seller's lists all N-1 buyers. (The buyers hold no coins: the sessions
are what is measured, not the buying.) Timed from the moment the last agent answers
its control socket (so interpreter start-up on 2 cores is not counted) and,
separately, from the first spawn. The baseline is the discovery scenario's meaning of
"full mesh" measured in this run: the time until every agent's peer table lists all
the others (discovery alone, no handshakes). Target: 32 agents meshed within 5 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agents.control import ControlError, request
from bench.procs import ROOT
from bench.report import Row, Target
from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity, save_identity

SCENARIO = "mesh"
TARGET_32_S = 5.0
PROFILE = """[agent]
name = "{name}"
mailbox = "tcp://127.0.0.1:0"

[discovery]
interfaces = ["127.0.0.1"]
{body}"""
SELLS = """
[[services]]
id = "vibration"
kind = "data-feed"
unit = "reading"
price = 1
handler = "builtin:vibration"
"""
WANTS = """
[[wants]]
service = "vibration"
kind = "data-feed"
max_price = 2
units = 10
budget = 100
"""


def _status(data: Path) -> dict[str, Any] | None:
    try:
        return request(data / "control.sock", {"cmd": "status"}, timeout=5)
    except (ControlError, OSError, ValueError):
        return None


def _meshed(statuses: list[dict[str, Any] | None], n: int) -> bool:
    """The seller (agent 0) holds a session with every buyer, and each buyer one."""
    seller = statuses[0]
    return (
        seller is not None
        and len(seller["sessions"]) >= n - 1
        and all(s is not None and len(s["sessions"]) >= 1 for s in statuses[1:])
    )


def measure(n: int, work: Path, timeout: float = 120.0) -> dict[str, float]:
    """Start `n` agents; return seconds to full discovery and to full sessions."""
    ledger = work / f"ledger-{n}.db"
    LocalLedger.create(ledger).close()
    procs: list[subprocess.Popen[bytes]] = []
    dirs: list[Path] = []
    try:
        first_spawn = time.monotonic()
        for i in range(n):
            data = work / f"n{n}-a{i}"
            save_identity(Identity.generate(), data / "identity.key")
            body = SELLS if i == 0 else WANTS
            (data / "profile.toml").write_text(PROFILE.format(name=f"agent{i}", body=body))
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "agents.cli",
                        "run",
                        str(data / "profile.toml"),
                        "--data-dir",
                        str(data),
                        "--ledger",
                        str(ledger),
                    ],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            dirs.append(data)
        deadline = time.monotonic() + timeout
        up: set[int] = set()
        while len(up) < n:
            for i, data in enumerate(dirs):
                if i not in up and _status(data) is not None:
                    up.add(i)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(up)} of {n} agents came up")
            time.sleep(0.05)
        all_up = time.monotonic()
        discovered = sessions = 0.0
        while not (discovered and sessions):
            statuses = [_status(d) for d in dirs]
            now = time.monotonic()
            if all(s is not None for s in statuses):
                if not discovered and all(len(s["peers"]) >= n - 1 for s in statuses if s):
                    discovered = now
                if not sessions and _meshed(statuses, n):
                    sessions = now
            if now > deadline:
                raise RuntimeError(f"{n} agents did not mesh within {timeout} s")
            time.sleep(0.05)
        return {
            "discovered_s": discovered - all_up,
            "sessions_s": sessions - all_up,
            "from_spawn_s": sessions - first_spawn,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(quick: bool) -> list[Row]:
    """Authenticated full mesh of 2 and 8 agents (quick) or 2, 8 and 32."""
    sizes = [2, 4] if quick else [2, 8, 32]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            result = measure(n, Path(tmp))
            rows += [
                Row(
                    SCENARIO,
                    f"buyers' sessions with the seller up after last agent up, {n} agents",
                    result["sessions_s"],
                    "s",
                    max(result["discovered_s"], 1e-3),
                    "discovery alone, same agents",
                    Target(max_value=TARGET_32_S) if n == 32 else None,
                    {"agents": n},
                ),
                Row(
                    SCENARIO,
                    f"buyers' sessions with the seller up from first spawn, {n} agents",
                    result["from_spawn_s"],
                    "s",
                    params={"agents": n},
                ),
            ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(
        json.dumps(
            [
                {"metric": r.metric, "value": r.value, "baseline": r.baseline}
                for r in run(args.quick)
            ],
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
