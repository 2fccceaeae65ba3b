"""When a sample stops and what it shows: stop strings spanning tokens (with and without the
string in the output), stop token ids, EOS vs ignore_eos, min_tokens and max_tokens.

Expected outputs are derived from an unstopped greedy reference: the byte-level tokenizer makes
each character its own token, so any stop string of two or more characters spans tokens."""

from __future__ import annotations

import pytest
from engine_helpers import (
    decode,
    drive,
    greedy,
    greedy_ref,
    make_engine,
    random_prompts,
    with_eos,
)

from pagedkv.engine import SamplingParams

N = 24
CANDIDATES = random_prompts([8] * 6 + [13] * 6, seed=40)


def _printable(c: str) -> bool:
    return " " <= c <= "~"


def _stop_case(length: int, skip: int = 0):
    """(prompt, reference tokens, full text, stop string) with a printable-ASCII stop string of
    ``length`` characters that starts after the first output character."""
    found = 0
    for p in CANDIDATES:
        ref = greedy_ref(p, N)
        text = decode(ref)
        for i in range(1, len(text) - length + 1):
            s = text[i : i + length]
            if all(_printable(c) for c in s) and text.find(s) > 0:
                if found == skip:
                    return p, ref, text, s
                found += 1
                break
    raise AssertionError("no candidate prompt has a printable stop string")  # pragma: no cover


def _first_stop_token(ref, stop):
    """Tokens the engine must have produced when ``stop`` first appears in the text."""
    for k in range(1, len(ref) + 1):
        if stop in decode(ref[:k]):
            return k
    raise AssertionError(stop)  # pragma: no cover


@pytest.mark.parametrize(("length", "skip"), [(2, 0), (2, 1), (3, 0)])
@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(length, skip, include):
    p, ref, text, stop = _stop_case(length, skip)
    pos = text.find(stop)
    params = greedy(N, stop=[stop], include_stop_str_in_output=include)
    run = drive(make_engine(block_size=4, num_blocks=64), [("s", p, params)])
    c = run.final["s"].outputs[0]
    assert c.finish_reason == "stop"
    assert c.stop_reason == stop
    k = _first_stop_token(ref, stop)
    assert c.token_ids == ref[:k]
    assert len(c.token_ids) < N
    assert c.text == (text[: pos + len(stop)] if include else text[:pos])
    assert c.text.endswith(stop) == include


def test_earliest_of_several_stop_strings_wins():
    p, _ref, text, stop = _stop_case(2)
    pos = text.find(stop)
    later = next(
        text[i : i + n]
        for n in (2, 3, 1)
        for i in range(pos + 1, len(text) - n + 1)
        if text.find(text[i : i + n]) > pos and "\ufffd" not in text[i : i + n]
    )
    params = greedy(N, stop=[later, stop])
    c = drive(make_engine(block_size=4, num_blocks=64), [("s", p, params)]).final["s"].outputs[0]
    assert c.stop_reason == stop
    assert c.text == text[:pos]


def test_stop_string_not_in_output_runs_to_length():
    p = CANDIDATES[0]
    ref = greedy_ref(p, 10)
    c = (
        drive(
            make_engine(block_size=4, num_blocks=64), [("s", p, greedy(10, stop=["\x00never\x00"]))]
        )
        .final["s"]
        .outputs[0]
    )
    assert c.finish_reason == "length"
    assert c.stop_reason is None
    assert c.token_ids == ref
    assert c.text == decode(ref)


def test_stop_token_ids():
    p = CANDIDATES[1]
    ref = greedy_ref(p, N)
    k = 5
    stop_tok = ref[k]
    first = ref.index(stop_tok)
    run = drive(
        make_engine(block_size=4, num_blocks=64),
        [("s", p, greedy(N, stop_token_ids=[stop_tok, 319]))],
    )
    c = run.final["s"].outputs[0]
    assert c.finish_reason == "stop"
    assert c.stop_reason == stop_tok
    assert c.token_ids == ref[: first + 1]  # the stop token is kept in the ids
    assert c.text == decode(ref[: first + 1])


def _eos_case():
    """A prompt whose greedy output contains a special (text-less) token, used as the EOS."""
    for p in CANDIDATES:
        ref = greedy_ref(p, N)
        for k, t in enumerate(ref):
            if t >= 259 and k >= 2 and t not in ref[:k]:
                return p, ref, k, t
    raise AssertionError("no prompt emits a special token")  # pragma: no cover


def test_eos_stops_unless_ignored(lm):
    p, ref, k, eos = _eos_case()
    model = with_eos(lm, [eos])
    eng = make_engine(model, block_size=4, num_blocks=64)
    plain = SamplingParams(temperature=0.0, max_tokens=N)
    run = drive(
        eng,
        [
            ("eos", p, plain),
            ("ignore", p, SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True)),
        ],
    )
    c = run.final["eos"].outputs[0]
    assert c.finish_reason == "stop"
    assert c.stop_reason is None
    assert c.token_ids == ref[: k + 1]  # EOS is the last id ...
    assert c.text == decode(ref[:k])  # ... and shows no text
    ig = run.final["ignore"].outputs[0]
    assert ig.finish_reason == "length"
    assert ig.token_ids == ref


def test_min_tokens_suppresses_eos_and_stops(lm):
    p, ref, k, eos = _eos_case()
    model = with_eos(lm, [eos])
    min_tokens = k + 3
    eng = make_engine(model, block_size=4, num_blocks=64)
    params = SamplingParams(temperature=0.0, max_tokens=N, min_tokens=min_tokens)
    c = drive(eng, [("m", p, params)]).final["m"].outputs[0]
    assert c.token_ids[:k] == ref[:k]
    assert c.token_ids[k] != eos  # EOS banned: the runner-up token instead
    assert eos not in c.token_ids[:min_tokens]
    assert len(c.token_ids) >= min_tokens
    # a stop token id is banned before min_tokens too
    stop_tok = ref[1]
    c2 = drive(
        make_engine(block_size=4, num_blocks=64),
        [("m", p, greedy(N, stop_token_ids=[stop_tok], min_tokens=4))],
    ).final["m"]
    out = c2.outputs[0].token_ids
    assert out[:1] == ref[:1]
    assert out[1] != stop_tok
    assert stop_tok not in out[:4]


def test_min_tokens_delays_stop_string():
    p, ref, text, stop = _stop_case(2)
    k = _first_stop_token(ref, stop)
    params = greedy(N, stop=[stop], min_tokens=k)
    c = drive(make_engine(block_size=4, num_blocks=64), [("s", p, params)]).final["s"].outputs[0]
    assert c.finish_reason == "stop"  # reached at exactly min_tokens: still stops
    params = greedy(N, stop=[stop], min_tokens=min(k + 1, N))
    c = drive(make_engine(block_size=4, num_blocks=64), [("s", p, params)]).final["s"].outputs[0]
    assert len(c.token_ids) > k  # not checked before min_tokens ...
    assert c.token_ids == ref[: len(c.token_ids)]
    # ... and the occurrence completed before min_tokens never counts later: the text is not
    # cut back behind what was already streamed (drive() checks the deltas add up)
    full = decode(c.token_ids)
    assert full.startswith(c.text)
    assert len(c.text) > text.find(stop)
    if c.finish_reason == "stop":
        assert full[len(c.text) :].startswith(stop)


@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_max_tokens_is_length(max_tokens):
    p = CANDIDATES[2]
    c = (
        drive(make_engine(block_size=4, num_blocks=64), [("s", p, greedy(max_tokens))])
        .final["s"]
        .outputs[0]
    )
    assert c.finish_reason == "length"
    assert c.stop_reason is None
    assert c.token_ids == greedy_ref(p, max_tokens)


def test_skip_special_tokens_false_shows_specials():
    p, ref, k, eos = _eos_case()
    c = (
        drive(
            make_engine(block_size=4, num_blocks=64),
            [("s", p, greedy(k + 1, skip_special_tokens=False))],
        )
        .final["s"]
        .outputs[0]
    )
    assert c.token_ids == ref[: k + 1]
    assert c.text.endswith(f"<|reserved_{eos - 259}|>")
