"""Shared fixtures for the bricks tests: the one session-wide trained fixture and tiny untrained hosts."""
import pytest

import cores
from bricks import fixtures


@pytest.fixture(scope="session")
def trained():
    """Canonical and legacy host pairs with their bricks, trained once per session (bricks.fixtures)."""
    return fixtures.trained_hosts()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run on one thread (see bricks.fixtures.one_thread); restored afterwards."""
    with fixtures.one_thread():
        yield


@pytest.fixture(scope="session")
def streams():
    return fixtures.streams()


@pytest.fixture
def host():
    return cores.build("layercake", "tiny", seed=0).eval()


@pytest.fixture
def domain(streams):
    return streams[1][:12_000]


@pytest.fixture
def general(streams):
    return streams[0][:12_000]
