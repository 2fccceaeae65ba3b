"""``pagedkv serve`` as a real process: it starts on a free port (``--port 0``), serves, and on
SIGTERM or SIGINT stops accepting, lets the in-flight stream finish, and exits with status 0."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from server_helpers import MODEL, httpx, sse_events

STARTUP_TIMEOUT = 60.0
RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def serve_registered() -> bool:
    from pagedkv.cli import build_parser

    parser = build_parser()
    sub = next(
        (a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)), None
    )
    return sub is not None and "serve" in sub.choices


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pagedkv.cli", "serve", *args]


class ServeProcess:
    """``pagedkv serve`` in a subprocess; its stderr is read by a thread (kept for messages)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            serve_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    def wait_port(self) -> int:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = RUNNING.search(line)
            if m:
                return int(m.group(1))
        self.kill()
        raise AssertionError("pagedkv serve did not start:\n" + "".join(self.log))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def stream_then_signal(server: ServeProcess, sig: signal.Signals) -> None:
    port = server.wait_port()
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    body = {
        "model": MODEL,
        "prompt": "shutdown",
        "max_tokens": 300,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = sse_events(r.iter_lines())
        next(events)
        server.proc.send_signal(sig)  # while the request is in flight
        rest = list(events)
    # the in-flight request was allowed to finish
    assert rest[-1] == "[DONE]", rest[-3:]
    assert rest[-2]["usage"]["completion_tokens"] == 300
    code = server.proc.wait(30)
    assert code == 0, f"{sig.name}: exit status {code}\n" + "".join(server.log)
    with pytest.raises(httpx.TransportError):  # nobody listens any more
        httpx.get(f"{url}/health", timeout=2)


def test_graceful_shutdown_with_stream_in_flight():
    if not serve_registered():
        pytest.skip("`pagedkv serve` is not registered in pagedkv/cli.py yet")
    args = (
        "--model",
        "tiny-random",
        "--port",
        "0",
        "--num-blocks",
        "64",
        "--served-model-name",
        MODEL,
        "--graceful-timeout",
        "20",
        "--log-level",
        "info",
    )
    # both start at once (a process start is most of this test's time)
    servers = {sig: ServeProcess(*args) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for sig, server in servers.items():
            stream_then_signal(server, sig)
    finally:
        for server in servers.values():
            server.kill()
