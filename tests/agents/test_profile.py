"""Profiles: the shipped ones load; every kind of mistake names file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.partners import parse_offer
from agents.profile import ProfileError, load_profile
from agents.runtime import Agent
from agents.web.config import DashboardConfig

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
GOOD = """
[agent]
name = "Mill"

[[services]]
id = "spindle-time"
kind = "tool-time"
unit = "s"
price = 5
handler = "builtin:spindle"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["cnc-mill", "vibration-sensor", "robot-cell", "quality-lab"])
def test_shipped_profiles_load(name: str, tmp_path: Path) -> None:
    profile = load_profile(PROFILES / f"{name}.toml")
    assert profile.name
    assert profile.services or profile.wants
    Agent(profile, tmp_path, tmp_path / "ledger.db")  # handlers resolve


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        ("colour = 'red'\n" + GOOD, "colour", "unknown key"),
        (GOOD + "colour = 'red'\n", "services[0].colour", "unknown key"),
        (GOOD.replace('name = "Mill"', 'name = "Mill"\nnmae = "x"'), "agent.nmae", "unknown key"),
        (GOOD.replace("price = 5", 'price = "5"'), "services[0].price", "expected int"),
        (GOOD.replace("price = 5", "price = -5"), "services[0].price", "must be positive"),
        (GOOD.replace("price = 5", "price = true"), "services[0].price", "expected int"),
        (GOOD.replace('kind = "tool-time"', 'kind = "rental"'), "services[0].kind", "one of"),
        (GOOD.replace('name = "Mill"\n', ""), "agent.name", "is required"),
        (GOOD + "[discovery]\nstatic_peers = ['http://x']\n", "discovery.static_peers[0]", "tcp"),
        (
            GOOD + "[discovery]\nstatic_peers = ['tcp://h:1', 'mill@tcp://h:2']\n",
            "discovery.static_peers[1]",
            "not hex",
        ),
        (
            GOOD + "[[wants]]\nservice = 'x'\nmax_price = 1\nunits = 0\nbudget = 5\n",
            "wants[0].units",
            "must be positive",
        ),
        (GOOD + "[channels]\ncapacity = 'lots'\n", "channels.capacity", "expected int"),
        (GOOD.replace("unit = ", 'buyers = ["not-a-key"]\nunit = '), "services[0].buyers", "hex"),
        ("[agent\nname=1", "(syntax)", ""),
        (GOOD + "[dashboard]\nlisten = '0.0.0.0:8470'\n", "dashboard.listen", "token_file"),
        (GOOD + "[dashboard]\nlisten = 'localhost:1'\n", "dashboard.listen", "not an IP"),
        (GOOD + "[dashboard]\ntoken_file = 'nope'\n", "dashboard.token_file", "cannot read"),
        (GOOD + "[dashboard]\nlistn = '127.0.0.1:1'\n", "dashboard.listn", "unknown key"),
    ],
)
def test_each_mistake_names_file_and_key(tmp_path: Path, edit: str, key: str, problem: str) -> None:
    path = write(tmp_path, edit)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert str(path) in str(info.value)


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(ProfileError) as info:
        load_profile(path, data_dir=tmp_path / "data")
    assert info.value.key == "agent.key_file" and "mesh keygen" in info.value.problem


def test_handler_of_the_wrong_kind_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("builtin:spindle", "builtin:vibration"))
    with pytest.raises(ProfileError) as info:
        Agent(load_profile(path), tmp_path, tmp_path / "l.db")
    assert info.value.key == "services[0].handler" and "data-feed" in info.value.problem
    path = write(tmp_path, GOOD.replace("builtin:spindle", "no.such.module:x"))
    with pytest.raises(ProfileError, match="cannot import"):
        Agent(load_profile(path), tmp_path, tmp_path / "l.db")


def test_offers_are_parsed_from_the_mdns_summary() -> None:
    summary = "spindle-time=2/0.25 s,inspection=50/inspection"
    assert parse_offer(summary, "spindle-time") == 2
    assert parse_offer(summary, "inspection") == 50
    assert parse_offer(summary, "vibration") is None
    assert parse_offer("x=cheap/s", "x") is None


def test_admission_limits_come_from_the_channels_table(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[agent]\nname = "m"\n[channels]\nmax_unfunded_per_peer = 2\nmax_unfunded = 9\n'
        "unfunded_lifetime = 5\nstrikes = 1\nset_aside = 7200\n"
    )
    limits = load_profile(path).admission
    assert (limits.per_peer, limits.total, limits.lifetime) == (2, 9, 5.0)
    assert (limits.max_strikes, limits.backoff, limits.max_backoff) == (1, 7200.0, 7200.0)
    path.write_text('[agent]\nname = "m"\n[channels]\nmax_unfunded = 0\n')
    with pytest.raises(ProfileError, match="max_unfunded"):
        load_profile(path)


def test_a_want_must_say_what_kind_of_service_it_buys(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[agent]\nname = "m"\n[[wants]]\nservice = "x"\nmax_price = 1\nunits = 3\nbudget = 5\n'
    )
    with pytest.raises(ProfileError, match=r"wants\[0\]\.kind: is required"):
        load_profile(path)
    path.write_text(path.read_text() + 'kind = "tool-time"\ntick = 0.25\n')
    want = load_profile(path).wants[0]
    assert (want.kind, want.tick, want.wait_limit()) == ("tool-time", 0.25, 5.0)


def test_the_site_is_a_short_printable_name(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[agent]\nname = "m"\n')
    assert load_profile(path).site == "default"
    path.write_text('[agent]\nname = "m"\nsite = "plant-7/line-2"\n')
    assert load_profile(path).site == "plant-7/line-2"
    for bad in ("", "x" * 65, "line 2", "l\\u202ene"):
        path.write_text(f'[agent]\nname = "m"\nsite = "{bad}"\n')
        with pytest.raises(ProfileError, match=r"agent\.site"):
            load_profile(path)


def test_the_dashboard_table_says_where_and_with_which_token(tmp_path: Path) -> None:
    assert load_profile(write(tmp_path, GOOD)).dashboard == DashboardConfig("127.0.0.1", 0)
    (tmp_path / "web.token").write_text("0123456789abcdef0123\n")
    text = GOOD + "[dashboard]\nlisten = '0.0.0.0:8470'\ntoken_file = 'web.token'\n"
    dashboard = load_profile(write(tmp_path, text)).dashboard
    assert (dashboard.host, dashboard.port, dashboard.token) == (
        "0.0.0.0",
        8470,
        "0123456789abcdef0123",
    )
    off = load_profile(write(tmp_path, GOOD + "[dashboard]\nlisten = 'off'\n")).dashboard
    assert not off.enabled
