"""The engine demo behind ``pagedkv demo``: the chat requests, serving them on a real model, and
the statistics it prints and returns.

The command line (options, ``--blocks``, JSON output) is :mod:`pagedkv.demo`, whose docstring
tells the story this demo shows. Torch and the engine are imported only when the demo runs, so
``pagedkv --help`` stays light.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SYSTEM_PROMPT = (
    "You are a helpful assistant answering quiz questions about geography, science "
    "and everyday life. Answer each question in one short, correct sentence."
)


@dataclass(frozen=True)
class DemoRequest:
    question: str
    expect: tuple[str, ...] = ()  # words a correct answer contains (any of them)
    n: int = 1
    temperature: float = 0.0
    seed: int = 0  # added to the demo's --seed


REQUESTS = (
    DemoRequest("What is the capital of France?", ("Paris",)),
    DemoRequest("What is the capital of Japan?", ("Tokyo",)),
    DemoRequest("What color is the sky on a clear day?", ("blue",)),
    DemoRequest("How many days are there in a week?", ("7", "seven")),
    DemoRequest("Suggest a healthy breakfast.", n=2, temperature=0.7, seed=7),
    DemoRequest("What do bees make?", ("honey",)),
    DemoRequest("What is the boiling point of water in Celsius?", ("100",)),
    DemoRequest("Which ocean is the largest?", ("Pacific",)),
)


def run_engine_demo(
    *,
    model: Any = None,
    num_blocks: int | None = None,
    block_size: int = 16,
    policy: str = "lru",
    max_tokens: int = 32,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Serve :data:`REQUESTS` (one arriving per step) and return the statistics and answers.

    ``model``: what :func:`pagedkv.cli_setup.load_cli_model` takes (None = the default model,
    ``"tiny-random"`` for tests) or a :class:`~pagedkv.models.LoadedModel`. ``num_blocks``
    defaults to what the longest request needs alone plus two: every request fits, but the
    running ones outgrow the pool as they decode, so the scheduler has to preempt (8 blocks on
    SmolLM2)."""
    from pagedkv.cli_setup import check_eviction_policy, load_cli_model
    from pagedkv.engine import EngineConfig, LLMEngine, RequestOutput, SamplingParams
    from pagedkv.engine.llm import apply_chat_template
    from pagedkv.models import LoadedModel

    # every option is checked before the model loads
    SamplingParams(max_tokens=max_tokens)
    EngineConfig(num_blocks=num_blocks, block_size=block_size)
    check_eviction_policy(policy, "--policy")

    say: Callable[..., None] = (
        functools.partial(print, flush=True)
        if verbose  # progress
        else (lambda *a, **k: None)
    )
    t0 = time.perf_counter()
    loaded = model if isinstance(model, LoadedModel) else load_cli_model(model)
    load_s = time.perf_counter() - t0
    system = [{"role": "system", "content": SYSTEM_PROMPT}]
    prompts = [
        apply_chat_template(loaded.tokenizer, [*system, {"role": "user", "content": r.question}])
        for r in REQUESTS
    ]
    if num_blocks is None:
        need = -(-(max(map(len, prompts)) + max_tokens) // block_size)
        num_blocks = need + 2
    engine = LLMEngine(
        loaded,
        EngineConfig(
            num_blocks=num_blocks, block_size=block_size, eviction_policy=policy, seed=seed
        ),
    )
    sys_tokens = len(apply_chat_template(engine.tokenizer, system, add_generation_prompt=False))
    say(
        f"model {loaded.name} (loaded in {load_s:.1f} s); KV pool {num_blocks} blocks x "
        f"{block_size} tokens, eviction {policy}, preemption by recompute"
    )
    say(
        f"{len(REQUESTS)} chat requests share a {sys_tokens}-token system prompt and arrive one "
        "per step; req-5 asks for n=2 samples. Answers are printed in request order, each "
        "once it and those before it have finished:\n"
    )

    pending = list(enumerate(REQUESTS))
    finals: dict[str, RequestOutput] = {}
    questions: dict[str, DemoRequest] = {}
    width = max(len(r.question) for r in REQUESTS)
    shown = 0  # answers printed so far, in request order
    t_serve = time.perf_counter()
    while pending or engine.has_unfinished_requests():
        if pending:  # one arrival per step, while the earlier requests run
            i, r = pending.pop(0)
            rid = f"req-{i + 1}"
            engine.add_request(
                rid,
                prompts[i],
                SamplingParams(
                    n=r.n,
                    temperature=r.temperature,
                    top_p=0.9 if r.temperature else 1.0,
                    max_tokens=max_tokens,
                    seed=seed + r.seed,
                ),
            )
            questions[rid] = r
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        while (rid := f"req-{shown + 1}") in finals:
            _print_answer(say, finals[rid], questions[rid].question, width)
            shown += 1
        engine.check_integrity()
    serve_s = time.perf_counter() - t_serve
    stats = _engine_stats(engine, finals, questions, serve_s, load_s)
    say("\nengine statistics")
    for name, value in _stat_rows(stats):
        say(f"  {name:<32} {value}")
    return stats


def _print_answer(say: Callable[..., None], out: Any, question: str, width: int) -> None:
    m = out.metrics
    ttft = f"{m.ttft:.2f} s" if m.ttft is not None else "-"
    extra = f", preempted {m.num_preemptions}x" if m.num_preemptions else ""
    say(
        f"{out.request_id:<6} {question:<{width}}  [{len(out.prompt_token_ids)} prompt tokens, "
        f"{out.num_cached_tokens} cached, TTFT {ttft}{extra}]"
    )
    for c in out.outputs:
        tag = f"  #{c.index + 1}" if len(out.outputs) > 1 else ""
        text = " ".join(c.text.split()) or f"({c.finish_reason})"
        say(f"      {tag}-> {text}")


def _engine_stats(
    engine: Any,
    finals: dict[str, Any],
    questions: dict[str, DemoRequest],
    serve_s: float,
    load_s: float,
) -> dict[str, Any]:
    st = engine.manager.stats()
    totals = engine.totals
    ttfts = [o.metrics.ttft for o in finals.values() if o.metrics.ttft is not None]
    checked = [(rid, r) for rid, r in questions.items() if r.expect]
    correct = sum(
        1
        for rid, r in checked
        if any(w.lower() in finals[rid].outputs[0].text.lower() for w in r.expect)
    )
    return {
        "requests": len(finals),
        "sequences": sum(len(o.outputs) for o in finals.values()),
        "errors": sum(1 for o in finals.values() if o.error is not None),
        "prompt_tokens": int(totals["prompt_tokens"]),
        "generated_tokens": int(totals["generation_tokens"]),
        "computed_tokens": int(totals["computed_tokens"]),
        "cached_prompt_tokens": sum(o.num_cached_tokens for o in finals.values()),
        "prefix_hit_rate": st.hit_rate,
        "prefix_hit_tokens": st.prefix_hit_tokens,
        "preemptions": int(engine.scheduler.num_preemptions),
        "forks": st.forks,
        "cow_copies": st.cow_copies,
        "evictions": st.evictions,
        "peak_usage": st.peak_usage,
        "steps": int(totals["steps"]),
        "serve_seconds": serve_s,
        "load_seconds": load_s,
        "tokens_per_second": totals["generation_tokens"] / serve_s if serve_s > 0 else 0.0,
        "ttft_mean": statistics.fmean(ttfts) if ttfts else None,
        "ttft_max": max(ttfts) if ttfts else None,
        "answers_checked": len(checked),
        "answers_correct": correct,
        "answers": {rid: [c.text for c in o.outputs] for rid, o in finals.items()},
    }


def _stat_rows(s: dict[str, Any]) -> list[tuple[str, object]]:
    """The statistics as (label, value) rows; every number is labelled with what it counts."""
    ttft = (
        f"mean {s['ttft_mean']:.2f} s, max {s['ttft_max']:.2f} s"
        if s["ttft_mean"] is not None
        else "-"
    )
    prompt = s["prompt_tokens"]
    share = s["cached_prompt_tokens"] / prompt if prompt else 0.0
    unchecked = s["requests"] - s["answers_checked"]
    return [
        (
            "requests / sequences",
            f"{s['requests']} / {s['sequences']} (req-5 has two samples)"
            + (f" ({s['errors']} failed)" if s["errors"] else ""),
        ),
        ("prompt / generated tokens", f"{prompt} / {s['generated_tokens']}"),
        (
            "prompt tokens from prefix cache",
            f"{s['cached_prompt_tokens']} of {prompt} ({share:.0%}), found when each request "
            "was first admitted",
        ),
        (
            "preemptions (recompute)",
            f"{s['preemptions']} (a preempted request is admitted again later)",
        ),
        ("forks / copy-on-write copies", f"{s['forks']} / {s['cow_copies']} (for req-5's n=2)"),
        ("cached blocks evicted", s["evictions"]),
        ("peak pool usage", f"{s['peak_usage']:.0%}"),
        (
            "tokens computed by the model",
            f"{s['computed_tokens']} (prompt tokens not from the cache, recomputation after "
            "preemption, and decodes)",
        ),
        ("steps / time", f"{s['steps']} in {s['serve_seconds']:.1f} s"),
        ("throughput", f"{s['tokens_per_second']:.1f} generated tokens/s"),
        ("time to first token", ttft),
        (
            "answers with the expected fact",
            f"{s['answers_correct']} of {s['answers_checked']} quiz questions"
            + (f" ({unchecked} open question not checked)" if unchecked == 1 else "")
            + (f" ({unchecked} open questions not checked)" if unchecked > 1 else ""),
        ),
    ]
