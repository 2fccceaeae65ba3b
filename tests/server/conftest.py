"""Server-test fixtures. Helpers live in ``server_helpers`` (importable by name from the tests,
which a ``conftest`` module is not reliably).

``server`` is one shared server for the whole session (starting one costs ~0.3 s); after every
test that used it, the engine must be idle again (no request left, no block referenced) and
``check_integrity()`` must hold, so every test is also a leak test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from server_helpers import Server, running_server


@pytest.fixture(scope="session")
def shared_server() -> Iterator[Server]:
    with running_server() as srv:
        yield srv


@pytest.fixture
def server(shared_server: Server) -> Iterator[Server]:
    shared_server.wait_idle()
    yield shared_server
    shared_server.wait_idle()
