"""A profile's bridge tables: checked at load, one line naming the key, the missing
extra named."""

from __future__ import annotations

from pathlib import Path

import pytest

import agents.profile_bridges
from agents.profile import ProfileError, load_profile
from tests.ot.opcua_fixtures import pytestmark

__all__ = ["pytestmark"]
HEAD = '[agent]\nname = "Sensor"\n'
FEED = """
[[services]]
id = "v"
kind = "data-feed"
unit = "reading"
price = 1
"""
OPCUA = (
    '\n[services.opcua]\nendpoint = "opc.tcp://127.0.0.1:4840"\nnode = "ns=2;s=Machine.Vibration"\n'
)


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "p.toml"
    path.write_text(HEAD + text)
    return load_profile(path)


def problem(tmp_path: Path, text: str) -> tuple[str, str]:
    with pytest.raises(ProfileError) as caught:
        load(tmp_path, text)
    assert "\n" not in str(caught.value)
    return caught.value.key, caught.value.problem


def test_a_feed_with_an_opcua_table_takes_its_readings_from_there(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        FEED
        + OPCUA
        + '\n[opcua_server]\n\n[sparkplug]\nbroker = "mqtt://127.0.0.1"\ngroup = "g"\nnode = "n"\n',
    )
    (service,) = profile.services  # type: ignore[attr-defined]
    assert (service.handler, service.source.kind) == ("", "opcua")
    assert service.source.config.node == "ns=2;s=Machine.Vibration"
    surfaces = profile.surfaces  # type: ignore[attr-defined]
    assert surfaces.opcua_server.endpoint == "opc.tcp://127.0.0.1:4841/m2mesh"
    assert surfaces.sparkplug.node == "n"


@pytest.mark.parametrize(
    ("text", "key", "said"),
    [
        (FEED + 'handler = "builtin:vibration"\n' + OPCUA, "services[0].handler", "has no handler"),
        (FEED.replace("data-feed", "call") + OPCUA, "services[0].opcua", "only a data-feed"),
        (
            FEED + OPCUA + '\n[services.sparkplug]\nbroker = "mqtt://h"\n',
            "services[0].sparkplug",
            "one source",
        ),
        (FEED + OPCUA.replace("node =", "nod ="), "services[0].opcua.nod", "unknown key"),
        (FEED + OPCUA.replace("opc.tcp", "http"), "services[0].opcua.endpoint", "opc.tcp://"),
        (
            '\n[opcua_server]\nendpoint = "opc.tcp://0.0.0.0:4841/x"\n',
            "opcua_server.endpoint",
            "loopback",
        ),
        ('\n[sparkplug]\nbroker = "mqtt://h"\ngroup = "a/b"\nnode = "n"\n', "sparkplug.group", "/"),
        (FEED, "services[0].handler", "is required"),
    ],
)
def test_a_bad_bridge_table_is_one_line_naming_its_key(
    tmp_path: Path, text: str, key: str, said: str
) -> None:
    got_key, got = problem(tmp_path, text)
    assert (got_key, said in got) == (key, True), (got_key, got)


def test_a_bridge_without_its_extra_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agents.profile_bridges, "missing", lambda *m: ["asyncua"])
    key, said = problem(tmp_path, FEED + OPCUA)
    assert (key, said) == ("services[0].opcua", "needs asyncua: pip install 'm2mesh[ot]'")
    key, said = problem(tmp_path, "\n[opcua_server]\n")
    assert key == "opcua_server" and "m2mesh[ot]" in said
