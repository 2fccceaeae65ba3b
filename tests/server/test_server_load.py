"""The server under load and under failure: a client that disconnects mid-stream aborts its
request and frees its blocks; 32 concurrent streaming clients (some disconnecting) leave no
request, no block and an intact engine behind, and greedy answers stay exact under batching and
preemption; /metrics counts exactly what the engine did."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from server_helpers import MODEL, httpx, metric, parse_metrics, running_server, sse_events


def totals(server) -> dict[str, float]:
    return server.engine.call(lambda e: dict(e.totals))


# ------------------------------------------------------------------------------ disconnect
def _slow_steps(server, monkeypatch, seconds=0.01):
    """Make each engine step take ``seconds`` more: the tiny model would otherwise finish a
    long request before the test's next move reaches the server."""
    runner = server.engine.engine.runner
    run_step = runner.run_step

    def slow_run_step(*args):
        time.sleep(seconds)
        return run_step(*args)

    monkeypatch.setattr(runner, "run_step", slow_run_step)


def test_disconnect_mid_stream_aborts(server, monkeypatch):
    _slow_steps(server, monkeypatch)
    max_tokens = 480
    before = totals(server)
    body = {
        "model": MODEL,
        "prompt": "disconnect me",
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
    }
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = sse_events(r.iter_lines())
        first = [next(events), next(events)]
        assert all(isinstance(e, dict) for e in first)
        requests, used = server.state()
        assert requests == 1  # in flight,
        assert used > 0  # holding blocks
    closed = time.monotonic()
    server.wait_idle(timeout=5.0)  # no request left, every block back
    freed_after = time.monotonic() - closed
    after = totals(server)
    generated = after["generation_tokens"] - before["generation_tokens"]
    assert generated < max_tokens, "the request ran to the end instead of being aborted"
    assert after["finished_requests"] - before["finished_requests"] == 1
    assert freed_after < 4.0


def test_disconnect_before_first_token_and_chat(server):
    """Several streams (chat and completions, n = 2) dropped right after the headers."""

    async def drop(kind: str) -> None:
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        body: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 400,
            "stream": True,
            "n": 2,
            "ignore_eos": True,
        }
        if kind == "chat":
            body["messages"] = [{"role": "user", "content": "bye " * 20}]
        else:
            body["prompt"] = "bye " * 20
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
            http.stream("POST", path, json=body) as r,
        ):
            assert r.status_code == 200

    async def main() -> None:
        await asyncio.gather(*(drop(k) for k in ["chat", "completion"] * 3))

    asyncio.run(asyncio.wait_for(main(), 30))
    server.wait_idle(timeout=5.0)


# ----------------------------------------------------------------------------- concurrency
SYSTEM = "You are a helpful assistant. Answer briefly and precisely. " * 3


def make_jobs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    words = ["paged", "cache", "block", "token", "prefix", "tree", "swap", "query", "kv"]
    jobs = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 30)))
        job: dict[str, Any] = {
            "i": i,
            "kind": rng.choice(["chat", "completion"]),
            "system": rng.random() < 0.5,
            "text": text,
            "max_tokens": rng.randint(1, 24),
            "n": 2 if rng.random() < 0.1 else 1,
            "greedy": rng.random() < 0.4,
            "drop": rng.random() < 0.1,
            "usage": rng.random() < 0.7,
        }
        jobs.append(job)
    return jobs


async def run_job(client, job: dict[str, Any]) -> dict[str, Any]:
    common: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": job["max_tokens"],
        "n": job["n"],
        "stream": True,
        "temperature": 0 if job["greedy"] else 0.9,
        "seed": job["i"],
        "extra_body": {"ignore_eos": True},
    }
    if job["usage"]:
        common["stream_options"] = {"include_usage": True}
    if job["kind"] == "chat":
        messages = [{"role": "system", "content": SYSTEM}] if job["system"] else []
        stream = await client.chat.completions.create(
            messages=[*messages, {"role": "user", "content": job["text"]}], **common
        )
    else:
        prompt = (SYSTEM if job["system"] else "") + job["text"]
        stream = await client.completions.create(prompt=prompt, **common)
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    chunks = 0
    async for chunk in stream:
        chunks += 1
        if job["drop"] and chunks == 2:
            await stream.close()
            return {"dropped": True}
        for c in chunk.choices:
            piece = c.delta.content if job["kind"] == "chat" else c.text
            texts[c.index] = texts.get(c.index, "") + (piece or "")
            if c.finish_reason:
                assert c.index not in finish, "a choice finished twice"
                finish[c.index] = c.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    return {"dropped": False, "texts": texts, "finish": finish, "usage": usage}


def test_concurrent_streaming_clients(server):
    jobs = make_jobs(200)
    before = totals(server)
    preemptions_before = server.engine.call(lambda e: e.scheduler.num_preemptions)

    async def main() -> list[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        results: list[dict[str, Any]] = [{}] * len(jobs)
        async with server.aclient(timeout=60) as client:

            async def worker() -> None:
                while not queue.empty():
                    job = queue.get_nowait()
                    results[job["i"]] = await run_job(client, job)

            await asyncio.gather(*(worker() for _ in range(32)))
        return results

    start = time.monotonic()
    results = asyncio.run(asyncio.wait_for(main(), 120))
    elapsed = time.monotonic() - start
    server.wait_idle(timeout=10.0)  # no request left, no block leaked, integrity holds

    completion_tokens = 0
    greedy_texts: dict[tuple[str, bool, str, int], set[str]] = {}
    for job, res in zip(jobs, results, strict=True):
        if res["dropped"]:
            continue
        assert sorted(res["finish"]) == list(range(job["n"])), (job, res)
        assert set(res["finish"].values()) == {"length"}, (job, res)
        if job["usage"]:
            assert res["usage"].completion_tokens == job["max_tokens"] * job["n"]
            completion_tokens += res["usage"].completion_tokens
        if job["greedy"]:
            key = (job["kind"], job["system"], job["text"], job["max_tokens"])
            greedy_texts.setdefault(key, set()).update(res["texts"].values())
    # greedy answers: the n samples agree, whatever the batch or preemption did
    assert all(len(v) == 1 for v in greedy_texts.values())
    after = totals(server)
    assert after["finished_requests"] - before["finished_requests"] == len(jobs)
    assert completion_tokens <= after["generation_tokens"] - before["generation_tokens"]
    preempted = server.engine.call(lambda e: e.scheduler.num_preemptions) - preemptions_before
    print(f"200 streamed requests, 32 clients: {elapsed:.1f} s, {preempted} preemptions")
    assert elapsed < 90


def test_greedy_exact_under_load(server):
    """The same greedy prompts, alone first, then amid a crowd: identical answers."""
    prompts = [("prefix " * 10) + f"question {k}" for k in range(6)]

    async def ask(client, prompt: str, max_tokens: int) -> str:
        r = await client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return str(r.choices[0].text)

    async def main() -> tuple[list[str], list[str]]:
        async with server.aclient(timeout=60) as client:
            alone = [await ask(client, p, 20) for p in prompts]
            noise = [ask(client, "noise " * random.Random(k).randint(5, 60), 30) for k in range(40)]
            crowd = await asyncio.gather(*(ask(client, p, 20) for p in prompts), *noise)
        return alone, list(crowd[: len(prompts)])

    alone, crowd = asyncio.run(asyncio.wait_for(main(), 60))
    assert crowd == alone


# ----------------------------------------------------------------------------------- metrics
def test_metrics_match_the_engine():
    with running_server() as srv, srv.http() as http:
        m0 = parse_metrics(http.get("/metrics").text)
        for reason in ("stop", "length"):
            assert metric(m0, "request_success_total", finished_reason=reason) == 0
        client = srv.client()
        usages = []
        # 48 tokens: 3 full blocks, of which 2 are reusable, and the first 15 rows of the 3rd
        # (a partial block hit: the last token is computed for its logits)
        prompt = "metrics " * 6
        for _ in range(2):
            r = client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=5, extra_body={"ignore_eos": True}
            )
            usages.append(r.usage)
        assert usages[1].prompt_tokens_details.cached_tokens == 47
        r = client.completions.create(
            model=MODEL,
            prompt=["one", "two two"],
            n=2,
            max_tokens=3,
            extra_body={"ignore_eos": True},
        )
        usages.append(r.usage)
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "stream"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
        )
        usages.append(chunks[-1].usage)
        num_requests = 1 + 1 + 2 + 1  # engine requests: one per prompt, n samples each
        # refused requests change nothing
        assert (
            http.post("/v1/completions", json={"model": MODEL, "prompt": [99999]}).status_code
            == 400
        )
        assert http.post("/v1/completions", json={"model": "x", "prompt": "y"}).status_code == 404
        srv.wait_idle()  # and a metrics snapshot published after it
        resp = http.get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        m = parse_metrics(resp.text)

    prompt_tokens = sum(u.prompt_tokens for u in usages)
    assert metric(m, "prompt_tokens_total") == prompt_tokens
    assert metric(m, "generation_tokens_total") == sum(u.completion_tokens for u in usages)
    # every request ran to max_tokens (ignore_eos)
    assert metric(m, "request_success_total", finished_reason="length") == num_requests
    assert metric(m, "request_success_total", finished_reason="stop") == 0
    assert metric(m, "prefix_cache_queries_total") == prompt_tokens  # no preemption
    hits = sum(u.prompt_tokens_details.cached_tokens for u in usages)
    assert metric(m, "prefix_cache_hits_total") == hits >= 47
    assert metric(m, "num_preemptions_total") == 0
    for name in (
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "time_per_output_token_seconds",
    ):
        assert metric(m, f"{name}_count") == num_requests, name
        assert metric(m, f"{name}_bucket", le="+Inf") == num_requests, name
        assert metric(m, f"{name}_sum") >= 0.0, name
    assert (
        metric(m, "e2e_request_latency_seconds_sum")
        >= metric(m, "time_to_first_token_seconds_sum")
        > 0.0
    )
    for gauge in (
        "num_requests_running",
        "num_requests_waiting",
        "num_requests_swapped",
        "kv_cache_usage_perc",
    ):
        assert metric(m, gauge) == 0.0, gauge


def test_metrics_gauges_while_busy(server, monkeypatch):
    """While a long request streams, the running gauge and KV usage are non-zero."""
    _slow_steps(server, monkeypatch)
    body = {
        "model": MODEL,
        "prompt": "busy " * 10,
        "max_tokens": 450,
        "stream": True,
        "ignore_eos": True,
    }
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as r:
        events = sse_events(r.iter_lines())
        next(events)
        next(events)
        with server.http() as other:
            m = parse_metrics(other.get("/metrics").text)
    assert metric(m, "num_requests_running") == 1
    assert 0.0 < metric(m, "kv_cache_usage_perc") <= 1.0
