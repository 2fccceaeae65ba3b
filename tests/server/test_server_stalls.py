"""No request can stall the server or leave work behind: tokenising runs off the event loop
(``/health`` answers meanwhile), bodies over the limit are refused with 413, ``/metrics`` never
waits for the engine lock, a non-streaming request whose client left is aborted, and
``max_waiting`` counts prompts, not HTTP requests.

Each stall is made certain rather than likely: the tokenizer or the engine lock is held by the
test until the check is done, so no test depends on how fast the machine is."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from server_helpers import MODEL, check_error, httpx, metric, parse_metrics, running_server

COMPLETIONS = "/v1/completions"


@pytest.fixture
def held_tokenizer(server, monkeypatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """``(entered, release)``: the server's tokenizer blocks in ``encode`` until released."""
    tok = server.engine.engine.tokenizer
    encode = tok.encode
    entered, release = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(120), "the test never released the tokenizer"
        return encode(*args, **kwargs)

    monkeypatch.setattr(tok, "encode", held)
    try:
        yield entered, release
    finally:
        release.set()


@pytest.mark.parametrize("path", [COMPLETIONS, "/v1/chat/completions"])
def test_health_and_metrics_answer_while_a_prompt_is_tokenised(server, held_tokenizer, path):
    entered, release = held_tokenizer
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 3}
    if "chat" in path:
        body["messages"] = [{"role": "user", "content": "long " * 20}]
    else:
        body["prompt"] = "long " * 20
    answers: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(httpx.post(server.url + path, json=body, timeout=120))
    )
    client.start()
    try:
        assert entered.wait(60), "the request never reached the tokenizer"
        with server.http() as http:  # the event loop is free while the tokenizer works
            assert http.get("/health", timeout=10).status_code == 200
            assert http.get("/metrics", timeout=10).status_code == 200
    finally:
        release.set()
        client.join(120)
    [answer] = answers
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 3


# ------------------------------------------------------------------------------ body size
def test_body_over_the_limit_is_413():
    limit = 64 * 1024
    with running_server(app_options={"max_body_bytes": limit}) as srv, srv.http() as http:
        big = {"model": MODEL, "prompt": "x" * (limit + 1), "max_tokens": 1}
        err = check_error(http.post(COMPLETIONS, json=big), 413)
        assert str(limit) in err["message"], err
        assert err["type"] == "invalid_request_error"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            data = json.dumps(big).encode()
            for i in range(0, len(data), 8192):
                yield data[i : i + 8192]

        check_error(http.post(COMPLETIONS, content=chunks()), 413)
        small = {"model": MODEL, "prompt": "x" * 100, "max_tokens": 1}  # still served
        assert http.post(COMPLETIONS, json=small).status_code == 200
        srv.wait_idle()


def test_default_body_limit_is_a_few_megabytes(server):
    from pagedkv.server.app import DEFAULT_MAX_BODY_BYTES

    assert 1 << 20 <= DEFAULT_MAX_BODY_BYTES <= 16 << 20
    body = b'{"model": "tiny-random", "prompt": "' + b"y" * DEFAULT_MAX_BODY_BYTES + b'"}'
    with server.http() as http:
        r = http.post(COMPLETIONS, content=body, headers={"content-type": "application/json"})
    check_error(r, 413)


# ---------------------------------------------------------------------------------- metrics
def test_metrics_answer_while_the_engine_lock_is_held(server):
    # holding the lock as a long step does: the loop cannot publish meanwhile
    with server.engine.lock, server.http() as http:
        r = http.get("/metrics", timeout=10)
    assert r.status_code == 200
    assert metric(parse_metrics(r.text), "num_requests_running") == 0


# ------------------------------------------------------------------------ disconnect, whole
def _slow_steps(server, monkeypatch, seconds: float = 0.02) -> None:
    runner = server.engine.engine.runner
    run_step = runner.run_step
    monkeypatch.setattr(runner, "run_step", lambda *a: (time.sleep(seconds), run_step(*a))[1])


def test_non_streaming_client_that_leaves_is_aborted(server, monkeypatch):
    _slow_steps(server, monkeypatch)
    max_tokens = 480  # ~10 s at the slowed step: far longer than the wait below
    before = server.engine.call(lambda e: dict(e.totals))
    m0 = parse_metrics(server.http().get("/metrics").text)
    body = json.dumps(
        {"model": MODEL, "prompt": "leave", "max_tokens": max_tokens, "ignore_eos": True}
    ).encode()
    head = (
        f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        while server.state()[0] < 1:  # the request is in the engine
            time.sleep(0.01)
    server.wait_idle(timeout=5.0)  # aborted: every block back long before it could finish
    after = server.engine.call(lambda e: dict(e.totals))
    assert after["finished_requests"] - before["finished_requests"] == 1
    assert after["generation_tokens"] - before["generation_tokens"] < max_tokens
    m1 = parse_metrics(server.http().get("/metrics").text)
    for reason in ("stop", "length"):  # an abort is no success
        key = {"finished_reason": reason}
        assert metric(m1, "request_success_total", **key) == metric(
            m0, "request_success_total", **key
        )


# ------------------------------------------------------------------------------ max_waiting
def test_max_waiting_counts_prompts():
    with running_server(max_waiting=4) as srv, srv.http() as http:
        answers: list[httpx.Response] = []

        def post(prompts: list[str]) -> None:
            body = {"model": MODEL, "prompt": prompts, "max_tokens": 2}
            answers.append(httpx.post(srv.url + COMPLETIONS, json=body, timeout=120))

        with srv.engine.lock:  # the loop takes nothing in: submitted prompts stay waiting
            first = threading.Thread(target=post, args=(["a", "b", "c"],))
            first.start()
            deadline = time.monotonic() + 60
            while srv.engine.num_waiting < 3:
                assert time.monotonic() < deadline, "the first request was never submitted"
                time.sleep(0.01)
            over = http.post(COMPLETIONS, json={"model": MODEL, "prompt": ["d", "e"]})
            never = http.post(COMPLETIONS, json={"model": MODEL, "prompt": list("abcde")})
            assert srv.engine.num_waiting == 3  # neither queued anything
        first.join(120)
        err = check_error(over, 503)
        assert "3 prompts waiting" in err["message"], err
        assert over.headers.get("retry-after") == "1"
        err = check_error(never, 400)
        assert "5 prompts" in err["message"], err
        assert "--max-waiting" in err["message"], err
        assert err["param"] == "prompt"
        [ok] = answers
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["choices"]) == 3
        srv.wait_idle()
