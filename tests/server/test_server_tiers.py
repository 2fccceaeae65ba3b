"""KV tiers behind the server: per-tier metrics on /metrics, and a repeated long prompt served
from the host tier after the device evicted it."""

from __future__ import annotations

from server_helpers import parse_metrics, running_server


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
        assert m["pagedkv:kv_tier_lookups_total{tier=host}"] == stats["lookups"] > 0
        assert m["pagedkv:kv_tier_hit_tokens_total{tier=host}"] == stats["hit_tokens"] > 0
        assert m["pagedkv:kv_tier_bytes_stored_total{tier=host}"] == stats["bytes_stored"] > 0
        assert m["pagedkv:kv_tier_rejected_total{tier=host}"] == 0
        assert "pagedkv:kv_tier_load_gbps{tier=host}" in m
