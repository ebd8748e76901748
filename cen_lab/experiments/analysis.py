"""Summaries of runs: the key numbers a report's table shows."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..runs.reader import Run
from .regime import architecture, optimiser

__all__ = ["compute_run_summary"]


def compute_run_summary(runs: Sequence[Run] | Mapping[str, Run]) -> pd.DataFrame:
    """One row per run: settings and final numbers.

    Columns: ``run, status, steps, seed, lam, threshold, l1_rule, optimiser, architecture, exchange, modalities,
    tasks``, then for the
    last validation pass ``val/<score>/<branch>`` (score ``miou``, ``accuracy``, ``mae`` or ``f1``, see
    ``cen_lab.network.tasks``; branch a modality or ``ensemble``, prefixed ``<task>/`` with several tasks), and at the last logged state ``exchange_ratio`` (portion of channels exchanged) and
    ``penalised_below_threshold`` (portion of penalised gammas with |gamma| < threshold).
    """
    items = runs.items() if isinstance(runs, Mapping) else ((run.path.name, run) for run in runs)
    rows = []
    for name, run in items:
        m = run.manifest
        row = {"run": name, "status": run.status, "steps": m["last_step"], "seed": m["seed"],
               "lam": run.lam, "threshold": run.threshold, "l1_rule": m.get("l1_rule"),
               # cen_lab's own runs know how they were trained; observed and imported runs name their model
               "optimiser": optimiser(run.config) if run.config is not None else "not recorded",
               "architecture": architecture(run.config) if run.config is not None else m.get("model_class"),
               "exchange": m["exchange"], "modalities": "+".join(run.modalities),
               "tasks": "+".join(run.tasks)}
        val = run.metrics[(run.metrics["split"] == "val")]
        if len(val):
            last = val[val["step"] == val["step"].max()]
            for metric, value in zip(last["name"], last["value"]):
                if not metric.startswith("loss/"):
                    row[f"val/{metric}"] = float(value)
        if len(run.gammas):
            final = run.gammas[run.gammas["step"] == run.gammas["step"].max()]
            pen = final[final["penalised"]]
            row["penalised_below_threshold"] = float((pen["gamma"].abs() < run.threshold).mean()) if len(pen) else np.nan
        if len(run.exchange):
            ex = run.exchange[run.exchange["step"] == run.exchange["step"].max()]
            row["exchange_ratio"] = float(ex["exchanged"].mean())
        rows.append(row)
    return pd.DataFrame(rows)
