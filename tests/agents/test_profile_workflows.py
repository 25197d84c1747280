"""Profiles' work orders: `[[workflows]]`, `[escrow]` and `[inspection]` load, their
defaults apply, and every mistake names its key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agents.profile import ProfileError, load_profile
from agents.profile_workflows import (
    MIN_OFFER_BLOCKS,
    EscrowSpec,
    InspectionSpec,
    WorkflowsConfigError,
    WorkflowSpec,
    escrow,
    inspection,
    workflows,
)
from mesh.certs.conditions import parse_condition
from mesh.identity import Identity

INSPECTOR = Identity.generate().peer_id
OTHER = Identity.generate().peer_id

AGENT = """
[agent]
name = "Cell"
"""

WORKFLOW = f"""
[[workflows]]
id = "brackets"
service = "spindle-time"
kind = "tool-time"
tick = 0.25
units = 8
max_price = 3
parts = ["BR-101", "BR-102"]
payment = 2000
fee = 20
inspector = "{INSPECTOR}"
refund_blocks = 20
readings = "vibration"
"""

MINIMAL_WORKFLOW = f"""
[[workflows]]
id = "brackets"
service = "spindle-time"
units = 8
max_price = 3
parts = ["BR-101"]
payment = 2000
fee = 20
inspector = "{INSPECTOR}"
"""

ESCROW = f"""
[escrow]
inspectors = ["{INSPECTOR}", "{OTHER}"]
min_payment = 100
"""

INSPECTION = """
[inspection]
handler = "builtin:cmm"
pass_when = ["deviation_um <= 25", "finish == ok"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_all_three_tables_load(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, AGENT + WORKFLOW + ESCROW + INSPECTION))
    assert profile.workflows == (
        WorkflowSpec(
            id="brackets",
            service="spindle-time",
            units=8,
            max_price=3,
            parts=("BR-101", "BR-102"),
            payment=2000,
            fee=20,
            inspector=INSPECTOR,
            refund_blocks=20,
            kind="tool-time",
            tick=0.25,
            readings="vibration",
        ),
    )
    assert profile.escrow == EscrowSpec(frozenset({INSPECTOR, OTHER}), 100)
    assert profile.inspection == InspectionSpec(
        "builtin:cmm",
        (parse_condition("deviation_um <= 25"), parse_condition("finish == ok")),
    )


def test_defaults_apply(tmp_path: Path) -> None:
    text = AGENT + MINIMAL_WORKFLOW + f'[escrow]\ninspectors = ["{INSPECTOR}"]\n'
    profile = load_profile(write(tmp_path, text))
    (spec,) = profile.workflows
    assert (spec.kind, spec.tick, spec.refund_blocks, spec.readings) == ("tool-time", 1.0, 12, "")
    assert profile.escrow == EscrowSpec(frozenset({INSPECTOR}), 1)
    assert profile.inspection is None


def test_absent_tables(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, AGENT))
    assert (profile.workflows, profile.escrow, profile.inspection) == ((), None, None)
    assert (workflows([]), escrow(None), inspection(None)) == ((), None, None)


def test_int_tick_and_upper_case_peer_ids(tmp_path: Path) -> None:
    text = MINIMAL_WORKFLOW.replace(INSPECTOR, INSPECTOR.upper()) + "tick = 2\n"
    text += f'[escrow]\ninspectors = ["{INSPECTOR.upper()}"]\n'
    profile = load_profile(write(tmp_path, AGENT + text))
    assert profile.workflows[0].tick == 2.0
    assert profile.workflows[0].inspector == INSPECTOR
    assert profile.escrow == EscrowSpec(frozenset({INSPECTOR}))


def test_several_workflows(tmp_path: Path) -> None:
    second = MINIMAL_WORKFLOW.replace('"brackets"', '"plates"').replace("BR-101", "PL-1")
    profile = load_profile(write(tmp_path, AGENT + MINIMAL_WORKFLOW + second))
    assert [w.id for w in profile.workflows] == ["brackets", "plates"]


def _edit(old: str, new: str) -> str:
    assert old in MINIMAL_WORKFLOW
    return AGENT + MINIMAL_WORKFLOW.replace(old, new)


SECOND = MINIMAL_WORKFLOW.replace('"brackets"', '"plates"').replace('"BR-101"', '"PL-1"')
BAD_ESCROW = "[escrow]\ninspectors = ["
PASS_WHEN = '[inspection]\nhandler = "builtin:cmm"\npass_when = '


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        # [[workflows]]
        ("workflows = 5\n" + AGENT, "workflows", "expected list"),
        ("workflows = [5]\n" + AGENT, "workflows[0]", "expected a table"),
        (_edit("fee = 20", "fee = 20\nfees = 1"), "workflows[0].fees", "did you mean 'fee'"),
        (_edit("fee = 20", "fee = 20\ncolour = 1"), "workflows[0].colour", "unknown key"),
        (_edit("fee = 20", 'fee = 20\nrequire = "lab"'), "workflows[0].require", "lab"),
        (_edit("fee = 20", 'fee = 20\nmachine_require = "x"'), "workflows[0].machine_require", "x"),
        (_edit('id = "brackets"\n', ""), "workflows[0].id", "is required"),
        (_edit('id = "brackets"', 'id = ""'), "workflows[0].id", "is required"),
        (_edit('id = "brackets"', "id = 7"), "workflows[0].id", "non-empty string"),
        (
            AGENT + MINIMAL_WORKFLOW + SECOND.replace('"plates"', '"brackets"'),
            "workflows[1].id",
            "duplicate workflow id 'brackets'",
        ),
        (_edit('service = "spindle-time"\n', ""), "workflows[0].service", "is required"),
        (_edit('service = "spindle-time"', 'service = ""'), "workflows[0].service", "required"),
        (_edit("units = 8", 'units = 8\nkind = "call"'), "workflows[0].kind", "tool-time"),
        (_edit("units = 8", "units = 8\ntick = 0"), "workflows[0].tick", "positive"),
        (_edit("units = 8", "units = 8\ntick = -1.5"), "workflows[0].tick", "positive"),
        (_edit("units = 8", "units = 8\ntick = nan"), "workflows[0].tick", "positive"),
        (_edit("units = 8", 'units = 8\ntick = "1"'), "workflows[0].tick", "expected a number"),
        (_edit("units = 8", "units = 8\ntick = true"), "workflows[0].tick", "expected a number"),
        (_edit("units = 8\n", ""), "workflows[0].units", "is required"),
        (_edit("units = 8", "units = 0"), "workflows[0].units", "at least 1"),
        (_edit("units = 8", "units = 1.5"), "workflows[0].units", "expected an integer"),
        (_edit("units = 8", "units = true"), "workflows[0].units", "expected an integer"),
        (_edit("max_price = 3\n", ""), "workflows[0].max_price", "is required"),
        (_edit("max_price = 3", "max_price = 0"), "workflows[0].max_price", "at least 1"),
        (_edit("max_price = 3", "max_price = '3'"), "workflows[0].max_price", "expected an"),
        (_edit('parts = ["BR-101"]\n', ""), "workflows[0].parts", "is required"),
        (_edit('parts = ["BR-101"]', "parts = []"), "workflows[0].parts", "non-empty list"),
        (_edit('parts = ["BR-101"]', 'parts = "BR-101"'), "workflows[0].parts", "non-empty"),
        (_edit('parts = ["BR-101"]', "parts = ['A', 1]"), "workflows[0].parts[1]", "string"),
        (_edit('parts = ["BR-101"]', "parts = ['A', 'A']"), "workflows[0].parts[1]", "duplicate"),
        (_edit('parts = ["BR-101"]', "parts = ['-A']"), "workflows[0].parts[0]", "not a part id"),
        (_edit('parts = ["BR-101"]', "parts = ['a b']"), "workflows[0].parts[0]", "not a part"),
        (_edit('parts = ["BR-101"]', 'parts = ["A\\n"]'), "workflows[0].parts[0]", "not a part"),
        (_edit('parts = ["BR-101"]', "parts = ['']"), "workflows[0].parts[0]", "not a part id"),
        (
            _edit('parts = ["BR-101"]', f"parts = ['{'x' * 65}']"),
            "workflows[0].parts[0]",
            "not a part id",
        ),
        (
            AGENT + MINIMAL_WORKFLOW + SECOND.replace('"PL-1"', '"PL-1", "BR-101"'),
            "workflows[1].parts[1]",
            "'BR-101' is already ordered in workflows[0]",
        ),
        (_edit("payment = 2000\n", ""), "workflows[0].payment", "is required"),
        (_edit("payment = 2000", "payment = 0"), "workflows[0].payment", "at least 1"),
        (_edit("payment = 2000", "payment = false"), "workflows[0].payment", "expected an"),
        (_edit("fee = 20\n", ""), "workflows[0].fee", "is required"),
        (_edit("fee = 20", "fee = 0"), "workflows[0].fee", "at least 1"),
        (_edit("fee = 20", "fee = 2000"), "workflows[0].fee", "payment - fee must be >= 1"),
        (_edit(f'inspector = "{INSPECTOR}"\n', ""), "workflows[0].inspector", "is required"),
        (_edit(INSPECTOR, "02abcd"), "workflows[0].inspector", "33-byte"),
        (_edit(INSPECTOR, "not-hex"), "workflows[0].inspector", "not hex"),
        (_edit(f'"{INSPECTOR}"', "7"), "workflows[0].inspector", "peer id"),
        (
            _edit("fee = 20", f"fee = 20\nrefund_blocks = {MIN_OFFER_BLOCKS - 1}"),
            "workflows[0].refund_blocks",
            f"at least {MIN_OFFER_BLOCKS}",
        ),
        (
            _edit("fee = 20", "fee = 20\nrefund_blocks = 12.0"),
            "workflows[0].refund_blocks",
            "expected an integer",
        ),
        (_edit("fee = 20", "fee = 20\nreadings = 3"), "workflows[0].readings", "expected a str"),
        # [escrow]
        ("escrow = 5\n" + AGENT, "escrow", "expected dict"),
        (AGENT + "[escrow]\n", "escrow.inspectors", "is required"),
        (AGENT + "[escrow]\ninspectors = []\n", "escrow.inspectors", "non-empty list"),
        (AGENT + f'[escrow]\ninspectors = "{INSPECTOR}"\n', "escrow.inspectors", "list"),
        (AGENT + BAD_ESCROW + f'"{INSPECTOR}", "02ab"]\n', "escrow.inspectors[1]", "33-byte"),
        (AGENT + BAD_ESCROW + '"zz"]\n', "escrow.inspectors[0]", "not hex"),
        (AGENT + BAD_ESCROW + "1]\n", "escrow.inspectors[0]", "peer id"),
        (AGENT + ESCROW.replace("= 100", "= 0"), "escrow.min_payment", "at least 1"),
        (AGENT + ESCROW.replace("= 100", "= true"), "escrow.min_payment", "expected an integer"),
        (AGENT + ESCROW + "inspector = 1\n", "escrow.inspector", "did you mean 'inspectors'"),
        # [inspection]
        ("inspection = 'x'\n" + AGENT, "inspection", "expected dict"),
        (AGENT + PASS_WHEN + "['a <= 1']\nhandlr = 'x'\n", "inspection.handlr", "did you mean"),
        (AGENT + "[inspection]\npass_when = ['a <= 1']\n", "inspection.handler", "is required"),
        (AGENT + INSPECTION.replace('"builtin:cmm"', '""'), "inspection.handler", "required"),
        (AGENT + "[inspection]\nhandler = 'builtin:cmm'\n", "inspection.pass_when", "required"),
        (AGENT + PASS_WHEN + "[]\n", "inspection.pass_when", "non-empty list"),
        (AGENT + PASS_WHEN + "'a <= 1'\n", "inspection.pass_when", "non-empty list"),
        (AGENT + PASS_WHEN + "['a <= 1', 2]\n", "inspection.pass_when[1]", "expected a string"),
        (AGENT + PASS_WHEN + "['a <= 1', 'a < 1']\n", "inspection.pass_when[1]", "FIELD OP"),
        (AGENT + PASS_WHEN + "['a <=']\n", "inspection.pass_when[0]", "no value"),
        (
            AGENT + PASS_WHEN + "['checked >= today']\n",
            "inspection.pass_when[0]",
            "measurements compare with numbers or text, not today",
        ),
    ],
)
def test_each_mistake_names_its_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (lambda: workflows({}), "workflows"),
        (lambda: escrow([]), "escrow"),
        (lambda: inspection("x"), "inspection"),
    ],
)
def test_parsers_refuse_what_is_not_their_table(call: Callable[[], object], key: str) -> None:
    with pytest.raises(WorkflowsConfigError) as info:
        call()
    assert info.value.key == key
