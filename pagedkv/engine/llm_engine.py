"""``LLMEngine``: requests in, one continuously batched model step at a time, outputs out.

Each :meth:`LLMEngine.step` asks the :class:`Scheduler` what to compute, runs every scheduled
sequence's new tokens through the model in one packed forward (:class:`PagedModelRunner`),
forks the samples of ``n > 1`` requests once their prompt is computed, samples, detokenises and
checks stops, and frees finished sequences at once. An exception inside a step fails only the
requests it concerns (all those in a failed forward; one request for a sampling error) and the
engine keeps serving. What a step's results do to its sequences is in ``step_results.py``; how a
request's outputs are made and how it ends, in ``request_outputs.py``; the KV pool's size, in
``kv_sizing.py``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from pagedkv.engine.config import EngineConfig
from pagedkv.engine.kv_sizing import engine_cache_config
from pagedkv.engine.output_processor import OutputProcessor
from pagedkv.engine.outputs import RequestMetrics, RequestOutput
from pagedkv.engine.prompts import PromptType
from pagedkv.engine.request import Request
from pagedkv.engine.request_outputs import fail_request, finish_request, snapshot, stop_request
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.scheduler import Scheduler
from pagedkv.engine.step_results import fork_samples, mark_computed, sample_targets
from pagedkv.engine.tiering import EngineTiers
from pagedkv.engine.validation import DuplicateRequestError, check_request_id, validate_request
from pagedkv.integrations.hf_runner import PagedModelRunner
from pagedkv.integrations.hf_support import check_model_supported
from pagedkv.models import LoadedModel, load_model

log = logging.getLogger("pagedkv.engine")


class LLMEngine:
    """The synchronous engine. ``model``: a :class:`LoadedModel`, or what
    :func:`pagedkv.models.load_model` takes (None = the default SmolLM2-135M-Instruct)."""

    def __init__(
        self,
        model: LoadedModel | str | None = None,
        config: EngineConfig | None = None,
        **options: Any,
    ) -> None:
        self.config = config if config is not None else EngineConfig(**options)
        self.loaded = model if isinstance(model, LoadedModel) else load_model(model)
        cfg, hf = self.config, self.loaded.model
        self.max_model_len = min(
            cfg.max_model_len or self.loaded.max_model_len, self.loaded.max_model_len
        )
        # A typed refusal before anything is sized; the sizes come from its result, which the
        # runner takes as is (the support probe runs once).
        spec = check_model_supported(hf)
        self.vocab_size = spec.vocab_size
        cache = engine_cache_config(cfg, spec.kv_dims, next(hf.parameters()).dtype)
        self.runner = PagedModelRunner(hf, config=cache, backend=cfg.backend, attention_spec=spec)
        if self.runner.position_limit is not None:  # longrope/dynamic RoPE: exact up to it
            self.max_model_len = min(self.max_model_len, self.runner.position_limit.tokens)
        self.tiers = (
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
        self.scheduler = Scheduler(
            self.runner, cfg, cfg.token_budget(self.max_model_len), self.tiers
        )
        self.tokenizer = self.loaded.tokenizer
        self.output_processor = OutputProcessor(
            self.tokenizer, self.loaded.eos_token_ids, self.max_model_len
        )
        self.requests: dict[str, Request] = {}
        # Called with every request's final output (metrics exporters hook in here).
        self.on_finish: Callable[[RequestOutput], None] | None = None
        self._rng = random.Random(cfg.seed)
        self._arrivals = 0
        self.totals: dict[str, float] = dict.fromkeys(
            (
                "steps",
                "step_time",
                "forward_time",
                "prompt_tokens",
                "computed_tokens",
                "generation_tokens",
                "finished_requests",
            ),
            0,
        )

    @property
    def manager(self) -> Any:
        return self.runner.manager

    @property
    def num_usable_blocks(self) -> int:
        return int(self.manager.config.num_usable_blocks)

    @property
    def max_request_tokens(self) -> int:
        """The most tokens (prompt + max_tokens) one request may have: the model's length, or
        what the KV pool above the watermark holds if that is less."""
        usable = self.num_usable_blocks
        fits = usable - int(self.config.watermark * usable)
        return min(self.max_model_len, fits * self.config.block_size)

    # ----------------------------------------------------------- requests
    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
    ) -> Request:
        """Queue a request. Everything is validated here (typed errors, nothing changed); an id
        still in use raises ``DuplicateRequestError``."""
        params = params if params is not None else SamplingParams()
        if check_request_id(request_id) in self.requests:
            raise DuplicateRequestError(request_id)
        text, ids = validate_request(self, prompt, params, priority, cache_salt)
        return self.add_validated(request_id, text, ids, params, priority, cache_salt, arrival_time)

    def add_validated(
        self,
        request_id: str,
        text: str | None,
        ids: list[int],
        params: SamplingParams,
        priority: int,
        cache_salt: str | None,
        arrival_time: float | None = None,
    ) -> Request:
        """Queue a request that :func:`validate_request` already accepted (it reads only what
        never changes, so another thread may run it while the engine steps). Whether the id is
        free is checked here, where requests are taken in: a second sequence under one id would
        break the next step for every request."""
        if request_id in self.requests:
            raise DuplicateRequestError(request_id)
        self._arrivals += 1
        req = Request(
            request_id,
            ids,
            params,
            text,
            self._arrivals,
            RequestMetrics(arrival_time if arrival_time is not None else time.monotonic()),
            priority=priority,
            cache_salt=cache_salt,
            base_seed=self._rng.getrandbits(63),
        )
        self.requests[request_id] = req
        self.totals["prompt_tokens"] += len(ids)
        self.scheduler.add(req.seqs[0])
        return req

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output (None if unknown
        or already finished)."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        stop_request(req, self.scheduler, "abort")
        return self._finish(req)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # --------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """Run one scheduled step; returns the outputs of the requests that changed."""
        t0 = time.perf_counter()
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return []
        touched: dict[str, Request] = {}
        try:
            t1 = time.perf_counter()
            logits = self.runner.forward([s.seq.seq_id for s in scheduled])
            self.totals["forward_time"] += time.perf_counter() - t1
        except Exception as exc:
            log.exception("forward failed; failing %d sequences", len(scheduled))
            for s in scheduled:
                touched[s.seq.request.request_id] = s.seq.request
                self._fail(s.seq.request, exc)
        else:
            targets = mark_computed(scheduled, self.tiers, self.totals)
            targets += fork_samples(targets, self.runner, self.scheduler)
            sample_targets(
                targets,
                logits,
                touched,
                output_processor=self.output_processor,
                scheduler=self.scheduler,
                totals=self.totals,
                fail=self._fail,
            )
            for req in touched.values():
                if req.finished:
                    self._finish(req)
        self.totals["steps"] += 1
        self.totals["step_time"] += time.perf_counter() - t0
        return [snapshot(r) for r in touched.values()]

    def _fail(self, req: Request, exc: BaseException) -> None:
        fail_request(req, exc, self.scheduler)
        self._finish(req)

    def _finish(self, req: Request) -> RequestOutput:
        return finish_request(req, self.requests, self.totals, self.on_finish)

    def close(self) -> None:
        """Flush and close the KV tiers (stops an embedded Valkey)."""
        if self.tiers is not None:
            self.tiers.close()
            self.tiers = None

    # ---------------------------------------------------------- inspection
    def check_integrity(self) -> None:
        """Manager, storage and queues agree; every live request's samples are queued."""
        self.runner.check_integrity()
        self.scheduler.check_integrity()
        queued = {
            id(s)
            for q in (self.scheduler.waiting, self.scheduler.running, self.scheduler.swapped)
            for s in q
        }
        for req in self.requests.values():
            for seq in req.live_seqs():
                assert id(seq) in queued, f"{seq.seq_id} is live but in no queue"
        assert len(queued) == sum(len(r.live_seqs()) for r in self.requests.values()), (
            "a queued sequence belongs to no live request"
        )
