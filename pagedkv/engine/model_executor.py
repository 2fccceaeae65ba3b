"""The model executor: one :class:`SchedulerOutput` through the model on the paged KV cache.

Moves the step's swapped blocks, runs its copy-on-write copies, then one packed forward of
every scheduled sequence's new tokens (:meth:`PagedModelRunner.run_step`); the logits rows are
sampled on demand by :func:`~pagedkv.engine.sampler.sample`, each under its own request's
parameters (plain greedy rows share one batched ``argmax``). The runner's manager is read by
nobody here: block tables and slots come from the scheduler's output.
"""

from __future__ import annotations

import torch

from pagedkv.engine.executor import StepResult
from pagedkv.engine.sample_types import Sampled, SampleRow
from pagedkv.engine.sampler import plain_greedy, sample
from pagedkv.engine.scheduler_output import SchedulerOutput
from pagedkv.integrations.hf_runner import PagedModelRunner
from pagedkv.integrations.step_builder import paged_step


class ModelExecutor:
    """Executes scheduler outputs on ``runner``'s model and storage."""

    def __init__(self, runner: PagedModelRunner) -> None:
        self.runner = runner

    def execute(self, output: SchedulerOutput) -> StepResult:
        runner, storage = self.runner, self.runner.storage
        # Order matters (scheduler_output.py): swapped-out blocks are read before anything
        # this step writes into them; copies land before the step's own writes.
        storage.swap_out(output.swap_out)
        storage.swap_in(output.swap_in)
        storage.copy_blocks(output.copies)
        step, input_ids, position_ids = paged_step(
            [s.start for s in output.scheduled],
            [s.token_ids for s in output.scheduled],
            block_tables=output.block_tables,
            slot_mapping=output.slot_mapping,
            block_size=storage.block_size,
            storage=storage,
            backend=runner.backend,
            device=runner.device,
        )
        logits = runner.run_step(step, input_ids, position_ids)

        argmax: list[list[int]] = []  # every row's argmax, computed once on first use

        def draw(i: int, row: SampleRow, logits: torch.Tensor = logits) -> Sampled:
            if plain_greedy(row):
                if not argmax:
                    argmax.append(logits.float().argmax(-1).tolist())
                return Sampled(argmax[0][i])
            return sample(logits[i : i + 1], [row])[0]

        return StepResult(draw)
