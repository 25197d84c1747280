"""`mesh up PROFILE…` as users run it: their own profiles as one local site, real
processes end to end; what it refuses before anything starts; Ctrl-C still settles."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agents.site import with_site

ROOT = Path(__file__).resolve().parents[2]

LOGGER = """\
# A data logger that buys the line sensor's vibration feed.
[agent]
name = "Data Logger"
mailbox = "tcp://127.0.0.1:0"

[discovery]
interfaces = ["127.0.0.1"]

[channels]
capacity = 10_000

[[wants]]
service = "vibration"
kind = "data-feed"
tick = 0.1
max_price = 2
units = {units}
budget = {budget}
prepay = 2
"""


def up(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "up", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def site_profiles(tmp_path: Path, units: int = 20) -> tuple[Path, Path]:
    """A copy of the shipped sensor under another name, and a logger buying its feed."""
    shipped = (ROOT / "profiles" / "vibration-sensor.toml").read_text()
    sensor = tmp_path / "profiles" / "line-sensor.toml"
    sensor.parent.mkdir()
    sensor.write_text(shipped.replace('"Vibration Sensor 7"', '"Line Sensor 1"'))
    logger = tmp_path / "profiles" / "logger.toml"
    logger.write_text(LOGGER.format(units=units, budget=2 * units))
    return sensor, logger


def flows(out: str) -> dict[str, tuple[int, int]]:
    """What each agent earned and spent, as the summary says."""
    found = re.findall(r"^  (\S+)\s+earned\s+(\d+)\s+spent\s+(\d+)$", out, re.MULTILINE)
    return {name: (int(earned), int(spent)) for name, earned, spent in found}


def unfolded(out: str) -> str:
    """`out` with the lines that were folded to fit 80 columns joined again."""
    return re.sub(r"\n {4,}", " ", out)


def assert_fits(*texts: str) -> None:
    for text in texts:
        long = [line for line in text.splitlines() if len(line) > 80]
        assert not long, long


def test_two_user_profiles_run_as_one_site_and_reconcile(tmp_path: Path) -> None:
    sensor, logger = site_profiles(tmp_path)
    before = sensor.read_text(), logger.read_text()
    data = tmp_path / "site"
    # It ends once the logger has its 20 readings; the bound only catches a hang.
    options = ("--seconds", "40", "--data-dir", str(data), "--site", "line-7", "--funds", "50_000")
    run = up(str(sensor), str(logger), *options)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in err
    assert "site line-7; starting 2 agents" in out
    assert "funds (sat): logger 50000; 1 other(s) 5000 each" in out
    assert "on-ledger balances and meters reconcile exactly; ledger balanced: True" in out
    assert flows(out) == {"line-sensor": (20, 0), "logger": (0, 20)}, out
    assert re.search(r"^logger\s+vibration\s+20/20\s+20\s+done$", out, re.MULTILINE), out
    assert_fits(out, err)  # piped: every line fits 80 columns
    # Everything stays under --data-dir; the user's profiles are untouched.
    assert (data / "ledger.db").exists()
    for name in ("line-sensor", "logger"):
        assert 'site = "line-7"' in (data / name / "profile.toml").read_text()
        assert (data / name / "agent.db").exists()
    assert "kept the data dir:" in out
    assert (sensor.read_text(), logger.read_text()) == before


def test_ctrl_c_stops_the_site_and_still_reconciles(tmp_path: Path) -> None:
    sensor, logger = site_profiles(tmp_path, units=100_000)  # never done
    run = up(str(sensor), str(logger), "--seconds", "60")
    assert run.stdout is not None
    seen = []
    for line in run.stdout:  # until the logger has paid for a few readings
        seen.append(line)
        paid = re.search(r"paid (\d+) sat", line)
        if paid and int(paid[1]) >= 5:
            break
    run.send_signal(signal.SIGINT)
    rest, err = run.communicate(timeout=60)
    out = "".join(seen) + rest
    assert run.returncode == 1, out[-3000:] + err[-3000:]
    assert "Traceback" not in err
    assert "interrupted: stopping" in out
    assert "UNMET: logger wants vibration: delivered " in out
    # The channel settled cleanly: what the logger paid is what the sensor earned,
    # delivered, and what the ledger holds.
    assert "the channels that opened match their meters on the ledger" in unfolded(out), out
    (earned, _), (_, spent) = flows(out)["line-sensor"], flows(out)["logger"]
    assert earned == spent >= 5
    assert_fits(out, err)
    # No --data-dir: the temporary one is gone.
    data = Path(re.findall(r"^data dir (\S+)$", out, re.MULTILINE)[0])
    assert data.name.startswith("m2mesh-up-") and not data.exists()


BAD = {
    "a misspelt key": ("[agent]\nname = 'x'\nnmae = 'y'\n", "agent.nmae: unknown key"),
    "a TOML syntax error": ("[agent\nname = 'x'\n", "(syntax)"),
    "a negative price": (
        "[agent]\nname = 'x'\n[[services]]\nid = 's'\nkind = 'call'\nunit = 'u'\n"
        "price = -1\nhandler = 'builtin:inspection'\n",
        "services[0].price: must be positive",
    ),
    "a key file outside the data dir": (
        "[agent]\nname = 'x'\nkey_file = '/etc/identity.key'\n",
        "agent.key_file: must be inside the data dir",
    ),
}


def refused(run: subprocess.Popen[str], *needles: str) -> str:
    """The one line of a refused run, which starts nothing."""
    out, err = run.communicate(timeout=60)
    assert run.returncode == 1, err
    assert "Traceback" not in err and not out, (out, err)
    (line,) = err.strip().splitlines()
    assert line.startswith("mesh up: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


@pytest.mark.parametrize("problem", BAD)
def test_a_bad_profile_is_one_line_naming_the_file_and_nothing_starts(
    tmp_path: Path, problem: str
) -> None:
    sensor, _ = site_profiles(tmp_path)
    text, needle = BAD[problem]
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    data = tmp_path / "site"
    refused(up(str(sensor), str(bad), "--data-dir", str(data)), f"{bad}: ", needle)
    assert not data.exists()


def test_a_missing_profile_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    refused(up(str(missing)), f"{missing}: (file): no such profile")


def test_two_agents_of_the_same_name_are_refused(tmp_path: Path) -> None:
    sensor, logger = site_profiles(tmp_path)
    twin = tmp_path / "twin.toml"
    twin.write_text(sensor.read_text())
    data = tmp_path / "site"
    line = refused(up(str(sensor), str(logger), str(twin), "--data-dir", str(data)))
    assert f"{sensor} and {twin} both name their agent 'Line Sensor 1'" in line
    # Two files of one name would share a data dir: refused too.
    (tmp_path / "other").mkdir()
    same = tmp_path / "other" / "logger.toml"
    same.write_text(logger.read_text().replace("Data Logger", "Second Logger"))
    refused(up(str(logger), str(same)), f"{logger} and {same}: two profiles named logger.toml")
    assert not data.exists()


def test_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    sensor, _ = site_profiles(tmp_path)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "ledger.db").write_text("")
    refused(up(str(sensor), "--data-dir", str(tmp_path / "used")), "new or empty directory")


def test_the_site_replaces_one_a_profile_sets() -> None:
    text = "[agent]  # the mill\nname = 'm'\nsite = 'plant-7'\n\n[discovery]\nsite = 'x'\n"
    assert with_site(Path("m.toml"), text, "up-0a1b2c3d") == (
        "[agent]  # the mill\nname = 'm'\nsite = \"up-0a1b2c3d\"\n\n[discovery]\nsite = 'x'\n"
    )
