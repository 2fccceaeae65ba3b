"""Every error leaves in OpenAI's JSON format with the right status, never a 500 for bad input:
malformed bodies and fields (400), an unknown model (404), a request over the length limits
(400, naming the numbers), an unknown route (404), an overloaded queue (503)."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from server_helpers import ERROR_KEYS, MAX_MODEL_LEN, MODEL, check_error, httpx, running_server

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat_body(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **kw}


def completion_body(**kw):
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **kw}


# ----------------------------------------------------------------------- malformed bodies
@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe\x00",
        b'{"model": "tiny-random", "prompt": "x"',
        b"null",
    ],
)
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_malformed_json_is_400(server, path, raw):
    with server.http() as http:
        r = http.post(path, content=raw, headers={"content-type": "application/json"})
    err = check_error(r, 400)
    assert err["type"] == "invalid_request_error"
    if raw.startswith(b"{"):
        assert "invalid JSON" in err["message"], err
        assert err["param"] is None, err


BAD_COMPLETIONS = [
    ({"model": None}, "model"),
    ({"prompt": None}, "prompt"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": 1000.0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -5}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": 1000}, "n"),
    ({"n": "two"}, "n"),
    ({"logprobs": 50}, "logprobs"),
    ({"seed": -1}, "seed"),
    ({"stop": [""]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"min_tokens": 10}, "min_tokens"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stream": [1]}, "stream"),
    ({"stream_options": {"include_usage": [1]}}, "stream_options"),
    ({"user": 7}, "user"),
    ({"priority": "high"}, "priority"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [99999]}, "prompt"),
    ({"prompt": [[5, 6], [-1]]}, "prompt"),
    ({"prompt": ["ok", [5, 6]]}, "prompt"),
    ({"prompt": {"text": "x"}}, "prompt"),
    ({"echo": True}, "echo"),
    ({"suffix": "tail"}, "suffix"),
    ({"best_of": 3}, "best_of"),
]


@pytest.mark.parametrize(
    ("fields", "name"), BAD_COMPLETIONS, ids=[f"{n}={f[n]!r}"[:40] for f, n in BAD_COMPLETIONS]
)
def test_bad_completion_fields_are_400(server, fields, name):
    with server.http() as http:
        r = http.post(COMPLETIONS, json=completion_body(**fields))
    err = check_error(r, 400)
    assert name in err["message"], err


BAD_CHAT = [
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"messages": [{"content": "x"}]}, "role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages",
    ),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"),
    ({"top_logprobs": 30, "logprobs": True}, "top_logprobs"),
    ({"logprobs": "yes please"}, "logprobs"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
]


@pytest.mark.parametrize(
    ("fields", "name"), BAD_CHAT, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD_CHAT)]
)
def test_bad_chat_fields_are_400(server, fields, name):
    with server.http() as http:
        r = http.post(CHAT, json=chat_body(**fields))
    err = check_error(r, 400)
    assert name in err["message"], err


def test_missing_model_names_the_param(server):
    with server.http() as http:
        r = http.post(COMPLETIONS, json={"prompt": "x"})
    err = check_error(r, 400)
    assert err["param"] == "model"


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("field", [b"temperature", b"top_p", b"presence_penalty"])
def test_non_finite_numbers_from_lenient_json_are_400(server, field, value):
    # Python's json module (and so the server) reads NaN and Infinity; they must still be
    # refused cleanly
    with server.http() as http:
        r = http.post(
            COMPLETIONS,
            content=b'{"model": "tiny-random", "prompt": "x", "' + field + b'": ' + value + b"}",
            headers={"content-type": "application/json"},
        )
    err = check_error(r, 400)
    assert field.decode() in err["message"]


def test_bad_input_through_openai_client(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", temperature=-2)
    assert info.value.status_code == 400
    assert set(info.value.body) == ERROR_KEYS  # the SDK unwraps {"error": {...}}
    assert "temperature" in info.value.body["message"]


# ------------------------------------------------------------------------------ not found
def test_unknown_model_is_404(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    body = info.value.body
    assert info.value.status_code == 404
    assert set(body) == ERROR_KEYS
    assert "gpt-17" in body["message"]
    assert MODEL in body["message"]
    assert body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", stream=True)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nothing", 404),
        ("POST", "/v2/completions", 404),
        ("GET", "/", 404),
        ("GET", COMPLETIONS, 405),
        ("DELETE", "/v1/models", 405),
    ],
)
def test_unknown_route(server, method, path, status):
    with server.http() as http:
        r = http.request(method, path)
    check_error(r, status)


# ------------------------------------------------------------------------------ too long
def test_prompt_plus_max_tokens_over_the_model_length(server):
    prompt = "x" * 100
    with pytest.raises(openai.BadRequestError) as info:
        server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=500)
    msg = info.value.body["message"]
    for number in ("100", "500", "600", str(MAX_MODEL_LEN)):
        assert number in msg, msg


def test_prompt_alone_over_the_limit(server):
    # chat without max_tokens: the room left for the answer is what the limit leaves
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "y" * 600}]
        )
    msg = info.value.body["message"]
    assert str(MAX_MODEL_LEN) in msg, msg
    assert "tokens" in msg, msg
    with pytest.raises(openai.BadRequestError) as info:
        server.client().completions.create(model=MODEL, prompt="z" * 700, max_tokens=1)
    assert "700" in info.value.body["message"]


def test_chat_without_max_tokens_fills_the_room(server):
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "w" * 480}],
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.usage.prompt_tokens + r.usage.completion_tokens == MAX_MODEL_LEN
    assert r.choices[0].finish_reason == "length"


def test_refused_second_prompt_queues_nothing(server):
    with server.http() as http:
        r = http.post(COMPLETIONS, json=completion_body(prompt=[[10, 11, 12], [5] * 600]))
    check_error(r, 400)
    assert server.state() == (0, 0)  # the first prompt was taken back


# ------------------------------------------------------------------------------ overload
def test_overloaded_is_503_and_recovers():
    with running_server(max_waiting=2, max_num_seqs=1) as srv:

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as http:
                body = completion_body(max_tokens=30, ignore_eos=True)
                return list(
                    await asyncio.gather(*(http.post(COMPLETIONS, json=body) for _ in range(16)))
                )

        responses = asyncio.run(asyncio.wait_for(flood(), 60))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 503}, codes
        assert codes.count(200) >= 2
        for r in responses:
            if r.status_code == 503:
                err = check_error(r, 503)
                assert "limit 2" in err["message"], err
                assert "overloaded" in err["message"], err
                assert r.headers.get("retry-after") == "1"
            else:
                assert r.json()["usage"]["completion_tokens"] == 30
        srv.wait_idle()
        # once drained it serves again
        r = srv.client().completions.create(model=MODEL, prompt="after", max_tokens=2)
        assert len(r.choices) == 1
        srv.wait_idle()


def test_dead_engine_is_503_not_400():
    with running_server() as srv, srv.http() as http:
        srv.engine.shutdown()  # the engine loop stops (as after a crash)
        check_error(http.get("/health"), 503)
        err = check_error(http.post(COMPLETIONS, json=completion_body()), 503)
        assert "not running" in err["message"]


# ------------------------------------------------------- input that used to end in a 500
def raw_post(server, path, body):
    """POST ``body`` as JSON text with ``\\uXXXX`` escapes (a lone surrogate cannot be UTF-8)."""
    with server.http() as http:
        return http.post(
            path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (COMPLETIONS, {"prompt": "a\ud800b"}, "prompt"),
        (COMPLETIONS, {"prompt": ["ok", "x\udfff"]}, "prompt"),
        (COMPLETIONS, {"stop": ["\ud800"]}, "stop"),
        (COMPLETIONS, {"user": "\ud800"}, "user"),
        (CHAT, {"messages": [{"role": "user", "content": "hi \ud800"}]}, "messages"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
            "messages",
        ),
    ],
)
def test_lone_surrogate_is_400_naming_the_field(server, path, fields, param):
    body = chat_body(**fields) if path == CHAT else completion_body(**fields)
    err = check_error(raw_post(server, path, body), 400)
    assert err["param"] == param, err
    assert "Unicode" in err["message"], err


def test_tiny_temperature_and_top_p_are_greedy(server):
    """Below float32's range they used to divide to inf and fail the request."""
    prompt = "underflow " * 3
    greedy = completion_body(prompt=prompt, max_tokens=8, temperature=0, ignore_eos=True)
    with server.http() as http:
        want = http.post(COMPLETIONS, json=greedy).json()["choices"][0]["text"]
        for extra in ({"temperature": 1e-40}, {"top_p": 1e-300, "seed": 3}, {"top_p": 0}):
            body = {**greedy, "temperature": 1.0, **extra}
            r = http.post(COMPLETIONS, json=body)
            assert r.status_code == 200, (extra, r.text)
            assert r.json()["choices"][0]["text"] == want, extra


def test_repetition_penalty_that_overflows_is_400(server):
    err = check_error(
        raw_post(server, COMPLETIONS, completion_body(repetition_penalty=1e-300)), 400
    )
    assert err["param"] == "repetition_penalty", err
    assert "0.01" in err["message"], err


def test_stop_token_ids_outside_the_vocabulary_are_400(server):
    vocab = server.engine.engine.vocab_size
    body = completion_body(stop_token_ids=[5, vocab], min_tokens=1)
    err = check_error(raw_post(server, COMPLETIONS, body), 400)
    assert err["param"] == "stop_token_ids", err
    assert str(vocab) in err["message"], err
    ok = completion_body(stop_token_ids=[vocab - 1], min_tokens=1)
    assert raw_post(server, COMPLETIONS, ok).status_code == 200


# ---------------------------------------------------------------------- OpenAI's error fields
@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"n": 1000}, "n"),
        ({"seed": -1}, "seed"),
        ({"min_tokens": 10}, "min_tokens"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"prompt": [99999]}, "prompt"),
        ({"best_of": 3}, "best_of"),
    ],
)
def test_value_errors_name_the_param(server, fields, param):
    with server.http() as http:
        err = check_error(http.post(COMPLETIONS, json=completion_body(**fields)), 400)
    assert err["param"] == param, err
    assert err["code"] is None, err


def test_error_codes_are_openai_strings(server):
    with server.http() as http:
        err = check_error(http.post(COMPLETIONS, json=completion_body(model="nope")), 404)
        assert err["code"] == "model_not_found", err
        err = check_error(http.post(COMPLETIONS, json=completion_body(prompt="x" * 600)), 400)
        assert err["code"] == "context_length_exceeded", err
        assert err["param"] == "prompt", err


# ------------------------------------------------------------- a pool smaller than the model
def test_pool_smaller_than_the_model_is_advertised_and_named():
    with running_server(num_blocks=20) as srv:  # 19 usable blocks of 16: 304 < 512 tokens
        limit = srv.engine.engine.max_request_tokens
        assert limit < MAX_MODEL_LEN
        client = srv.client()
        [card] = client.models.list().data
        assert card.model_extra["max_model_len"] == limit
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=MODEL, prompt=[7] * (limit - 4), max_tokens=5)
        msg = info.value.body["message"]
        for part in ("--kv-cache-memory", "--num-blocks", str(limit), str(MAX_MODEL_LEN)):
            assert part in msg, msg
        r = client.completions.create(  # exactly the advertised length is served
            model=MODEL, prompt=[7] * (limit - 4), max_tokens=4, extra_body={"ignore_eos": True}
        )
        assert r.usage.total_tokens == limit
        srv.wait_idle()
