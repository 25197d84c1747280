"""Fixtures of the OT bridge tests: real mosquitto brokers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ot.mosquitto import Mosquitto, mosquitto_binary

MISSING = "needs the mosquitto broker: apt-get install mosquitto (CI installs it)"


def _started(directory: Path) -> Iterator[Mosquitto]:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip(MISSING)
    broker = Mosquitto(directory, binary)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A mosquitto for the whole session (skips when the binary is missing)."""
    yield from _started(tmp_path_factory.mktemp("mosquitto"))


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto for one test, which may stop and restart it on its port."""
    yield from _started(tmp_path)
