"""``examples/capacity_plan.py`` on a made-up cost model: the rate it finds meets the target and
twice that rate does not; the replicas cover the needed rate."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from types import ModuleType

import pytest

from pagedkv.simulator.costmodel import LinearCostModel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "capacity_plan.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capacity_plan", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_finds_a_rate_that_meets_the_target_and_enough_replicas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _load()
    cost = tmp_path / "cost.json"
    LinearCostModel(2.0, 0.02, 0.3).save(cost)
    args = ["--cost", str(cost), "--limit", "40", "--target-ttft-ms", "300"]
    args += ["--need-rate", "50", "--num-blocks", "512"]
    monkeypatch.setattr("sys.argv", ["capacity_plan.py", *args])
    assert plan.main() == 0
    out = capsys.readouterr().out
    found = re.search(r"up to ([0-9.e+-]+) req/s", out)
    needs = re.search(r"needs (\d+) replica", out)
    assert found is not None
    assert needs is not None
    rate, replicas = float(found.group(1)), int(needs.group(1))
    assert replicas == math.ceil(50 / rate)
    assert re.search(r"fewest blocks meeting it at [0-9.e+-]+ req/s: \d+", out)
    # the rate found meets the target, twice it does not (the bisection's bracket)
    from pagedkv.engine import EngineConfig
    from pagedkv.simulator.synthetic import SyntheticSpec, generate

    trace = generate(SyntheticSpec(num_requests=40, rate=1.0, mean_turns=2, max_len=2048))
    cfg = EngineConfig(num_blocks=512, max_num_seqs=64, max_model_len=4096)
    model = LinearCostModel(2.0, 0.02, 0.3)
    scale = plan.max_scale(trace, cfg, model, 300.0)
    assert plan.p99_ttft_ms(trace, cfg, model, scale) <= 300.0
    assert plan.p99_ttft_ms(trace, cfg, model, scale * 2) > 300.0
