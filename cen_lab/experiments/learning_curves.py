"""Learning curves instead of end points: every variant's validation score at every evaluation, with t bands across
seeds, and the step after which the exchange has settled.

``per_run_curves`` reads, from every completed run of a benchmark table (``fusion.run_fusion_benchmark``), the
ensemble score of each task at every validation pass; ``compute_learning_curves`` gives the mean and t interval
across seeds per variant, task and step. ``exchange_curves`` reads the logged exchange ratio, and
``plateau_step`` finds the step after which a curve stays within ``tol`` (0.01 by default) of its later values:
the exchange has settled there. A comparison at a step before that is a comparison of unfinished runs.

Every frame has an ``arch`` column (from each run's config); bands and plateaus are taken within one
architecture.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fusion import _interval, by_arch, completed_runs

__all__ = ["per_run_curves", "compute_learning_curves", "exchange_curves", "plateau_step", "settling_table"]


def per_run_curves(table: pd.DataFrame) -> pd.DataFrame:
    """``arch, variant, seed, step, task, metric, value``: the final prediction's (the ensemble's, or the only
    one's) validation score of each task at every validation pass of every completed run of a benchmark table
    (the same prediction ``fusion.compare_to`` compares at the end)."""
    from ..network.tasks import TaskMetrics
    from .training import prediction_names

    rows = []
    for row, run, about in completed_runs(table):
        val = run.metrics[run.metrics["split"] == "val"]
        streams = list(dict.fromkeys(o.rsplit("/", 1)[-1] for o in run.outputs))
        for task, names in prediction_names(run.tasks, streams).items():
            metric = TaskMetrics.METRIC[task]
            sub = val[val["name"] == f"{metric}/{names[-1]}"]  # the last name is the ensemble (or the one output)
            rows.extend({"arch": about["arch"], "variant": row.variant, "seed": row.seed, "step": int(st),
                         "task": task, "metric": metric, "value": float(v)} for st, v in zip(sub["step"], sub["value"]))
    return pd.DataFrame(rows, columns=["arch", "variant", "seed", "step", "task", "metric", "value"])


def compute_learning_curves(curves: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """``arch, variant, task, metric, step, n_seeds, mean, ci_low, ci_high`` (t interval across seeds; NaN with
    one seed or no spread) from ``per_run_curves``."""
    parts = []
    for arch, of_arch in by_arch(curves):
        rows = []
        for (variant, task, metric, step), sub in of_arch.groupby(["variant", "task", "metric", "step"], sort=False):
            v = sub["value"].to_numpy(float)
            low, high = _interval(v, level)  # the t interval of the fusion tables
            rows.append({"arch": arch, "variant": variant, "task": task, "metric": metric, "step": int(step),
                         "n_seeds": len(v), "mean": float(v.mean()), "ci_low": low, "ci_high": high})
        parts.append(pd.DataFrame(rows).sort_values(["variant", "task", "step"], kind="stable"))
    return pd.concat(parts, ignore_index=True)  # architectures in order of appearance


def exchange_curves(table: pd.DataFrame) -> pd.DataFrame:
    """``arch, variant, seed, step, exchange_ratio``: the logged portion of channels exchanged (train metric
    ``exchange/ratio``) of every completed run."""
    rows = []
    for row, run, about in completed_runs(table):
        m = run.metrics
        ex = m[(m["split"] == "train") & (m["name"] == "exchange/ratio")]
        rows.extend({"arch": about["arch"], "variant": row.variant, "seed": row.seed, "step": int(s),
                     "exchange_ratio": float(v)} for s, v in zip(ex["step"], ex["value"]))
    return pd.DataFrame(rows, columns=["arch", "variant", "seed", "step", "exchange_ratio"])


def plateau_step(steps, values, tol: float = 0.01) -> int | None:
    """The first step after which ``values`` stay within ``tol`` of each other to the end (max - min of the values
    from that step on < ``tol``); None when even the last two values differ by ``tol`` or more, or there are
    fewer than two."""
    steps, values = np.asarray(steps), np.asarray(values, float)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    if len(values) < 2:
        return None
    # running max and min from the end: the spread of every suffix
    hi = np.maximum.accumulate(values[::-1])[::-1]
    lo = np.minimum.accumulate(values[::-1])[::-1]
    settled = np.flatnonzero((hi - lo) < tol)
    if not len(settled) or settled[0] >= len(values) - 1:
        return None
    return int(steps[settled[0]])


def settling_table(exchange: pd.DataFrame, tol: float = 0.01, min_span: float = 0.1) -> pd.DataFrame:
    """Per architecture and variant: ``plateau_step`` of its mean exchange-ratio curve across seeds,
    ``last_step``, ``final_exchange_ratio`` and ``settled``: a plateau that lasts at least ``min_span`` of the run
    (a curve still moving until its last two points is not settled). A variant that never exchanges has a flat 0
    curve and settles at its first step."""
    rows = []
    for arch, of_arch in by_arch(exchange):
        for variant, sub in of_arch.groupby("variant", sort=False):
            mean = sub.groupby("step")["exchange_ratio"].mean()
            step = plateau_step(mean.index.to_numpy(), mean.to_numpy(), tol)
            last = int(mean.index.max())
            rows.append({"arch": arch, "variant": variant, "plateau_step": step, "last_step": last,
                         "final_exchange_ratio": float(mean.iloc[-1]),
                         "settled": step is not None and last - step >= min_span * last})
    out = pd.DataFrame(rows, columns=["arch", "variant", "plateau_step", "last_step", "final_exchange_ratio",
                                      "settled"])
    return out.astype({"plateau_step": "Int64"})  # a step, or <NA> when the curve never settles
