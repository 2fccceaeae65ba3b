"""``EngineCore``: requests in, one scheduled step at a time through an executor, outputs out.

Each :meth:`EngineCore.step` asks the :class:`Scheduler` for a :class:`SchedulerOutput`, has the
executor run it, lets the scheduler commit what it computed, forks the samples of ``n > 1``
requests once their prompt is computed, samples, detokenises and checks stops, and frees
finished sequences at once. An exception inside a step fails only the requests it concerns (all
those in a failed forward; one request for a sampling error) and the engine keeps serving.

The core knows no model: :class:`~pagedkv.engine.llm_engine.LLMEngine` gives it the model
executor (and a tokenizer); the simulator gives it a cost-model executor and a simulated clock,
so a simulation runs this very scheduling, preemption and prefix caching. No torch here.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from pagedkv.core import BlockManager, SlidingWindow
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.executor import Executor, StepResult
from pagedkv.engine.output_processor import OutputProcessor
from pagedkv.engine.outputs import RequestMetrics, RequestOutput
from pagedkv.engine.prompts import PromptType
from pagedkv.engine.request import Request
from pagedkv.engine.request_outputs import fail_request, finish_request, snapshot, stop_request
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.scheduler import KVConnector, Scheduler
from pagedkv.engine.scheduler_output import SchedulerOutput, StepRecord
from pagedkv.engine.step_results import fork_samples, mark_computed, sample_targets
from pagedkv.engine.validation import DuplicateRequestError, check_request_id, validate_request

log = logging.getLogger("pagedkv.engine")

TOTALS = (
    "steps",
    "step_time",
    "forward_time",
    "prompt_tokens",
    "computed_tokens",
    "generation_tokens",
    "finished_requests",
)


class EngineCore:
    """Scheduler + executor + the requests in flight.

    ``manager``: the KV block manager the scheduler plans over (the executor's storage is
    sized for it); ``tiers``: the KV-tier connector, if any; ``clock``: what request metrics
    and the scheduler read (``time.monotonic``, or a simulated clock the executor advances).
    """

    def __init__(
        self,
        config: EngineConfig,
        manager: BlockManager,
        executor: Executor,
        *,
        max_model_len: int,
        vocab_size: int,
        tokenizer: Any = None,
        eos_token_ids: Sequence[int] = (),
        tiers: Any = None,
        sliding_window: SlidingWindow | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.executor = executor
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.tiers = tiers
        self.clock = clock
        connector: KVConnector | None = tiers
        self.scheduler = Scheduler(
            manager,
            config,
            config.token_budget(max_model_len),
            connector,
            sliding_window=sliding_window,
            clock=clock,
        )
        self.output_processor = OutputProcessor(tokenizer, list(eos_token_ids), max_model_len)
        self.requests: dict[str, Request] = {}
        # Called with every request's final output (metrics exporters hook in here).
        self.on_finish: Callable[[RequestOutput], None] | None = None
        # what the latest step() ran (None if it had nothing to run): cost models read it
        self.last_step: StepRecord | None = None
        self._rng = random.Random(config.seed)
        self._arrivals = 0
        self.totals: dict[str, float] = dict.fromkeys(TOTALS, 0)

    @property
    def manager(self) -> BlockManager:
        return self.scheduler.manager

    @property
    def num_usable_blocks(self) -> int:
        return int(self.manager.config.num_usable_blocks)

    @property
    def max_request_tokens(self) -> int:
        """The most tokens (prompt + max_tokens) one request may have: the model's length, or
        what the KV pool above the watermark holds if that is less."""
        usable = self.num_usable_blocks
        fits = usable - self.config.watermark_blocks(usable)
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
            RequestMetrics(arrival_time if arrival_time is not None else self.clock()),
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
        self.last_step = None
        output = self.scheduler.schedule()
        if not output.scheduled:
            return []
        touched: dict[str, Request] = {}
        result: StepResult | None = None
        try:
            t1 = time.perf_counter()
            result = self.executor.execute(output)
            self.totals["forward_time"] += time.perf_counter() - t1
        except Exception as exc:
            log.exception("forward failed; failing %d sequences", len(output.scheduled))
            for req in self._step_requests(output):
                touched[req.request_id] = req
                self._fail(req, exc)
        else:
            self.scheduler.update(output)
            targets = mark_computed(output.scheduled, self.tiers, self.totals)
            targets += fork_samples(targets, self.scheduler)
            sample_targets(
                targets,
                result.draw,
                touched,
                clock=self.clock,
                output_processor=self.output_processor,
                scheduler=self.scheduler,
                totals=self.totals,
                fail=self._fail,
            )
            for req in touched.values():
                if req.finished:
                    self._finish(req)
        self.totals["steps"] += 1
        wall = time.perf_counter() - t0
        seconds = result.seconds if result is not None and result.seconds is not None else wall
        self.totals["step_time"] += seconds
        self.last_step = StepRecord(output.shapes, seconds)
        return [snapshot(r) for r in touched.values()]

    def _step_requests(self, output: SchedulerOutput) -> list[Request]:
        """The requests a failed step concerns: the scheduled ones, and those it swapped out
        (their swap may not have run, so their host copy cannot be trusted)."""
        reqs = {id(s.seq.request): s.seq.request for s in output.scheduled}
        swapped = set(output.preempted)
        for seq in self.scheduler.swapped:
            if seq.seq_id in swapped:
                reqs[id(seq.request)] = seq.request
        return list(reqs.values())

    def _fail(self, req: Request, exc: BaseException) -> None:
        fail_request(req, exc, self.scheduler)
        self._finish(req)

    def _finish(self, req: Request) -> RequestOutput:
        return finish_request(req, self.requests, self.totals, self.on_finish, self.clock())

    # ---------------------------------------------------------- inspection
    def check_integrity(self) -> None:
        """Manager and queues agree; every live request's samples are queued."""
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
