"""Part ``probe``: what ``cen-lab suggest-lambda``'s probe costs against the full training it replaces (issue 25).

Measured side by side in one run on the default preset (plain): a full training of ``budget`` steps without
gradient logging, and a probe of ``probe_steps`` steps of the same training with gradients logged (the model
under Adam needs them), each timed from start to its last step. Reported:

- ``probe_cost_share``: one probe's time over the full run's, at the measured sizes (150 of 600 steps);
- ``probe_step_cost_ratio``: the probe's time per step over the full run's (gradient logging's cost);
- ``probe_cost_share_at_10000``: that per-step ratio times 300 / 10,000 (a 300-step probe for a 10,000-step run,
  as ``cen-lab bench-lambda`` validates it), and ``three_probes_cost_share_at_10000``, three such probes (the
  benchmark's interpolation between probe lambdas).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from cen_lab.experiments.training import train
from cen_lab.theory.lambda_bench import lambda_config, probe_config


def bench_probe(preset: str = "default", budget: int = 600, probe_steps: int = 150, threads: int = 2) -> dict:
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train(probe_config(preset, "plain", budget), Path(tmp) / "probe", progress=False, stop_at=probe_steps)
            probe = time.perf_counter() - start
            start = time.perf_counter()
            train(lambda_config(preset, "plain", budget), Path(tmp) / "full", progress=False)
            full = time.perf_counter() - start
    finally:
        torch.set_num_threads(prev)
    per_step = (probe / probe_steps) / (full / budget)
    return {"probe_cost_share": probe / full, "probe_step_cost_ratio": per_step,
            "probe_cost_share_at_10000": per_step * 300 / 10_000,
            "three_probes_cost_share_at_10000": 3 * per_step * 300 / 10_000,
            "probe_sizes": {"budget": budget, "probe_steps": probe_steps, "preset": preset, "threads": threads}}
