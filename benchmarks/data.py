"""Part ``data`` (issue 32): what training data that does not run out costs per CEN step.

Two forms were possible: fresh scenes drawn for every batch, or a large pool drawn once and cached
(``cen_lab.data.pool``, what ``data.train_pool`` does). Both are measured against one training step of the default
CEN (plain, M = 2, batch 32 at 32x32, exchange and L1 on, torch's threads as in ``cen_lab.train``), alternated:

- ``data_inline_cost_per_step``: drawing the 32 scenes of one batch with the generator (the rejected form);
- ``data_pool_cost_per_step``: a pooled run's whole data cost spread over the ``long`` preset's 10,000 steps: the
  batch gather of every step, plus drawing, writing, loading and verifying its 65,536-scene pool once (the first run
  that needs it pays the drawing; later runs reuse the cache);
- ``data_pool_cached_cost_per_step``: the same when the cache is present (gather, load and verify).

Per-scene costs are measured on a 1,024-scene pool in a scratch folder and scaled to the preset's size.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

from cen_lab.config import ExperimentConfig
from cen_lab.data import pool as pool_mod
from cen_lab.data.scenes import draw_scenes

from .suite import _step_fn, paired


def _seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_data(scenes: int = 1024, repeats: int = 15) -> dict:
    long = ExperimentConfig.preset("long")
    params = pool_mod.source_generator(long.data.source, long.data.scene)
    batch, steps, pool_size = long.train.batch_size, long.train.steps, long.data.train_pool
    step, _ = _step_fn(ExperimentConfig.preset("default"), 2)
    rng = np.random.default_rng(0)
    step_s, inline_s = paired(step, lambda: draw_scenes(params, batch, rng), repeats=repeats)

    # the per-step gather from a pool held as training holds it ([M, N, C, H, W] float32 on the device)
    x = torch.rand(2, 8192, 3, 32, 32)
    idx = torch.from_numpy(np.random.default_rng(1).permutation(8192)[:batch])
    step_s2, gather_s = paired(step, lambda: x[:, idx], repeats=repeats)

    old = os.environ.get("CEN_LAB_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CEN_LAB_CACHE"] = tmp
        try:
            draw = _seconds(lambda: pool_mod.build_pool(params, scenes), repeats=1) / scenes
            load = _seconds(lambda: pool_mod.load_pool(params, scenes, ("rgb", "depth"))) / scenes
        finally:
            if old is None:
                os.environ.pop("CEN_LAB_CACHE")
            else:
                os.environ["CEN_LAB_CACHE"] = old
    step_med = statistics.median([step_s, step_s2])
    once_cached = load * pool_size / steps
    once_first = (draw + load) * pool_size / steps
    return {"data_inline_cost_per_step": inline_s / step_med,
            "data_pool_cost_per_step": (gather_s + once_first) / step_med,
            "data_pool_cached_cost_per_step": (gather_s + once_cached) / step_med,
            "data_seconds": {"cen_step": step_med, "inline_batch": inline_s, "gather": gather_s,
                             "pool_draw_and_write_per_scene": draw, "pool_load_and_verify_per_scene": load,
                             "pool_scenes": pool_size, "steps": steps, "threads": torch.get_num_threads()}}
