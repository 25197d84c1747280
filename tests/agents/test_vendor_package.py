"""The example vendor package as a vendor ships it: pip installs examples/acme-printer
into a fresh virtual environment, the package's entry points name its handlers there,
its profile loads, and a real `mesh run` of that profile sells print time and nozzle
readings to another agent over a real channel.

How the fresh venv gets m2mesh: m2mesh is on no package index, so a ``.pth`` file in
the venv adds this project's site-packages (m2mesh, installed as the README says, its
dependencies, pip and setuptools) *behind* the venv's own. The example reaches the venv
only through pip: pip builds a wheel from a copy of it and installs that into the
venv's own site-packages (``--ignore-installed``: a copy the developer installed into
the project's venv is never taken for it), and the agent runs with no PYTHONPATH from a
folder that does not hold the package. The test checks that the entry points and the
handlers the agent runs come from the venv's site-packages.

Building a wheel needs setuptools 70.1 or newer (older ones need the `wheel` package
too). Where this project's venv has no such backend, pip first installs a newer
setuptools into the fresh venv from the package index it is configured with; otherwise
everything runs offline (``--no-index --no-build-isolation``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import pytest

from agents.control import ControlError, request
from agents.services.vendor import installed_handlers
from mesh.chain.ledger import LocalLedger
from mesh.identity import Identity, save_identity
from tests.discovery.agents import RunningAgent, sessions

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "acme-printer"
PROFILE = EXAMPLE / "printer.toml"
BUYER_PROFILE = EXAMPLE / "buyer.toml"
BACKEND = "setuptools>=70.1"
"""A build backend that builds wheels by itself."""
HAS_BACKEND = """
import importlib.util, sys
found = [importlib.util.find_spec(m) for m in ("setuptools.command.bdist_wheel", "wheel")]
sys.exit(0 if any(found) else 1)
"""
SEEN = """
import json, sys
from importlib.metadata import distribution, entry_points, requires
from pathlib import Path

import acme_printer.handlers
from agents.profile import load_profile
from agents.services.vendor import ToolHandler, resolve

services = []
for s in load_profile(Path(sys.argv[1])).services:
    handler = resolve(s.handler, s.kind)
    code = handler.run if isinstance(handler, ToolHandler) else handler.read
    services.append([s.id, s.kind, s.handler, code.__module__])
acme = [ep for ep in entry_points(group="m2mesh.services") if ep.name.startswith("acme-")]
print(json.dumps({
    "entry_points": {ep.name: [ep.value, str(ep.dist.locate_file(""))] for ep in acme},
    "module": acme_printer.handlers.__file__,
    "requires": requires("acme-printer"),
    "m2mesh": distribution("m2mesh").version,
    "services": services,
}))
"""


ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "M2MESH_LEDGER")}
"""The environment of every process in the venv: nothing on the path but the venv's."""


def run(command: list[str | Path], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command],
        capture_output=True, text=True, timeout=300, check=False, env=ENV, **kw,
    )  # fmt: skip
    assert done.returncode == 0, f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def fresh_venv(root: Path) -> Path:
    """A new virtual environment (no pip of its own); its python."""
    venv = root / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        last = (made.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"cannot create a virtual environment here ({sys.executable} -m venv: {last})")
    return venv / "bin" / "python"


def give_it_this_projects_site(python: Path) -> Path:
    """Add this project's site-packages behind the venv's own; the venv's own, returned."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = Path(run([python, "-c", code], "asking the venv for its site-packages").stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in ours)
    (own / "_m2mesh_project.pth").write_text(lines)
    return own


def pip_install(python: Path, package: Path) -> None:
    """pip installs `package` into the venv of `python` (see the module docstring)."""
    pip: list[str | Path] = [python, "-m", "pip", "install", "--no-input"]
    has_backend = subprocess.run([python, "-c", HAS_BACKEND], check=False, timeout=60, env=ENV)
    if has_backend.returncode != 0:
        run([*pip, "--ignore-installed", "--no-deps", BACKEND], f"installing {BACKEND}")
    offline = ["--no-index", "--no-build-isolation", "--no-deps", "--ignore-installed"]
    run([*pip, *offline, package], "pip install of the example")


def mesh_run(python: Path, data: Path, ledger: Path, log: Path) -> subprocess.Popen[bytes]:
    """`mesh run PROFILE` with the venv's python, from a folder without the package."""
    command = [python, "-m", "agents.cli", "--log-level", "info", "run", PROFILE,
               "--data-dir", data, "--ledger", ledger]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen([str(c) for c in command], stdout=out, stderr=out,
                                cwd=data.parent, env=ENV)  # fmt: skip


def status_of(data: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the printer exited {proc.returncode}:\n{log.read_text()}"
        try:
            return request(data / "control.sock", {"cmd": "status"}, timeout=5)
        except (ControlError, OSError, json.JSONDecodeError):
            time.sleep(0.1)
    raise AssertionError(f"the printer never answered:\n{log.read_text()}")


def buy(buyer: RunningAgent, seller: str, service: str, kind: str, units: int, tick: float) -> Any:
    command = {"cmd": "buy", "service": service, "kind": kind, "units": units, "tick": tick,
               "peer": seller, "max_price": 3, "timeout": 30}  # fmt: skip
    return request(buyer.data / "control.sock", command, timeout=60)


def test_the_example_package_installs_with_pip_and_its_agent_sells(tmp_path: Path) -> None:
    started = time.monotonic()
    python = fresh_venv(tmp_path)
    site = give_it_this_projects_site(python)
    ledger = tmp_path / "ledger.db"
    LocalLedger.create(ledger).close()
    data = tmp_path / "printer"
    printer = Identity.generate()
    save_identity(printer, data / "identity.key")

    if "acme-print-time" not in installed_handlers():  # (unless installed here as well)
        refused = run_refused(python, data, ledger)
        assert "services[0].handler: 'acme-print-time': no installed package declares it" in (
            refused
        )

    package = tmp_path / "acme-printer"
    shutil.copytree(EXAMPLE, package, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip_install(python, package)
    installed = time.monotonic()

    seen = json.loads(run([python, "-c", SEEN, PROFILE], "reading the venv").stdout)
    assert seen["entry_points"] == {
        "acme-print-time": ["acme_printer.handlers:print_time", str(site)],
        "acme-nozzle-temp": ["acme_printer.handlers:nozzle_temperature", str(site)],
    }
    assert Path(seen["module"]).is_relative_to(site)
    assert seen["requires"] == ["m2mesh"] and seen["m2mesh"]
    assert seen["services"] == [
        ["print-time", "tool-time", "acme-print-time", "acme_printer.handlers"],
        ["nozzle-temp", "data-feed", "acme-nozzle-temp", "acme_printer.handlers"],
    ]

    log = tmp_path / "printer.log"
    proc = mesh_run(python, data, ledger, log)
    buyer: RunningAgent | None = None
    try:
        status = status_of(data, proc, log)
        assert [s["id"] for s in status["services"]] == ["print-time", "nozzle-temp"]
        buyer = RunningAgent(tmp_path, ledger, "buyer", "127.0.0.1", "tcp://127.0.0.1:0", "",
                             funds=100_000, capacity=20_000,
                             static_peers=[f"{printer.peer_id}@{status['mailbox']}"])  # fmt: skip
        buyer.wait(lambda s: printer.peer_id in sessions(s), 30, "a session with the printer")
        printed = buy(buyer, printer.peer_id, "print-time", "tool-time", 2, 1.0)
        assert (printed["state"], printed["delivered"], printed["paid"]) == ("done", 2, 6), printed
        readings = buy(buyer, printer.peer_id, "nozzle-temp", "data-feed", 3, 0.5)
        assert (readings["state"], readings["delivered"], readings["paid"]) == ("done", 3, 3)
        sold = time.monotonic()
    finally:
        if buyer is not None:
            buyer.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
    # The vendor's stop hook ran in the printer's agent when the order ended.
    assert "acme-printer: job paused after 2.0 s of printing" in text, text[-3000:]
    assert buyer is not None and not buyer.log_lines("Traceback")
    # The same package bought through `mesh up`: the printer's profile beside a buyer's,
    # one local site run by the venv's `mesh`, reconciled to the satoshi.
    site_dir = tmp_path / "up"
    up = run(
        [python, "-m", "agents.cli", "up", PROFILE, BUYER_PROFILE, "--seconds", "60",
         "--data-dir", site_dir],
        "mesh up of the printer and a buyer", cwd=tmp_path,
    )  # fmt: skip
    assert "reconcile exactly" in up.stdout and "Traceback" not in up.stdout + up.stderr
    earned = [line.split() for line in up.stdout.splitlines() if " earned " in line]
    assert ["printer", "earned", "9", "spent", "0"] in earned, up.stdout  # 2 x 3 + 3 x 1 sat
    assert ["buyer", "earned", "0", "spent", "9"] in earned, up.stdout
    print(
        f"\nvenv + pip install {installed - started:.1f} s, selling"
        f" {sold - installed:.1f} s, in all {time.monotonic() - started:.1f} s"
    )


def run_refused(python: Path, data: Path, ledger: Path) -> str:
    """`mesh run` of the profile before the package is installed: its one-line error."""
    done = subprocess.run(
        [str(python), "-m", "agents.cli", "run", str(PROFILE), "--data-dir", str(data),
         "--ledger", str(ledger)],
        capture_output=True, text=True, timeout=60, check=False, cwd=data.parent, env=ENV,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.splitlines()
    return line
