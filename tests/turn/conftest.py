from __future__ import annotations

import pytest

from tests.turn.harness import Client, Harness, make_engine


@pytest.fixture
def harness() -> Harness:
    return Harness(make_engine())


@pytest.fixture
def client(harness: Harness) -> Client:
    return Client(harness)
