"""The OpenAI routes through the official ``openai`` client against a real server on 127.0.0.1:
completions and chat, streaming and not, n > 1, stop, seeds, logprobs, penalties, prefix-cache
``cached_tokens`` and per-tenant salts, /v1/models and /health, and greedy output equal to the
offline engine's."""

from __future__ import annotations

import random
import uuid

import openai
import pytest
from server_helpers import MODEL, httpx, sse_events

from pagedkv.engine import LLM, SamplingParams
from pagedkv.models import tiny_random_llama

IGNORE_EOS = {"ignore_eos": True}


def unique_text(n: int, seed: int | None = None) -> str:
    """``n`` random ASCII letters (one token each): a prompt no earlier test cached."""
    rng = random.Random(seed if seed is not None else uuid.uuid4().int)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(n))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------- basic routes
def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    with server.http() as http:
        r = http.get("/health")
        assert r.status_code == 200
        assert r.json() == {"status": "ok"}
        r = http.get("/v1/models")
        assert r.json()["object"] == "list"


def test_models_retrieve(server):
    client = server.client()
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL
    assert card.object == "model"
    assert card.model_extra["max_model_len"] == server.engine.engine.max_request_tokens
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-17")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


def test_completion_not_streamed(server):
    r = server.client().completions.create(
        model=MODEL, prompt="Hello there", max_tokens=7, temperature=0, extra_body=IGNORE_EOS
    )
    assert r.object == "text_completion"
    assert r.model == MODEL
    assert r.id.startswith("cmpl-")
    [c] = r.choices
    assert c.index == 0
    assert c.finish_reason == "length"
    assert isinstance(c.text, str)
    assert r.usage.prompt_tokens == len("Hello there")
    assert r.usage.completion_tokens == 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_not_streamed(server):
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, *user("Hi!")],
        max_tokens=6,
        temperature=0,
        extra_body=IGNORE_EOS,
    )
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    [c] = r.choices
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str)
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 6
    # the chat template wraps the messages: the prompt is longer than the text
    assert r.usage.prompt_tokens > len("Be brief.Hi!")


def test_max_completion_tokens(server):
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=user("count"),
        max_completion_tokens=3,
        temperature=0,
        extra_body=IGNORE_EOS,
    )
    assert r.usage.completion_tokens == 3


def test_completion_streamed_matches_whole(server):
    client = server.client()
    kw = {
        "model": MODEL,
        "prompt": "Streaming test prompt",
        "max_tokens": 20,
        "temperature": 0,
        "extra_body": IGNORE_EOS,
    }
    whole = client.completions.create(**kw)
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    )
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1])
    # include_usage: every chunk carries usage=None except a final one with no choices
    assert all(ch.usage is None for ch in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert len({ch.id for ch in chunks}) == 1


def test_chat_streamed_matches_whole(server):
    client = server.client()
    kw = {
        "model": MODEL,
        "messages": user("Tell me a story"),
        "max_tokens": 16,
        "temperature": 0,
        "extra_body": IGNORE_EOS,
    }
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(ch.usage is None for ch in chunks)  # no include_usage: no usage chunk


def test_raw_sse_framing(server):
    body = {
        "model": MODEL,
        "prompt": "sse",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        **IGNORE_EOS,
    }
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == 4
    assert events[-2]["choices"] == []


# ------------------------------------------------------------------------------------- n > 1
def test_n_and_several_prompts(server):
    prompts = ["first prompt", "the second one"]
    r = server.client().completions.create(
        model=MODEL,
        prompt=prompts,
        n=3,
        max_tokens=5,
        temperature=0.8,
        seed=1,
        extra_body=IGNORE_EOS,
    )
    assert [c.index for c in r.choices] == list(range(6))
    assert all(c.finish_reason == "length" for c in r.choices)
    assert r.usage.prompt_tokens == sum(len(p) for p in prompts)
    assert r.usage.completion_tokens == 6 * 5
    # choice p * n + i is sample i of prompt p: the same as asking for prompt p alone
    alone = server.client().completions.create(
        model=MODEL,
        prompt=prompts[1],
        n=3,
        max_tokens=5,
        temperature=0.8,
        seed=1,
        extra_body=IGNORE_EOS,
    )
    assert [c.text for c in r.choices[3:]] == [c.text for c in alone.choices]


def test_n_token_id_prompts(server):
    ids = [[BYTE + 3 for BYTE in b"abc"], [BYTE + 3 for BYTE in b"defgh"]]
    r = server.client().completions.create(
        model=MODEL, prompt=ids, max_tokens=2, temperature=0, extra_body=IGNORE_EOS
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == 8


def test_n_streamed_chat(server):
    chunks = list(
        server.client().chat.completions.create(
            model=MODEL,
            messages=user("two answers"),
            n=2,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=IGNORE_EOS,
        )
    )
    texts = {0: "", 1: ""}
    finished = []
    roles = []
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
            if c.delta.role:
                roles.append(c.index)
            if c.finish_reason:
                finished.append(c.index)
    assert sorted(finished) == [0, 1]
    assert sorted(roles) == [0, 1]  # each choice opens with the assistant role once
    assert texts[0] == texts[1]  # greedy: both samples agree
    assert chunks[-1].usage.completion_tokens == 12


# ------------------------------------------------------------------------------------ stop
def test_stop_strings(server):
    client = server.client()
    kw = {
        "model": MODEL,
        "prompt": "Stop me if you can",
        "temperature": 0,
        "extra_body": IGNORE_EOS,
    }
    full = client.completions.create(max_tokens=40, **kw).choices[0].text
    # two complete characters from the middle of the greedy text are the stop string
    spots = [i for i in range(3, len(full) - 1) if "\ufffd" not in full[i : i + 2]]
    assert spots, f"no stop candidate in the greedy text {full!r}"
    stop = full[spots[0] : spots[0] + 2]
    expected = full[: full.find(stop)]
    r = client.completions.create(max_tokens=40, stop=[stop, "\x00never"], **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == expected
    chunks = list(client.completions.create(max_tokens=40, stop=stop, stream=True, **kw))
    assert "".join(ch.choices[0].text for ch in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


# ----------------------------------------------------------------------------------- seeds
def test_seed_reproducible(server):
    client = server.client()
    kw = {
        "model": MODEL,
        "messages": user("Surprise me"),
        "max_tokens": 16,
        "temperature": 1.0,
        "extra_body": IGNORE_EOS,
    }
    a = client.chat.completions.create(seed=1234, n=2, **kw)
    b = client.chat.completions.create(seed=1234, n=2, **kw)
    c = client.chat.completions.create(seed=4321, n=2, **kw)
    texts = [[ch.message.content for ch in r.choices] for r in (a, b, c)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]
    assert texts[0][0] != texts[0][1]  # the n samples differ from each other
    streamed = list(client.chat.completions.create(seed=1234, stream=True, **kw))
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed) == texts[0][0]


# -------------------------------------------------------------------------------- logprobs
def test_completion_logprobs_shape(server):
    r = server.client().completions.create(
        model=MODEL,
        prompt="logprobs please",
        max_tokens=6,
        temperature=0,
        logprobs=3,
        extra_body=IGNORE_EOS,
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for lp_value, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert lp_value <= 0.0
        # the top 3 and the chosen token, keyed by text (tokens that decode alike collapse)
        assert 1 <= len(top) <= 4
        # greedy: the chosen token is the most likely one
        assert lp_value >= max(top.values()) - 1e-6


def test_chat_logprobs_shape(server):
    r = server.client().chat.completions.create(
        model=MODEL,
        messages=user("logprobs"),
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body=IGNORE_EOS,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert entry.logprob == pytest.approx(values[0])  # greedy picks the top token
        assert entry.bytes == list(entry.token.encode())
    no_lp = server.client().chat.completions.create(
        model=MODEL, messages=user("logprobs"), max_tokens=2, temperature=0
    )
    assert no_lp.choices[0].logprobs is None


def test_streamed_logprobs_cover_every_token(server):
    chunks = list(
        server.client().completions.create(
            model=MODEL,
            prompt="stream logprobs",
            max_tokens=24,
            temperature=0,
            logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=IGNORE_EOS,
        )
    )
    tokens = [
        t
        for ch in chunks
        if ch.choices and ch.choices[0].logprobs
        for t in ch.choices[0].logprobs.token_logprobs
    ]
    assert len(tokens) == chunks[-1].usage.completion_tokens == 24


def _offsets_of(tokens: list[str], start: int = 0) -> list[int]:
    out = []
    for t in tokens:
        out.append(start)
        start += len(t)
    return out


def test_completion_text_offset(server):
    """``text_offset``: where each token's text starts in the choice's text, whole or streamed
    (the offsets continue from chunk to chunk)."""
    kw = {"model": MODEL, "prompt": "offsets", "max_tokens": 12, "temperature": 0, "logprobs": 1}
    client = server.client()
    whole = client.completions.create(**kw, n=2, extra_body=IGNORE_EOS)
    for choice in whole.choices:
        lp = choice.logprobs
        assert lp.text_offset == _offsets_of(lp.tokens), lp
        assert len(lp.text_offset) == 12
    chunks = list(client.completions.create(**kw, stream=True, extra_body=IGNORE_EOS))
    tokens = [t for ch in chunks for t in ch.choices[0].logprobs.tokens]
    offsets = [o for ch in chunks for o in ch.choices[0].logprobs.text_offset]
    assert len(chunks) > 1
    assert tokens == whole.choices[0].logprobs.tokens
    assert offsets == whole.choices[0].logprobs.text_offset


# ------------------------------------------------------------------------------- penalties
def test_penalties_accepted(server):
    r = server.client().completions.create(
        model=MODEL,
        prompt="repeat repeat repeat",
        max_tokens=8,
        temperature=0,
        presence_penalty=0.5,
        frequency_penalty=0.7,
        extra_body={"repetition_penalty": 1.3, "top_k": 20, "min_p": 0.01, **IGNORE_EOS},
    )
    assert r.usage.completion_tokens == 8


# ----------------------------------------------------------------------------- prefix cache
def test_cached_tokens_on_repeated_prompt(server):
    prompt = unique_text(200)
    client = server.client()
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached == (200 - 1) // 16 * 16  # every full block but the one holding the last token
    assert again.choices[0].text == first.choices[0].text


def test_cached_tokens_chat_system_prompt(server):
    system = {"role": "system", "content": unique_text(150)}
    client = server.client()
    client.chat.completions.create(model=MODEL, messages=[system, *user("one")], max_tokens=1)
    r = client.chat.completions.create(model=MODEL, messages=[system, *user("two")], max_tokens=1)
    assert r.usage.prompt_tokens_details.cached_tokens >= 144


@pytest.mark.parametrize("how", ["user", "cache_salt"])
def test_tenants_do_not_share_cache(server, how):
    prompt = unique_text(120)
    client = server.client()

    def cached(tenant: str | None) -> int:
        kw = {"model": MODEL, "prompt": prompt, "max_tokens": 1}
        if tenant is not None:
            kw.update({"user": tenant} if how == "user" else {"extra_body": {"cache_salt": tenant}})
        return client.completions.create(**kw).usage.prompt_tokens_details.cached_tokens

    assert cached("alice") == 0
    assert cached("alice") == 112
    assert cached("bob") == 0  # another tenant never hits alice's blocks
    assert cached(None) == 0  # nor does an anonymous request
    assert cached("bob") == 112
    assert cached(None) == 112


# ------------------------------------------------------------------------ offline equality
@pytest.fixture(scope="module")
def offline() -> LLM:
    return LLM(tiny_random_llama(0), block_size=16, num_blocks=192)


@pytest.mark.parametrize("penalties", [False, True])
def test_greedy_equals_offline_engine(server, offline, penalties):
    extra = (
        {"repetition_penalty": 1.2, "presence_penalty": 0.3, "frequency_penalty": 0.4}
        if penalties
        else {}
    )
    params = SamplingParams(temperature=0.0, max_tokens=24, **extra)
    api_extra = {"repetition_penalty": extra["repetition_penalty"]} if penalties else {}
    api_kw = {k: v for k, v in extra.items() if k != "repetition_penalty"}
    client = server.client()
    prompts = ["Hello, paged world", "The KV cache is", [BYTE + 3 for BYTE in b"token ids!"]]
    for prompt in prompts:
        [ref] = offline.generate(prompt, params)
        r = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body=api_extra, **api_kw
        )
        assert r.choices[0].text == ref.outputs[0].text, prompt
        assert r.usage.completion_tokens == len(ref.outputs[0].token_ids)
        assert r.choices[0].finish_reason == ref.outputs[0].finish_reason
    messages = [{"role": "system", "content": "You are a tiny model."}, *user("Hi there")]
    [ref] = offline.chat(messages, params)
    r = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=24, temperature=0, extra_body=api_extra, **api_kw
    )
    assert r.choices[0].message.content == ref.outputs[0].text
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)


def test_raw_httpx_request_without_client(server):
    """curl-style: a plain JSON POST, no SDK."""
    r = httpx.post(
        f"{server.url}/v1/completions",
        timeout=30,
        json={"model": MODEL, "prompt": "curl", "max_tokens": 3, "ignore_eos": True},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["index"] == 0
