"""Trace-driven simulator and capacity planner (``pagedkv simulate``).

Answers "how much KV memory, which block size, which eviction policy, what prefix hit rate" by
replaying traces through the same :class:`~pagedkv.core.BlockManager` that serves — never a
re-implementation. Only Belady's optimum (an offline policy no engine can run) and the
contiguous-reservation baselines (the systems paging replaces) are modelled here.
"""

from pagedkv.simulator.blocks import BlockStream, build_block_stream
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.oracle import HitResult, belady, infinite_cache
from pagedkv.simulator.runner import SimulationConfig, run_simulation
from pagedkv.simulator.synthetic import SyntheticSpec, generate
from pagedkv.simulator.trace import Request, Trace, load_azure, load_mooncake, load_trace

__all__ = [
    "BlockStream",
    "HitResult",
    "LinearCostModel",
    "Request",
    "SimulationConfig",
    "SyntheticSpec",
    "Trace",
    "belady",
    "build_block_stream",
    "generate",
    "infinite_cache",
    "load_azure",
    "load_mooncake",
    "load_trace",
    "run_simulation",
]
