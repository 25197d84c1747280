"""Every module of mesh/ and agents/ points to the section of docs/ARCHITECTURE.md that
describes it, and every section it cites exists.

A module's docstring names it as ``docs/ARCHITECTURE.md §N`` (or ``§N, §M``), N being the
number of a heading there (``## 4.`` or ``### 4.1``). Generated modules (``*_pb2.py``)
are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGES = ("mesh", "agents")

SECTION = r"§(\d+(?:\.\d+)*)"
POINTER = re.compile(r"docs/ARCHITECTURE\.md\s+(" + SECTION + r"(?:\s*,\s*" + SECTION + r")*)")
HEADING = re.compile(r"^(?:## (\d+)\.|### (\d+(?:\.\d+)+))\s", re.MULTILINE)


def sections() -> set[str]:
    """The section numbers docs/ARCHITECTURE.md has headings for."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    return {major or minor for major, minor in HEADING.findall(text)}


def modules() -> list[Path]:
    """Every hand-written module under the packages."""
    found = [
        path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if not path.name.endswith("_pb2.py")
    ]
    assert found, "no modules found"
    return found


def cited(docstring: str) -> list[str]:
    """The section numbers a docstring cites as docs/ARCHITECTURE.md §N."""
    return [
        number
        for pointer in POINTER.finditer(docstring)
        for number in re.findall(SECTION, pointer.group(1))
    ]


def test_architecture_has_its_sections() -> None:
    assert {"1", "4", "4.1", "6.2", "10"} <= sections()


def test_every_module_points_to_an_existing_section() -> None:
    known = sections()
    offenders: list[str] = []
    for path in modules():
        name = path.relative_to(ROOT).as_posix()
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if docstring is None:
            offenders.append(f"{name}: no module docstring")
            continue
        numbers = cited(docstring)
        if not numbers:
            offenders.append(f'{name}: no "docs/ARCHITECTURE.md §N" in its docstring')
        unknown = sorted(set(numbers) - known)
        if unknown:
            offenders.append(f"{name}: cites missing section(s) {', '.join(unknown)}")
    assert not offenders, (
        f"{len(offenders)} module(s) without a valid pointer to docs/ARCHITECTURE.md "
        f"(sections: {', '.join(sorted(known, key=lambda s: [int(p) for p in s.split('.')]))}):\n"
        + "\n".join(offenders)
    )
