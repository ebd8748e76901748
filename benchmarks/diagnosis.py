"""Part ``diagnose``: the time ``cen_lab.diagnose`` takes on a large run (issue 23 asks for seconds, not minutes, on
10,000 logged steps x 16 layers x 512 channels). Building a table of that size (164 million rows with M = 2)
takes more memory than a 2-core, 24 GB machine should give a benchmark, so this times ``steps`` logged steps of
16 layers x 512 channels x 2 branches and reports the seconds per million rows and the time extrapolated linearly
to 10,000 steps (every step of the diagnosis is one pass over the rows)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from cen_lab.experiments.diagnosis import diagnose
from cen_lab.runs import Run


def synthetic_run(steps: int, layers: int = 16, channels: int = 512, branches: int = 2, seed: int = 0) -> Run:
    rng = np.random.default_rng(seed)
    r = layers * channels * branches
    layer = np.repeat([f"blocks.{i}.bn2" for i in range(layers)], channels * branches)
    branch = np.tile(np.repeat(np.arange(branches), channels), layers).astype("int32")
    channel = np.tile(np.arange(channels), layers * branches).astype("int32")
    penalised = (channel < channels // 2) == (branch == 0)
    g0 = rng.uniform(0.5, 1.5, r).astype("float32")
    t = np.arange(steps, dtype="float32")[:, None] / steps
    gamma = np.where(penalised, np.maximum(g0 - t * g0 * rng.uniform(0.5, 1.5, r).astype("float32"), 0), g0)
    gammas = pd.DataFrame({"step": np.repeat(np.arange(steps) * 10, r).astype("int64"), "epoch": np.int64(-1),
                           "layer": pd.Categorical(np.tile(layer, steps)), "branch": np.tile(branch, steps),
                           "modality": np.tile(branch, steps), "task": np.int32(0), "channel": np.tile(channel, steps),
                           "gamma": gamma.ravel().astype("float32"), "beta": np.float32(0),
                           "penalised": np.tile(penalised, steps)})
    manifest = {"threshold": 2e-2, "lam": 5e-3, "lam_per_step": 5e-3, "source": "observed", "status": "complete",
                "branches": [{"name": "rgb"}, {"name": "depth"}], "last_step": steps * 10, "model_class": "synthetic"}
    return Run(Path("synthetic"), None, manifest, gammas, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())


def bench_diagnose(steps: int = 500, repeats: int = 2) -> dict:
    run = synthetic_run(steps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        diagnose(run)
        times.append(time.perf_counter() - start)
    seconds = float(np.min(times))
    per_million = seconds / (len(run.gammas) / 1e6)
    return {"diagnose_seconds_per_million_rows": per_million,
            "diagnose_seconds_at_10000_steps": per_million * 10_000 * 16 * 512 * 2 / 1e6,
            "diagnose_rows": int(len(run.gammas))}
