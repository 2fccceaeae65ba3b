"""``LLMEngine``: the engine core on a real model.

Loads the model (or takes a :class:`LoadedModel`), refuses it by name if pagedkv cannot compute
its attention exactly, sizes the KV pool (``kv_sizing.py``), and gives the
:class:`~pagedkv.engine.engine_core.EngineCore` a :class:`ModelExecutor` over a
:class:`PagedModelRunner` (one packed forward per step), the tokenizer and the KV tiers. What a
step does is in ``engine_core.py``; what its results do to its sequences, in
``step_results.py``; how a request's outputs are made and how it ends, in
``request_outputs.py``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from pagedkv._malloc import keep_freed_memory
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.engine_core import EngineCore
from pagedkv.engine.kv_sizing import engine_cache_config
from pagedkv.engine.model_executor import ModelExecutor
from pagedkv.engine.tiering import EngineTiers
from pagedkv.integrations.hf_runner import PagedModelRunner
from pagedkv.integrations.hf_support import check_model_supported
from pagedkv.models import LoadedModel, load_model


def freeze_startup_objects() -> None:
    """Collect, then move every object alive now out of the garbage collector's reach
    (``gc.freeze``), as vLLM does once its engine is up. A loaded model brings millions of
    long-lived objects (transformers', torch's); each full collection during serving would walk
    them all (measured here: ~0.9 s of collections in a ~10 s bfloat16 benchmark round). Call it
    once, in a process that serves one engine, after the engine is built; objects frozen are
    never freed, so not in a process that builds engine after engine (a test suite)."""
    gc.collect()
    gc.freeze()


class LLMEngine(EngineCore):
    """The synchronous engine. ``model``: a :class:`LoadedModel`, or what
    :func:`pagedkv.models.load_model` takes (None = the default SmolLM2-135M-Instruct).
    ``clock``: what request metrics read (a simulated clock replays a trace in model time)."""

    def __init__(
        self,
        model: LoadedModel | str | None = None,
        config: EngineConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        cfg = config if config is not None else EngineConfig(**options)
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        hf = self.loaded.model
        max_model_len = min(
            cfg.max_model_len or self.loaded.max_model_len, self.loaded.max_model_len
        )
        # A typed refusal before anything is sized; the sizes come from its result, which the
        # runner takes as is (the support probe runs once).
        spec = check_model_supported(hf)
        if next(hf.parameters()).device.type == "cpu":
            keep_freed_memory()  # step buffers stay mapped between steps (pagedkv._malloc)
        cache = engine_cache_config(cfg, spec.kv_dims, next(hf.parameters()).dtype)
        self.runner = PagedModelRunner(hf, config=cache, backend=cfg.backend, attention_spec=spec)
        if self.runner.position_limit is not None:  # longrope/dynamic RoPE: exact up to it
            max_model_len = min(max_model_len, self.runner.position_limit.tokens)
        tiers = (
            None
            if not cfg.uses_tiers
            else EngineTiers(
                self.runner,
                self.loaded.name,
                host_bytes=cfg.kv_host_bytes,
                disk_path=cfg.kv_disk_path,
                disk_bytes=cfg.kv_disk_bytes,
                remote=cfg.kv_remote,
                write=cfg.kv_tier_write,
            )
        )
        super().__init__(
            cfg,
            self.runner.manager,
            ModelExecutor(self.runner),
            max_model_len=max_model_len,
            vocab_size=spec.vocab_size,
            tokenizer=self.loaded.tokenizer,
            eos_token_ids=self.loaded.eos_token_ids,
            tiers=tiers,
            sliding_window=self.runner.sliding_window,
            clock=clock,
        )

    def close(self) -> None:
        """Flush and close the KV tiers (stops an embedded Valkey)."""
        if self.tiers is not None:
            self.tiers.close()
            self.tiers = None

    def check_integrity(self) -> None:
        """Manager, storage and queues agree; every live request's samples are queued."""
        self.runner.check_integrity()
        super().check_integrity()
