"""Fixtures shared across test packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.certs.node_sdk import NodeSdk, sdk_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def quick_bench(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One `python -m bench --quick` run of every scenario (~100 s), shared by the tests
    that read its results: its process and its output directory."""
    out = tmp_path_factory.mktemp("bench-quick")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    return result, out


@pytest.fixture(scope="session")
def bsv_sdk(tmp_path_factory: pytest.TempPathFactory) -> NodeSdk:
    """The TypeScript reference `@bsv/sdk`, installed once per test session (the
    certificate interop tests and the escrow's independent script checks)."""
    return NodeSdk(sdk_dir(tmp_path_factory.mktemp("bsv-sdk")))
