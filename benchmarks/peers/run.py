"""pagedkv against the CPU engines a user would pick instead, on one workload, rounds interleaved.

Each engine runs in its own venv (made by ``setup.sh``) as a worker process (``worker.py``),
loaded and warmed once; every round sends all engines the same fresh requests (see
``workload.py``), one engine at a time, in a rotating order, so background load hits all alike.
Printed per engine: useful tokens / wall seconds per round, TTFT and TPOT percentiles where the
engine reports them, CPU seconds of the worker, greedy agreement with transformers' float32
``generate`` (requests whose tokens are identical, n/N), and the 1-minute load average beside
each figure. An engine whose venv or model is missing is skipped, and the table says so.

    python benchmarks/peers/run.py --rounds 2                       # after setup.sh
    python benchmarks/peers/run.py --engines pagedkv,vllm --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import chat_prompts, hf_reference  # noqa: E402

REPO = HERE.parents[1]
ENGINES = ("pagedkv", "openvino", "vllm", "llamacpp")


def engine_command(name: str, peers: Path, hf: Path, dtype: str) -> tuple[list[str], str | None]:
    """(worker command, why it cannot run or None)."""
    py = {
        "pagedkv": Path(sys.executable),
        "vllm": peers / "vllm/bin/python",
        "openvino": peers / "openvino/bin/python",
        "llamacpp": peers / "llamacpp/bin/python",
    }[name]
    model = {
        "pagedkv": str(hf),
        "vllm": str(hf),
        "openvino": str(peers / "models/ov-fp32"),
        "llamacpp": str(peers / "models/smollm2-135m-f32.gguf"),
    }[name]
    if not py.exists():
        return [], f"no venv ({py} missing: run benchmarks/peers/setup.sh)"
    if not Path(model).exists():
        return [], f"no model ({model} missing: run benchmarks/peers/setup.sh)"
    if name == "llamacpp" and dtype != "float32":
        return [], "only the F32 GGUF is prepared"
    return [str(py), str(HERE / "worker.py"), name, model, "--dtype", dtype], None


class Worker:
    def __init__(self, name: str, cmd: list[str], threads: int, log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
        self.name, self.log = name, log.open("w")
        self.proc = subprocess.Popen(
            [*cmd, "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker exited (see {self.log.name})")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def pct(xs: list[float | None] | None, q: float) -> float | None:
    vals = [x for x in xs or [] if x is not None]
    return float(np.percentile(vals, q)) if vals else None


def median(rows: list[dict[str, Any]], key: str) -> float | None:
    """The median over rounds of one figure (None where the engine does not report it)."""
    return pct([r[key] for r in rows], 50)


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument(
        "--peers",
        type=Path,
        default=Path(os.environ.get("PEERS_DIR", Path.home() / "pagedkv-peers")),
    )
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/pagedkv/peers")
    ap.add_argument("--json", type=Path, help="also write every round's figures here")
    args = ap.parse_args()
    from pagedkv.models.cache import cached_gguf_folder
    from pagedkv.models.loader import default_model_path, gguf_model_name

    gguf = default_model_path()
    hf = cached_gguf_folder(gguf, gguf_model_name(gguf))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    eos = [int(tok.eos_token_id)]
    rounds = [chat_prompts(tok, args.requests, seed) for seed in range(1, args.rounds + 1)]
    print(f"reference: transformers generate fp32 on {args.rounds} x {args.requests} requests")
    refs = [hf_reference(hf, p, args.max_tokens, eos, args.cache) for p in rounds]
    lens = [len(p) for r in rounds for p in r]
    print(
        f"workload: {args.requests} chat requests a round, prompt tokens p50/mean/max "
        f"{int(np.median(lens))}/{np.mean(lens):.0f}/{max(lens)}, greedy, max {args.max_tokens}"
        f" new tokens, EOS honoured; {args.threads} threads each; dtype {args.dtype}"
    )
    workers: dict[str, Worker] = {}
    skipped: dict[str, str] = {}
    for name in args.engines.split(","):
        cmd, why = engine_command(name, args.peers, hf, args.dtype)
        if why:
            skipped[name] = why
            continue
        try:
            workers[name] = Worker(name, cmd, args.threads, args.cache / f"{name}.log")
        except (RuntimeError, json.JSONDecodeError) as exc:
            skipped[name] = str(exc)
            continue
        warm = chat_prompts(tok, 8, 1000)
        workers[name].run({"prompts": warm, "max_tokens": 16, "eos": eos})
        print(f"  {name}: loaded in {workers[name].ready['load_s']:.1f} s, warmed")
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in workers}
    names = list(workers)
    for r, (prompts, ref) in enumerate(zip(rounds, refs, strict=True)):
        order = names[r % len(names) :] + names[: r % len(names)] if names else []
        for name in order:
            load = os.getloadavg()[0]
            res = workers[name].run({"prompts": prompts, "max_tokens": args.max_tokens, "eos": eos})
            useful = sum(len(t) for t in res["tokens"])
            same = sum(a == b for a, b in zip(res["tokens"], ref, strict=True))
            row = {
                "round": r,
                "tok_s": useful / res["wall"],
                "useful": useful,
                "wall": res["wall"],
                "cpu": res["cpu"],
                "same": same,
                "load_before": load,
                "load_after": os.getloadavg()[0],
                "ttft_p50": pct(res.get("ttft"), 50),
                "ttft_p99": pct(res.get("ttft"), 99),
                "tpot_p50": pct(res.get("tpot"), 50),
                "tpot_p99": pct(res.get("tpot"), 99),
            }
            rows[name].append(row)
            print(
                f"  round {r} {name:9s} {row['tok_s']:7.1f} tok/s  wall {res['wall']:6.1f} s  "
                f"cpu {res['cpu']:6.1f} s  same {same}/{len(ref)}  load {load:.2f}->"
                f"{row['load_after']:.2f}",
                flush=True,
            )
    for w in workers.values():
        w.close()
    print(
        "\n| engine | tok/s per round | TTFT p50/p99 ms | TPOT p50/p99 ms | greedy = HF fp32 "
        "| load avg (1 min) |\n|---|---|---|---|---|---|"
    )
    for name, rs in rows.items():
        toks = " / ".join(f"{x['tok_s']:.1f}" for x in rs)
        ttft = f"{fmt_ms(median(rs, 'ttft_p50'))}/{fmt_ms(median(rs, 'ttft_p99'))}"
        tpot = f"{fmt_ms(median(rs, 'tpot_p50'))}/{fmt_ms(median(rs, 'tpot_p99'))}"
        same = " + ".join(str(x["same"]) for x in rs)
        loads = " / ".join(f"{x['load_before']:.1f}-{x['load_after']:.1f}" for x in rs)
        total = args.requests * len(rs)
        print(f"| {name} | {toks} | {ttft} | {tpot} | {same} of {total} | {loads} |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} | | | | |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args)
                    | {"peers": str(args.peers), "cache": str(args.cache), "json": str(args.json)},
                    "rows": rows,
                    "skipped": skipped,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
