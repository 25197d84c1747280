"""Fuzzing profile loading: whatever a profile file holds, one clear `ProfileError`.

Inputs are real files: the shipped profiles with random byte edits (so also text
that is not UTF-8 and TOML that does not parse), and generated TOML documents whose
tables use the real keys with values of every TOML type (and unknown keys, nested
tables, huge and negative numbers, inf and nan). `load_profile` must return a
profile that satisfies the documented rules, or raise `ProfileError` naming the file
and a key -- never another exception, which would reach a vendor as a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.profile import KINDS, Profile, ProfileError, load_profile
from tests.reliability.budget import CI_EXAMPLES, SLOW_EXAMPLES, fuzz_settings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "profiles").glob("*.toml"))
SECTIONS: dict[str, tuple[str, ...]] = {
    "agent": ("name", "vendor", "key_file", "passphrase_env", "mailbox", "heartbeat", "dead_after"),
    "discovery": ("interfaces", "static_peers", "ttl"),
    "channels": ("capacity", "lifetime_blocks", "window"),
    "anchoring": ("batch", "seconds"),
}
SERVICE_KEYS = ("id", "kind", "unit", "price", "tick", "credit", "handler", "buyers", "description")
SPLICES = (b"=", b"[", b"]", b'"', b"\n", b"-1", b"0x", b"1e999", b"\xff", b"\xc3", b"\x00")
WANT_KEYS = (
    "service",
    "kind",
    "tick",
    "max_price",
    "units",
    "budget",
    "prepay",
    "request",
    "deadline",
)

scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=30),
    st.sampled_from(
        [
            "tcp://127.0.0.1:0",
            "ipc:///tmp/x",
            "builtin:vibration",
            "*",
            "data-feed",
            "tool-time",
            "call",
            "02" + "11" * 32,
            "",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


def toml_value(value: Any) -> str:
    """TOML for a value (inline tables and arrays; strings JSON-escaped, which TOML reads)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def table(draw: st.DrawFn, keys: tuple[str, ...]) -> dict[str, Any]:
    """A table using mostly real keys (each possibly missing), sometimes a stray one."""
    chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    body = {key: draw(values) for key in chosen}
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return body


@st.composite
def generated_profile(draw: st.DrawFn) -> bytes:
    lines: list[str] = []
    for section, keys in SECTIONS.items():
        if draw(st.booleans()) or section == "agent":
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in draw(table(keys)).items()]
    for name, keys in (("services", SERVICE_KEYS), ("wants", WANT_KEYS)):
        for _ in range(draw(st.integers(0, 3))):
            lines.append(f"[[{name}]]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in draw(table(keys)).items()]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def mutated_shipped(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SHIPPED)).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "byte"]))
        if op == "flip" and data:
            data[pos % len(data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(SPLICES))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 10))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


def check_rules(profile: Profile) -> None:
    """What a loaded profile promises (profiles/README.md)."""
    assert profile.name is not None and profile.mailbox.startswith(("tcp://", "ipc://"))
    assert profile.heartbeat > 0 and profile.dead_after > 0
    assert profile.capacity > 0 and profile.lifetime_blocks > 0 and profile.window > 0
    assert profile.discovery_ttl > 0 and profile.anchor_every > 0 and profile.anchor_seconds > 0
    for service in profile.services:
        assert service.kind in KINDS and service.price > 0 and service.credit >= 0
        assert service.id and "," not in service.id and "=" not in service.id
    assert len({s.id for s in profile.services}) == len(profile.services)
    for want in profile.wants:
        assert min(want.max_price, want.units, want.budget) > 0 and want.prepay >= 0


def run_profile_fuzz(examples: int, folder: Path) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    path = folder / "profile.toml"

    @fuzz_settings(examples)
    @given(st.one_of(generated_profile(), mutated_shipped()))
    def fuzz(data: bytes) -> None:
        path.write_bytes(data)
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            assert exc.path == str(path) and exc.key and exc.problem
            outcome = "refused"
        else:
            check_rules(profile)
            outcome = "loaded"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    fuzz()
    print(f"\nprofiles: {sum(outcomes.values())} files {outcomes}")
    return outcomes


def test_any_profile_file_loads_or_is_one_profile_error(tmp_path: Path) -> None:
    """1 000 generated and mutated profile files: each loads into a profile that keeps
    the documented rules or is refused with a ProfileError naming file and key."""
    outcomes = run_profile_fuzz(CI_EXAMPLES, tmp_path)
    assert outcomes.get("loaded", 0) > 20 and outcomes.get("refused", 0) > 200


@pytest.mark.slow
def test_profile_fuzz_slow(tmp_path: Path) -> None:
    """The same over 100 000 files."""
    outcomes = run_profile_fuzz(SLOW_EXAMPLES, tmp_path)
    assert sum(outcomes.values()) >= SLOW_EXAMPLES
