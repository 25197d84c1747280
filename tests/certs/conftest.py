from __future__ import annotations

import pytest

from tests.certs.node_sdk import NodeSdk, sdk_dir


@pytest.fixture(scope="session")
def bsv_sdk(tmp_path_factory: pytest.TempPathFactory) -> NodeSdk:
    """The TypeScript reference `@bsv/sdk`, installed once per test session."""
    return NodeSdk(sdk_dir(tmp_path_factory.mktemp("bsv-sdk")))
