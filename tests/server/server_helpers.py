"""Shared helpers for the server tests (imported by the test modules; ``conftest.py`` applies the
core shim and holds the fixtures): a real uvicorn server on 127.0.0.1 in a thread, serving the
tiny random Llama, plus small readers for SSE streams, OpenAI error bodies and /metrics.

Everything runs on CPU in fp32 with one torch thread (the tiny model is faster that way).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from pagedkv.engine import AsyncLLMEngine, LLMEngine
from pagedkv.models import tiny_random_llama
from pagedkv.server.app import create_app
from pagedkv.server.drain import draining_server

try:  # the client library ships as ``httpx2`` in some environments (openai depends on it)
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    import httpx2 as httpx  # type: ignore[no-redef]


MODEL = "tiny-random"
BYTE_OFFSET = 3  # byte-level tokenizer: token id = byte + 3 (so ASCII text: 1 token per char)
MAX_MODEL_LEN = 512  # the tiny Llama's max_position_embeddings
ENGINE_DEFAULTS: dict[str, Any] = {"block_size": 16, "num_blocks": 192, "seed": 0}
ERROR_KEYS = {"message", "type", "param", "code"}
# Generous bounds that only a hung server reaches: a loaded machine must never fail a test by
# being slow (waits end early as soon as the awaited thing happens, or the server dies).
START_TIMEOUT = 600.0

__all__ = [
    "BYTE_OFFSET",
    "ERROR_KEYS",
    "MAX_MODEL_LEN",
    "MODEL",
    "Server",
    "httpx",
    "metric",
    "parse_metrics",
    "running_server",
    "sse_events",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server: its base URL, its engine (inspect through ``engine.call``)."""

    url: str
    engine: AsyncLLMEngine
    model: str
    app: FastAPI
    uvicorn: Any = None  # the uvicorn.Server: ``uvicorn.should_exit = True`` starts a shutdown

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base_url,
            api_key="unused",
            max_retries=0,
            timeout=kw.pop("timeout", 30.0),
            **kw,
        )

    def aclient(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key="unused",
            max_retries=0,
            timeout=kw.pop("timeout", 30.0),
            **kw,
        )

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0)

    def state(self) -> tuple[int, int]:
        """(live engine requests, KV blocks referenced by sequences)."""
        return self.engine.call(lambda e: (len(e.requests), int(e.manager.num_used_blocks)))

    def wait_idle(self, used_blocks: int = 0, timeout: float = 10.0) -> None:
        """Wait until no request is left and ``used_blocks`` blocks are in use, then check the
        engine's integrity; fail with the state if that does not happen in time."""
        deadline = time.monotonic() + timeout
        while self.state() != (0, used_blocks):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"engine not idle after {timeout} s: (requests, used "
                    f"blocks) = {self.state()}, expected (0, {used_blocks})"
                )
            time.sleep(0.02)
        self.engine.call(lambda e: e.check_integrity())
        self.wait_published()

    def wait_published(self, timeout: float = 10.0) -> None:
        """Wait until the engine loop published a metrics snapshot after this call (so
        /metrics shows the engine as it is now)."""
        collector = self.app.state.metrics.collector
        seen = self.engine.call(lambda _: collector.published)
        deadline = time.monotonic() + timeout
        while collector.published <= seen:
            assert time.monotonic() < deadline, f"no metrics snapshot published in {timeout} s"
            time.sleep(0.01)


@contextlib.contextmanager
def running_server(
    *,
    max_waiting: int = 256,
    model_seed: int = 0,
    graceful_timeout: float = 5.0,
    app_options: dict[str, Any] | None = None,
    **engine_options: Any,
) -> Iterator[Server]:
    """Start the real app on uvicorn (127.0.0.1, a free port) in a thread, as ``pagedkv serve``
    runs it (``draining_server``); stop it after. ``app_options``: more ``create_app``
    arguments."""
    options = {**ENGINE_DEFAULTS, **engine_options}
    engine = AsyncLLMEngine(LLMEngine(tiny_random_llama(model_seed), **options))
    app = create_app(engine, model_name=MODEL, max_waiting=max_waiting, **(app_options or {}))
    port = free_port()
    server = draining_server(
        app, host="127.0.0.1", port=port, log_level="warning", graceful_timeout=graceful_timeout
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:  # set once uvicorn listens; a failed start ends the thread
        if not thread.is_alive() or time.monotonic() > deadline:
            engine.shutdown()
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{port}", engine, MODEL, app, server)
    finally:
        server.should_exit = True
        thread.join(graceful_timeout + 30.0)
        engine.shutdown()


def sse_events(lines: Iterator[str]) -> Iterator[Any]:
    """The JSON payloads of an SSE stream's ``data:`` lines, then the string ``"[DONE]"``."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        yield data if data == "[DONE]" else json.loads(data)


def check_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    """Assert an OpenAI-format error with ``status``; return its ``error`` object."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str), err
    assert err["message"], err
    assert isinstance(err["type"], str), err
    assert err["type"], err
    assert err["code"] is None or isinstance(err["code"], str), err  # OpenAI's: not the status
    assert "Traceback" not in err["message"], err
    return dict(err)


def metric(m: dict[str, float], name: str, **labels: str) -> float:
    """The value of sample ``name`` (after ``pagedkv:``) with ``labels`` and the test model's
    ``model_name`` label, from :func:`parse_metrics`'s dict."""
    both = {"model_name": MODEL, **labels}
    return m["pagedkv:" + name + "{" + ",".join(f"{k}={v}" for k, v in sorted(both.items())) + "}"]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name (with sorted labels if any): value}."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out
