"""Load test of an OpenAI-compatible server: seeded Poisson arrivals of streaming chat clients.

Each request is a chat completion, streamed with ``stream_options.include_usage``. Prompt and
answer lengths follow the log-normal fit of ShareGPT the simulator uses (mean 161 input / 338
output tokens, ``pagedkv.simulator.synthetic``), scaled and clipped to the model; a share of the
requests (``--prefix-share``) opens with the same long system prompt, which a prefix cache can
serve. At every rate of ``--rates`` the same seeded request sequence (lengths, shared system
prompt; user texts drawn anew per rate, so no rate hits the cache the one before it filled) is
sent for ``--duration`` seconds (or ``--num-requests`` requests), and the run waits for the
answers (each bounded by ``--request-timeout``). Reported per rate:

* output throughput (tokens/s of answers) and completed requests/s;
* TTFT (send to first non-empty content) and TPOT ((end - first token) / (tokens - 1)), p50/p99;
* prefix hit rate: sum(usage.prompt_tokens_details.cached_tokens) / sum(usage.prompt_tokens)
  ("-" when the server does not report cached tokens);
* errors (HTTP errors, error events, timeouts).

Then, per server, the highest rate whose p99 TTFT stays under ``--slo-ttft`` (2 s) with no
errors. Against a running server::

    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --model SmolLM2-135M-Instruct \\
        --rates 0.5,1,2,4 --duration 60

Or let the script start the servers itself on 127.0.0.1 (one after the other, same model, same
thread count) and print them side by side::

    python benchmarks/serve_load.py --launch pagedkv,transformers --model default \\
        --rates 0.5,1,2,4 --duration 60 --threads 2

``--model`` for ``--launch``: ``default`` (SmolLM2-135M-Instruct, the folder pagedkv converts
into ``~/.cache/pagedkv/models``), ``tiny-random`` (pagedkv's seeded random tiny Llama; saved to
a temporary folder when ``transformers serve`` needs one), or a local transformers model folder.
``transformers serve`` is started as ``transformers serve FOLDER --device cpu`` with
``HF_HUB_OFFLINE=1`` (pass e.g. ``--transformers-args=--continuous-batching`` for its paged
continuous batching); requests name the model by that folder, as it requires.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:  # the client library ships as ``httpx2`` in some environments (openai depends on it)
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    import httpx2 as httpx  # type: ignore[no-redef]

# ShareGPT's log-normal fit (mean, log-space sigma), as in pagedkv.simulator.synthetic.
SHAREGPT_INPUT = (161.0, 1.0)
SHAREGPT_OUTPUT = (338.0, 0.9)
TEMPLATE_MARGIN = 48  # tokens the chat template adds around the messages (roughly)
_WORDS_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we can their has been if more when will "
    "would who so no time people also into only new some could these two may then first any "
    "like now my such make over our even most after well year must very through back where "
    "much your way down should because long each just state good those both well world system "
    "cache memory block token prefix request server model answer question history science "
    "river mountain city music garden kitchen window engine signal market letter morning"
)
WORDS = tuple(_WORDS_TEXT.split())


# ------------------------------------------------------------------------------- workload
@dataclass
class Job:
    index: int
    arrival: float  # seconds after the start of the rate's run
    messages: list[dict[str, str]]
    max_tokens: int
    shared_prefix: bool


def lognormal(rng: random.Random, mean: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma)


def words_text(rng: random.Random, num_chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < num_chars:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def make_jobs(args: argparse.Namespace, rate: float) -> list[Job]:
    """The seeded request sequence for one rate: the same lengths and system prompt at every
    rate, but user texts of the rate's own (a rate's prompts must not be found in the prefix
    cache that the rate before it filled, which would flatter every rate after the first)."""
    rng = random.Random(args.seed)
    texts = random.Random(f"{args.seed}/{rate}")
    arrivals = random.Random(args.seed + 1)
    cpt = args.chars_per_token
    system = words_text(random.Random(args.seed + 2), int(args.system_tokens * cpt))
    jobs: list[Job] = []
    t = 0.0
    limit = args.num_requests if args.num_requests else 10**9
    while len(jobs) < limit:
        t += arrivals.expovariate(rate)
        if not args.num_requests and t > args.duration:
            break
        shared = rng.random() < args.prefix_share
        out = round(lognormal(rng, *SHAREGPT_OUTPUT) * args.output_scale)
        out = max(1, min(out, args.max_output))
        room = args.max_model_len - out - TEMPLATE_MARGIN - (args.system_tokens if shared else 0)
        n_in = round(lognormal(rng, *SHAREGPT_INPUT) * args.input_scale)
        n_in = max(4, min(n_in, args.max_input, room))
        if n_in < 4:
            raise SystemExit(
                f"--max-model-len {args.max_model_len} leaves no room for a prompt "
                f"(system {args.system_tokens} + answer {out} tokens)"
            )
        user = f"Request {len(jobs)}: " + words_text(texts, int(n_in * cpt))
        messages = [{"role": "system", "content": system}] if shared else []
        messages.append({"role": "user", "content": user})
        jobs.append(Job(len(jobs), t, messages, out, shared))
    return jobs


# ------------------------------------------------------------------------------- client
@dataclass
class Result:
    ok: bool
    ttft: float | None = None
    latency: float | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None
    end: float = 0.0


async def run_one(
    client: httpx.AsyncClient, args: argparse.Namespace, model: str, job: Job
) -> Result:
    body: dict[str, Any] = {
        "model": model,
        "messages": job.messages,
        "max_tokens": job.max_tokens,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.temperature > 0:
        body["seed"] = args.seed + job.index
    if args.ignore_eos:
        body["ignore_eos"] = True
    start = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage: dict[str, Any] | None = None
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, timeout=args.request_timeout
        ) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")[:200]
                return Result(False, error=f"HTTP {r.status_code}: {text}", end=time.perf_counter())
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return Result(
                        False, error=f"error event: {event['error']}", end=time.perf_counter()
                    )
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter()
                if event.get("usage"):
                    usage = event["usage"]
    except (httpx.HTTPError, OSError, json.JSONDecodeError) as exc:
        return Result(False, error=f"{type(exc).__name__}: {exc}"[:200], end=time.perf_counter())
    end = time.perf_counter()
    details = (usage or {}).get("prompt_tokens_details") or {}
    return Result(
        True,
        ttft=None if first is None else first - start,
        latency=end - start,
        output_tokens=int(usage["completion_tokens"]) if usage else chunks,
        prompt_tokens=int(usage["prompt_tokens"]) if usage else None,
        cached_tokens=details.get("cached_tokens"),
        end=end,
    )


@dataclass
class RateReport:
    server: str
    rate: float
    sent: int
    completed: int
    errors: int
    elapsed_s: float
    req_per_s: float
    output_tok_per_s: float
    ttft_p50: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p99: float | None
    prefix_hit_rate: float | None
    mean_prompt_tokens: float | None
    mean_output_tokens: float | None
    error_samples: list[str] = field(default_factory=list)
    # one row per request, in sending order: which requests set the tail (written by --json)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def meets(self, slo: float) -> bool:
        return (
            self.errors == 0
            and self.completed > 0
            and self.ttft_p99 is not None
            and self.ttft_p99 < slo
        )


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def run_rate(
    args: argparse.Namespace, server: str, url: str, model: str, rate: float
) -> RateReport:
    jobs = make_jobs(args, rate)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=args.request_timeout
    ) as client:
        start = time.perf_counter()

        async def scheduled(job: Job) -> Result:
            await asyncio.sleep(max(0.0, start + job.arrival - time.perf_counter()))
            return await run_one(client, args, model, job)

        tasks = [asyncio.create_task(scheduled(j)) for j in jobs]
        deadline = (jobs[-1].arrival if jobs else 0.0) + args.request_timeout + 5.0
        done, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    results = [
        t.result()
        if t in done and not t.cancelled()
        else Result(False, error="timeout", end=time.perf_counter())
        for t in tasks
    ]
    ok = [r for r in results if r.ok]
    finished = max((r.end for r in results), default=start)
    elapsed = max(finished - start, 1e-9)
    tpots = [
        (r.latency - r.ttft) / (r.output_tokens - 1)
        for r in ok
        if r.ttft is not None and r.latency is not None and r.output_tokens > 1
    ]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    cached = [
        (r.cached_tokens, r.prompt_tokens)
        for r in ok
        if r.cached_tokens is not None and r.prompt_tokens
    ]
    hit = (sum(c for c, _ in cached) / sum(p for _, p in cached)) if cached else None
    errors = [r.error or "?" for r in results if not r.ok]
    return RateReport(
        server=server,
        rate=rate,
        sent=len(jobs),
        completed=len(ok),
        errors=len(errors),
        elapsed_s=elapsed,
        req_per_s=len(ok) / elapsed,
        output_tok_per_s=sum(r.output_tokens for r in ok) / elapsed,
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        tpot_p50=percentile(tpots, 50),
        tpot_p99=percentile(tpots, 99),
        prefix_hit_rate=hit,
        mean_prompt_tokens=sum(prompt) / len(prompt) if prompt else None,
        mean_output_tokens=(sum(r.output_tokens for r in ok) / len(ok)) if ok else None,
        error_samples=sorted(set(errors))[:3],
        requests=[
            {
                "index": j.index,
                "arrival_s": round(j.arrival, 4),
                "shared_prefix": j.shared_prefix,
                "max_tokens": j.max_tokens,
                "ok": r.ok,
                "prompt_tokens": r.prompt_tokens,
                "cached_tokens": r.cached_tokens,
                "output_tokens": r.output_tokens,
                "ttft_s": r.ttft,
                "latency_s": r.latency,
                "error": r.error,
            }
            for j, r in zip(jobs, results, strict=True)
        ],
    )


async def warm_up(url: str, model: str, args: argparse.Namespace) -> None:
    """A couple of short requests before measuring (model warm-up, lazy loading)."""
    async with httpx.AsyncClient(base_url=url, timeout=args.request_timeout) as client:
        for i in range(args.warmup):
            job = Job(-1 - i, 0.0, [{"role": "user", "content": f"Warm-up {i}: hello"}], 4, False)
            r = await run_one(client, args, model, job)
            if not r.ok:
                raise SystemExit(f"warm-up request failed: {r.error}")


def run_server(args: argparse.Namespace, server: str, url: str, model: str) -> list[RateReport]:
    asyncio.run(warm_up(url, model, args))
    reports: list[RateReport] = []
    for rate in args.rates:
        rep = asyncio.run(run_rate(args, server, url, model, rate))
        reports.append(rep)
        print(row(rep), flush=True)
        if (
            args.stop_after_violation
            and rep.ttft_p99 is not None
            and rep.ttft_p99 > args.stop_after_violation * args.slo_ttft
        ):
            print(
                f"# {server}: p99 TTFT {rep.ttft_p99:.1f} s is over "
                f"{args.stop_after_violation:g} x the SLO; skipping higher rates",
                flush=True,
            )
            break
    return reports


# ------------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_registered() -> bool:
    try:
        from pagedkv.cli import build_parser
    except ImportError:
        return False
    parser = build_parser()
    sub = next((a for a in parser._actions if isinstance(getattr(a, "choices", None), dict)), None)
    return sub is not None and "serve" in sub.choices


# Until ``serve`` is registered in pagedkv/cli.py: the same command through its own parser.
_SERVE_BOOT = (
    "import argparse, sys; from pagedkv.server.cli import add_serve_parser; "
    "p = argparse.ArgumentParser(prog='pagedkv'); add_serve_parser(p.add_subparsers()); "
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))"
)


def pagedkv_command(model: str, port: int, extra: list[str]) -> list[str]:
    head = (
        [sys.executable, "-m", "pagedkv.cli"]
        if serve_registered()
        else [sys.executable, "-c", _SERVE_BOOT]
    )
    return [
        *head,
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "pagedkv-bench",
        "--log-level",
        "warning",
        *extra,
    ]


def transformers_command(folder: str, port: int, extra: list[str]) -> list[str]:
    exe = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
    return [
        exe,
        "serve",
        folder,
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra,
    ]


def resolve_folder(model: str, tmp: Path) -> str:
    """A transformers model folder for ``model`` (what ``transformers serve`` needs)."""
    if model.lower() in ("default", "smollm2", "smollm2-135m-instruct"):
        from pagedkv.models.cache import cached_gguf_folder
        from pagedkv.models.loader import DEFAULT_MODEL_NAME, default_model_path

        return str(cached_gguf_folder(default_model_path(), DEFAULT_MODEL_NAME))
    if model.lower() == "tiny-random":
        from pagedkv.models import tiny_random_llama

        loaded = tiny_random_llama(0)
        folder = tmp / "tiny-random"
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        return str(folder)
    if not (Path(model) / "config.json").is_file():
        raise SystemExit(
            f"--model {model!r}: expected default, tiny-random or a local transformers model folder"
        )
    return str(Path(model).resolve())


@contextlib.contextmanager
def launched(
    name: str, command: list[str], env: dict[str, str], log: Path, startup_timeout: float
) -> Iterator[str]:
    """Start a server, wait for GET /health, yield its URL; SIGTERM (then kill) after."""
    port = int(command[command.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    print(f"# starting {name}: {' '.join(command)}", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"{name} exited with {proc.returncode} during startup:\n"
                    + log.read_text()[-2000:]
                )
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{name} not healthy after {startup_timeout:.0f} s:\n" + log.read_text()[-2000:]
                )
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ------------------------------------------------------------------------------- report
def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


HEADER = (
    f"{'server':<13}{'rate':>6}{'sent':>6}{'done':>6}{'err':>5}{'req/s':>7}"
    f"{'out tok/s':>10}{'TTFT p50':>9}{'p99':>7}{'TPOT p50':>9}{'p99':>7}"
    f"{'prefix hit':>11}{'in/out tok':>12}"
)


def row(r: RateReport) -> str:
    io = f"{fmt(r.mean_prompt_tokens, '.0f')}/{fmt(r.mean_output_tokens, '.0f')}"
    hit = "-" if r.prefix_hit_rate is None else f"{100 * r.prefix_hit_rate:.0f}%"
    return (
        f"{r.server:<13}{r.rate:>6g}{r.sent:>6}{r.completed:>6}{r.errors:>5}"
        f"{r.req_per_s:>7.2f}{r.output_tok_per_s:>10.1f}{fmt(r.ttft_p50):>9}"
        f"{fmt(r.ttft_p99):>7}{fmt(r.tpot_p50, '.3f'):>9}{fmt(r.tpot_p99, '.3f'):>7}"
        f"{hit:>11}{io:>12}"
    )


def summary(reports: dict[str, list[RateReport]], slo: float) -> list[str]:
    lines = [f"# highest rate with p99 TTFT < {slo:g} s and no errors:"]
    best: dict[str, float | None] = {}
    for server, reps in reports.items():
        ok = [r.rate for r in reps if r.meets(slo)]
        best[server] = max(ok) if ok else None
        got = f"{best[server]:g} req/s" if best[server] is not None else "none"
        lines.append(f"#   {server}: {got} (tested {', '.join(f'{r.rate:g}' for r in reps)})")
        for r in reps:
            for e in r.error_samples:
                lines.append(f"#   {server} @ {r.rate:g} req/s error: {e}")
    if best.get("pagedkv") and best.get("transformers"):
        lines.append(
            f"#   pagedkv / transformers: "
            f"{best['pagedkv'] / best['transformers']:.2f}x the request rate"
        )
    return lines


# ------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = p.add_argument_group("target")
    target.add_argument("--url", help="a running server (e.g. http://127.0.0.1:8000)")
    target.add_argument(
        "--model",
        default=None,
        help="with --url: the model id to send; with --launch: default, "
        "tiny-random or a local model folder (default: default)",
    )
    target.add_argument(
        "--launch",
        default=None,
        help="start these servers here, one after the other: pagedkv, "
        "transformers or pagedkv,transformers",
    )
    target.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP/MKL threads for launched servers (the same for both)",
    )
    target.add_argument(
        "--pagedkv-args", default="", help="extra `pagedkv serve` options, e.g. '--num-blocks 2048'"
    )
    target.add_argument(
        "--transformers-args",
        default="",
        help="extra `transformers serve` options, e.g. '--continuous-batching'",
    )
    target.add_argument("--startup-timeout", type=float, default=600.0)
    load = p.add_argument_group("load")
    load.add_argument(
        "--rates", default="0.5,1,2,4", help="request rates (req/s, Poisson), comma-separated"
    )
    load.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="seconds of arrivals per rate (unless --num-requests)",
    )
    load.add_argument(
        "--num-requests", type=int, default=0, help="requests per rate instead of --duration"
    )
    load.add_argument("--seed", type=int, default=0)
    load.add_argument(
        "--prefix-share",
        type=float,
        default=0.5,
        help="share of requests opening with the shared system prompt",
    )
    load.add_argument(
        "--system-tokens",
        type=int,
        default=400,
        help="length of the shared system prompt (tokens, approx.)",
    )
    load.add_argument(
        "--input-scale",
        type=float,
        default=1.0,
        help="scale ShareGPT's prompt lengths (mean 161 tokens)",
    )
    load.add_argument(
        "--output-scale",
        type=float,
        default=1.0,
        help="scale ShareGPT's answer lengths (mean 338 tokens)",
    )
    load.add_argument("--max-input", type=int, default=1024, help="cap on user-message tokens")
    load.add_argument("--max-output", type=int, default=256, help="cap on max_tokens")
    load.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="keep prompt + answer under this (default: 2048; 512 for tiny-random)",
    )
    load.add_argument(
        "--chars-per-token",
        type=float,
        default=None,
        help="prompt sizing (default: 4, English BPE; 1 for tiny-random's byte "
        "tokenizer). Actual token counts come from usage",
    )
    load.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy (both servers generate the same answers)",
    )
    load.add_argument(
        "--ignore-eos",
        action="store_true",
        help="send ignore_eos (a vLLM/pagedkv extra; transformers ignores it)",
    )
    load.add_argument("--request-timeout", type=float, default=300.0)
    load.add_argument("--warmup", type=int, default=2, help="warm-up requests per server")
    out = p.add_argument_group("report")
    out.add_argument("--slo-ttft", type=float, default=2.0, help="p99 TTFT bound (s)")
    out.add_argument(
        "--stop-after-violation",
        type=float,
        default=5.0,
        help="skip a server's higher rates once p99 TTFT exceeds this many times "
        "the SLO (0 = never)",
    )
    out.add_argument("--json", default=None, help="write every rate's report here")
    args = p.parse_args(argv)
    try:
        args.rates = sorted(float(r) for r in args.rates.split(",") if r.strip())
    except ValueError:
        p.error(f"--rates: expected numbers like 0.5,1,2, got {args.rates!r}")
    if not args.rates or min(args.rates) <= 0:
        p.error("--rates: expected positive rates")
    if (args.url is None) == (args.launch is None):
        p.error("give --url (a running server) or --launch (start servers here)")
    if args.url is not None and not args.model:
        p.error("--url needs --model (the model id the server expects)")
    if not 0.0 <= args.prefix_share <= 1.0:
        p.error("--prefix-share: expected a fraction in [0, 1]")
    if args.duration <= 0 and not args.num_requests:
        p.error("--duration: expected > 0")
    args.model = args.model or "default"
    tiny = args.model.lower() == "tiny-random"
    args.max_model_len = args.max_model_len or (512 if tiny else 2048)
    args.chars_per_token = args.chars_per_token or (1.0 if tiny else 4.0)
    if args.launch is not None:
        args.launch = [s.strip() for s in args.launch.split(",") if s.strip()]
        bad = [s for s in args.launch if s not in ("pagedkv", "transformers")]
        if bad or not args.launch:
            p.error(f"--launch: expected pagedkv and/or transformers, got {bad or args.launch}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = (
        f"{len(args.rates)} rates x "
        + (
            f"{args.num_requests} requests"
            if args.num_requests
            else f"{args.duration:g} s of arrivals"
        )
        + f", seed {args.seed}, prefix share {args.prefix_share:g} "
        f"({args.system_tokens}-token system prompt), temperature {args.temperature:g}"
    )
    print(f"# {load}", flush=True)
    reports: dict[str, list[RateReport]] = {}
    if args.url is not None:
        print(HEADER, flush=True)
        reports["server"] = run_server(args, "server", args.url.rstrip("/"), args.model)
    else:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp_name:
            tmp = Path(tmp_name)
            need_folder = "transformers" in args.launch or args.model.lower() not in (
                "tiny-random",
                "default",
                "smollm2",
                "smollm2-135m-instruct",
            )
            folder = resolve_folder(args.model, tmp) if need_folder else None
            for server in args.launch:
                port = free_port()
                if server == "pagedkv":
                    model_arg = folder or args.model
                    cmd = pagedkv_command(model_arg, port, args.pagedkv_args.split())
                    model_id = "pagedkv-bench"
                else:
                    assert folder is not None
                    cmd = transformers_command(folder, port, args.transformers_args.split())
                    model_id = folder  # transformers serve is pinned to this exact id
                with launched(server, cmd, env, tmp / f"{server}.log", args.startup_timeout) as url:
                    print(HEADER, flush=True)
                    reports[server] = run_server(args, server, url, model_id)
    print()
    print(HEADER)
    for reps in reports.values():
        for r in reps:
            print(row(r))
    for line in summary(reports, args.slo_ttft):
        print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": dict(vars(args)),
                    "reports": {k: [asdict(r) for r in v] for k, v in reports.items()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
