"""Part ``probe``: what ``cen-lab suggest-lambda``'s probe costs against the full training it replaces (issue 25).

Measured side by side in one run on the default preset (plain): a full training of ``budget`` steps without
gradient logging, and a probe of ``probe_steps`` steps of the same training with gradients logged (the model
under Adam needs them), each timed from start to its last step. Reported:

- ``probe_cost_share``: one probe's time over the full run's, at the measured sizes (150 of 600 steps);
- ``probe_step_cost_ratio``: the probe's time per step over the full run's, each without the set-up both pay once
  (loading the data, building the model, the first evaluation: timed as a 1-step run). A probe step logs
  gradients every ``log.every`` steps, so the ratio is at least about 1; below 1 is the machine's load, not the
  cost;
- ``probe_cost_share_at_10000``: that per-step ratio times 300 / 10,000 (a 300-step probe for a 10,000-step run,
  as ``cen-lab bench-lambda`` validates it), and ``three_probes_cost_share_at_10000``, three such probes (the
  benchmark's interpolation between probe lambdas).

The probe, the full run and the set-up run are timed in rotating order ``repeats`` times (since 2026-12-07; before,
each once, one after the other), and the medians compared.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from cen_lab.experiments.training import train
from cen_lab.theory.lambda_bench import lambda_config, probe_config


def bench_probe(preset: str = "default", budget: int = 600, probe_steps: int = 150, threads: int = 2,
                repeats: int = 3) -> dict:
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    runs = {"probe": (probe_config(preset, "plain", budget), probe_steps),
            "full": (lambda_config(preset, "plain", budget), None),
            "setup": (probe_config(preset, "plain", budget), 1)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(repeats):
                for kind in list(runs)[r % 3:] + list(runs)[:r % 3]:  # rotating order
                    cfg, stop = runs[kind]
                    start = time.perf_counter()
                    train(cfg, Path(tmp) / f"{kind}-{r}", progress=False, stop_at=stop)
                    times[kind].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(prev)
    probe, full, setup = (statistics.median(times[k]) for k in ("probe", "full", "setup"))
    per_step = ((probe - setup) / (probe_steps - 1)) / ((full - setup) / (budget - 1))
    return {"probe_cost_share": probe / full, "probe_step_cost_ratio": per_step,
            "probe_cost_share_at_10000": per_step * 300 / 10_000,
            "three_probes_cost_share_at_10000": 3 * per_step * 300 / 10_000,
            "probe_seconds": times,
            "probe_sizes": {"budget": budget, "probe_steps": probe_steps, "preset": preset, "threads": threads,
                            "repeats": repeats}}
