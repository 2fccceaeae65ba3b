"""KV tiers behind the server: per-tier metrics on /metrics, a repeated long prompt served
from the host tier after the device evicted it, and ``--kv-remote embedded:PORT`` (its URL
logged, its Valkey gone with a server killed by SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import valkey
from server_helpers import free_port, metric, parse_metrics, running_server


def test_tier_metrics_match_what_the_tier_did():
    long_prompt = list(range(10, 10 + 90))
    with running_server(num_blocks=14, kv_host_bytes=32 << 20) as srv:
        client = srv.client()
        first = client.completions.create(
            model=srv.model, prompt=long_prompt, max_tokens=4, temperature=0
        )
        for i in range(4):  # push the long prompt's blocks out of the device cache
            client.completions.create(
                model=srv.model, prompt=list(range(200 + i, 290 + i)), max_tokens=4, temperature=0
            )
        again = client.completions.create(
            model=srv.model, prompt=long_prompt, max_tokens=4, temperature=0
        )
        assert again.choices[0].text == first.choices[0].text
        assert again.usage.prompt_tokens_details.cached_tokens > 0
        stats = srv.engine.call(lambda e: e.tiers.stats()["host"])
        m = parse_metrics(srv.http().get("/metrics").text)
        assert metric(m, "kv_tier_lookups_total", tier="host") == stats["lookups"] > 0
        assert metric(m, "kv_tier_hit_tokens_total", tier="host") == stats["hit_tokens"] > 0
        assert metric(m, "kv_tier_bytes_stored_total", tier="host") == stats["bytes_stored"] > 0
        assert metric(m, "kv_tier_rejected_total", tier="host") == 0
        assert metric(m, "kv_tier_load_gbps", tier="host") >= 0


def _alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet counts as ended)."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except ProcessLookupError:
        return False
    except OSError:
        return True  # no /proc: kill(pid, 0) said it exists


def test_embedded_valkey_url_is_logged_and_dies_with_a_killed_server():
    valkey_port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "pagedkv.cli", "serve", "--model", "tiny-random"]
    cmd += ["--port", str(http_port), "--kv-remote", f"embedded:{valkey_port}"]
    serve = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    url, lines = f"redis://127.0.0.1:{valkey_port}", []
    logged = threading.Event()

    def read() -> None:
        assert serve.stderr is not None
        for line in serve.stderr:
            lines.append(line)
            if url in line:
                logged.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert logged.wait(300), "".join(lines)  # model load + start: slow on a busy machine
        pid = int(valkey.Valkey(port=valkey_port).info("server")["process_id"])
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait(30)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the embedded valkey-server outlived the killed server"
    finally:
        serve.kill()
        serve.wait(30)
