"""Part ``forecast`` (issue 33): what recording the exchange forecast costs a run, at its default cadence.

- ``forecast_cost_share``: the forecasts a ``long``-preset run records (one every ``auto_cadence(10000, 20)`` = 200
  steps, each on the states logged so far), over the training time of its 10,000 steps (a default CEN step, plain,
  M = 2, batch 32, timed alternately with a forecast); goal <= 0.02;
- ``forecast_seconds_at_10000_steps``: one forecast from the 491 states a 10,000-step run has logged by step 9,800
  (the last before its end, where there is nothing left to forecast), reported.

The logged states are synthetic (every penalised channel of the default CEN, 192, drifting down at its own speed
with noise): the model's cost depends on their number and shape, not on their values.
"""

from __future__ import annotations

import time

import numpy as np

from cen_lab.config import ExperimentConfig
from cen_lab.experiments.training import lr_rates
from cen_lab.runs.forecast_model import auto_cadence, forecast_arrays

from .suite import _step_fn, paired


def _history(n_logs: int, channels: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    speed = rng.uniform(0, 2e-4, channels)
    a = np.clip(1.0 - np.arange(n_logs)[:, None] * 20 * speed + rng.normal(0, 1e-3, (n_logs, channels)), 0, None)
    layer = np.repeat(np.arange(4), channels // 4)
    return np.arange(n_logs) * 20, a, layer


def bench_forecast(repeats: int = 5) -> dict:
    long = ExperimentConfig.preset("long")
    steps, every = long.train.steps, long.log.every
    u = np.concatenate([[0.0], np.cumsum(lr_rates(long.train))])
    thr = long.model.threshold
    cadence = auto_cadence(steps, every)
    at = list(range(cadence, steps + 1, cadence))  # the steps a run records a forecast at
    s_all, a_all, layer = _history(steps // every + 1)

    def one(k: int) -> None:
        n = k // every + 1
        forecast_arrays(s_all[:n], a_all[:n], u, thr, layer, seed=k)

    step, _ = _step_fn(ExperimentConfig.preset("default"), 2)
    step_s, last_s = paired(step, lambda: one(at[-2]), repeats=repeats)
    start = time.perf_counter()
    for k in at:
        one(k)
    all_s = time.perf_counter() - start
    return {"forecast_cost_share": all_s / (steps * step_s), "forecast_seconds_at_10000_steps": last_s,
            "forecast_seconds": {"cen_step": step_s, "all_forecasts_of_a_run": all_s, "forecasts": len(at)}}
