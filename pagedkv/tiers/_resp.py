"""A RESP2 reply parser for the ``valkey`` client that reads large values without copies.

Why: KV blocks are 0.1-10 MB. The client's pure-Python parser appends every 64 KiB ``recv`` to
a ``BytesIO`` and slices the value out of it (several copies of every byte, growing buffers), so
a plain ``GET`` loop moves ~0.2-0.4 GB/s on localhost. This parser keeps small replies (headers,
integers, ``OK``) in a small buffer, and ``recv_into``s each large bulk string straight into a
``bytearray`` of its exact size: one copy, kernel to value. Plugged in with the client's public
``parser_class`` option, so connection handling (pool, AUTH, SELECT, timeouts, TLS) stays the
client's own. The parser stands alone (it needs nothing from the client's private parser
classes); its error replies map onto the client's public exception types (``_error``).

Large bulk replies come back as ``bytearray`` (not ``bytes``); the remote tier treats values as
read-only buffers, so this is fine there (use this parser for nothing else).
"""

from __future__ import annotations

import socket
from typing import Any

from valkey.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ConnectionError,
    ExecAbortError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    ValkeyError,
)

_CLOSED = "Connection closed by server."
_BIG = 1 << 16  # bulk strings at least this long are read directly into their own buffer
_CRLF = b"\r\n"
# error reply prefix -> the exception the client raises for it (the prefix is dropped)
_CODES: dict[str, type[ValkeyError]] = {
    "OOM": OutOfMemoryError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
    "NOSCRIPT": NoScriptError,
    "EXECABORT": ExecAbortError,
    "NOPERM": NoPermissionError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
}
# "ERR <message>" replies the connection handles specially (matched in lower case)
_ERR_MESSAGES: tuple[tuple[str, type[ValkeyError]], ...] = (
    ("max number of clients reached", ConnectionError),
    ("invalid password", AuthenticationError),
    ("wrong number of arguments for 'auth' command", AuthenticationWrongNumberOfArgsError),
    ("without any password configured", AuthenticationError),
    ("but no password is set", AuthenticationError),
)


def _error(reply: str) -> ValkeyError:
    """The exception for an error reply (``-OOM command not allowed...`` -> OutOfMemoryError),
    as the client's own parsers type them; anything else is a ``ResponseError``."""
    code, _, message = reply.partition(" ")
    if code in _CODES:
        return _CODES[code](message)
    if code == "ERR":
        lowered = message.lower()
        for phrase, kind in _ERR_MESSAGES:
            if phrase in lowered:
                return kind(message)
    return ResponseError(reply)


class FastRespParser:
    """Drop-in ``parser_class`` for ``valkey.Valkey`` (RESP2 only)."""

    def __init__(self, socket_read_size: int = 1 << 16) -> None:
        self._read_size = max(socket_read_size, 1 << 16)
        self._sock: socket.socket | None = None
        self._timeout: float | None = None
        self._buf = bytearray()
        self._pos = 0
        self.encoder: Any = None

    # ------------------------------------------------------- parser protocol
    def on_connect(self, connection: Any) -> None:
        if str(getattr(connection, "protocol", 2)) != "2":
            raise ConnectionError("FastRespParser supports RESP2 only (protocol=2)")
        self._sock = connection._sock
        self._timeout = connection.socket_timeout
        self.encoder = connection.encoder
        self._buf, self._pos = bytearray(), 0

    def on_disconnect(self) -> None:
        self._sock = None
        self._buf, self._pos = bytearray(), 0
        self.encoder = None

    def can_read(self, timeout: float | None) -> bool:
        """Whether reply bytes are buffered or arrive within ``timeout`` seconds."""
        if self._pos < len(self._buf):
            return True
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.settimeout(timeout)
            chunk = sock.recv(self._read_size)
        except (TimeoutError, BlockingIOError):
            return False
        finally:
            sock.settimeout(self._timeout)
        if not chunk:
            raise ConnectionError(_CLOSED)
        self._buf += chunk
        return True

    def read_response(self, disable_decoding: bool = False) -> Any:
        """One complete reply. Socket errors propagate; the connection disconnects on them,
        which discards any half-read state."""
        return self._reply(disable_decoding)

    # --------------------------------------------------------------- replies
    def _reply(self, raw: bool) -> Any:
        line = self._readline()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._decode(self._bulk(n), raw)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply(raw) for _ in range(n)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return self._decode(rest, raw)
        if kind == b"-":
            error = _error(rest.decode("utf-8", errors="replace"))
            if isinstance(error, ConnectionError):
                raise error
            return error
        raise InvalidResponse(f"Protocol Error: {line!r}")

    def _decode(self, value: bytes | bytearray, raw: bool) -> Any:
        if raw or self.encoder is None or not isinstance(value, bytes):
            return value
        return self.encoder.decode(value)

    # --------------------------------------------------------------- buffers
    def _fill(self) -> None:
        """Append one ``recv`` to the buffer (dropping what was consumed)."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        assert self._sock is not None, "not connected"
        chunk = self._sock.recv(self._read_size)
        if not chunk:
            raise ConnectionError(_CLOSED)
        self._buf += chunk

    def _readline(self) -> bytes:
        while True:
            end = self._buf.find(_CRLF, self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos : end])
                self._pos = end + 2
                return line
            self._fill()

    def _bulk(self, n: int) -> bytes | bytearray:
        """The next ``n`` bytes plus the CRLF after them."""
        if n < _BIG:
            while len(self._buf) - self._pos < n + 2:
                self._fill()
            data = bytes(self._buf[self._pos : self._pos + n])
            self._pos += n + 2
            return data
        out = bytearray(n)
        got = min(n, len(self._buf) - self._pos)
        with memoryview(self._buf) as buffered:  # a view: no temporary copy of the slice
            out[:got] = buffered[self._pos : self._pos + got]
        self._pos += got
        view = memoryview(out)
        assert self._sock is not None, "not connected"
        while got < n:
            r = self._sock.recv_into(view[got:])
            if not r:
                raise ConnectionError(_CLOSED)
            got += r
        while len(self._buf) - self._pos < 2:
            self._fill()
        self._pos += 2
        return out
