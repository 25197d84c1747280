"""Fixtures for the chain tests: a fresh ledger on a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.chain.ledger import LocalLedger
from tests.chain.helpers import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[LocalLedger]:
    with LocalLedger.create(tmp_path / "ledger.db", clock=clock) as opened:
        yield opened
