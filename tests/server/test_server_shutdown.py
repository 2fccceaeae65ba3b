"""Shutdown. ``pagedkv serve`` as a real process: it starts on a free port (``--port 0``),
serves, and on SIGTERM or SIGINT stops accepting, lets the in-flight stream finish, and exits
with status 0. Past the graceful timeout, what is still in flight ends with an OpenAI error (an
error event and ``[DONE]`` on a stream, a 503 otherwise) and no traceback is logged."""

from __future__ import annotations

import logging
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from server_helpers import MODEL, check_error, httpx, running_server, sse_events

# Only a hung start reaches this: the wait ends as soon as the server logs that it listens,
# or fails at once if the process exits (two model loads on a loaded machine can take minutes).
STARTUP_TIMEOUT = 600.0
# the URL in the start-up summary (or uvicorn's "running on" line): the socket listens from then
URL = re.compile(r"http://127\.0\.0\.1:(\d+)")


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
        """The port the server logs it serves on, once it answers ``/health``."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break  # exited, and every line it wrote was read
                continue
            m = URL.search(line)
            if m:
                self.wait_healthy(int(m.group(1)), deadline)
                return int(m.group(1))
        alive = self.proc.poll() is None
        self.kill()
        why = f"still starting after {STARTUP_TIMEOUT:g} s" if alive else "exited"
        raise AssertionError(f"pagedkv serve did not start ({why}):\n" + "".join(self.log))

    def wait_healthy(self, port: int, deadline: float) -> None:
        """Poll ``/health`` until it answers 200 (a listening socket may queue connections
        until the server accepts them), failing at once if the process exits."""
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError("pagedkv serve never answered /health:\n" + "".join(self.log))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def stream_then_signal(server: ServeProcess, sig: signal.Signals) -> None:
    port = server.wait_port()
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    big = {"model": MODEL, "prompt": "x" * 3000}  # over the --max-body-bytes 2KB below
    assert httpx.post(f"{url}/v1/completions", json=big, timeout=30).status_code == 413
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
    code = server.proc.wait(120)
    assert code == 0, f"{sig.name}: exit status {code}\n" + "".join(server.log)
    assert "Traceback" not in "".join(server.log)
    with pytest.raises(httpx.TransportError):  # nobody listens any more
        httpx.get(f"{url}/health", timeout=2)


def test_graceful_shutdown_with_stream_in_flight():
    args = (
        "--model",
        "tiny-random",
        "--port",
        "0",
        "--num-blocks",
        "64",
        "--served-model-name",
        MODEL,
        "--max-body-bytes",
        "2KB",
        "--graceful-timeout",
        "300",  # far longer than the stream: it must finish, however loaded the machine
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


# ------------------------------------------------------------------ past the graceful timeout
class Records(logging.Handler):
    """Every log record of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_requests_past_the_graceful_timeout_end_with_openai_errors(monkeypatch):
    with running_server(graceful_timeout=0.5) as srv:
        records = Records()
        loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "pagedkv")]
        for lg in loggers:
            lg.addHandler(records)
        runner = srv.engine.engine.runner
        run_step = runner.run_step
        # slow steps: each request needs far more than the graceful timeout
        monkeypatch.setattr(runner, "run_step", lambda *a: (time.sleep(0.02), run_step(*a))[1])
        body = {"model": MODEL, "prompt": "drain", "max_tokens": 480, "ignore_eos": True}
        whole: list[httpx.Response] = []
        waiter = threading.Thread(
            target=lambda: whole.append(httpx.post(f"{srv.url}/v1/completions", json=body))
        )
        try:
            with httpx.stream(
                "POST", f"{srv.url}/v1/completions", json=dict(body, stream=True), timeout=60
            ) as r:
                events = sse_events(r.iter_lines())
                assert "choices" in next(events)
                waiter.start()
                while srv.state()[0] < 2:  # both requests in the engine
                    time.sleep(0.01)
                srv.uvicorn.should_exit = True  # what SIGTERM does
                rest = list(events)
            waiter.join(60)
        finally:
            for lg in loggers:
                lg.removeHandler(records)
    assert rest[-1] == "[DONE]", rest[-3:]
    err = rest[-2]["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert "graceful timeout (0.5 s)" in err["message"], err
    assert all("choices" in e for e in rest[:-2])  # tokens, then the error, then [DONE]
    [resp] = whole
    assert "graceful timeout" in check_error(resp, 503)["message"]
    logged = [r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in records.records]
    assert not [m for m in logged if "Cancel" in m or "Traceback" in m or "Exception" in m], logged
    assert any("ending 2 requests" in m for m in logged), logged
