"""The exchange-regime benchmark: does a preset's CEN exchange partially and by importance, as the paper's does?

``run_regime_benchmark`` trains (or reuses) every preset at full size on every architecture over seeds, with
gradient logging, through ``cen_lab.sweep``. ``per_run_regime`` diagnoses each run (``cen_lab.diagnose``) and
checks whether any two of its branches compute the same outputs; ``regime_summary`` aggregates over seeds with
t intervals and checks the goals of the default regime:

- the settled portion of penalised gammas under the threshold is between 5% and 50% (the interval of the mean
  inside that range);
- the importance rank correlation of the crossing order (``Diagnosis``: Spearman of the crossing step with the
  channel's within-step percentile of ``|dL/dgamma|``, never-crossed channels last) has the lower bound of its
  mean over seeds >= 0.3;
- no pair of branches gives identical outputs on the validation set.

That fused beats either modality alone is the fusion benchmark's part (``cen-lab bench-fusion --variants
cen,unimodal-rgb,unimodal-depth``). The measured results are in the README; ``cen-lab bench-regime`` prints them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .._util.atomic import atomic_path
from ..config import ARCHS, ExperimentConfig, dotted
from ..runs.reader import load_run
from .diagnosis import diagnose
from .fusion import _interval
from .regime import regime_of, regime_text
from .sweeps import sweep
from .training import _load_splits

__all__ = ["GOALS", "regime_config", "run_regime_benchmark", "branch_output_gaps", "per_run_regime",
           "regime_summary"]

GOALS = {"settled portion": (0.05, 0.50), "importance lower bound": 0.3}


def regime_config(preset: str = "default", arch: str = "plain", **overrides) -> ExperimentConfig:
    """``preset`` on ``arch`` with gradients logged (the diagnosis's importance needs them), named
    ``regime-<preset>-<arch>``; ``overrides`` are dotted keys with ``__`` for dots."""
    base = {"model.arch": arch, "log.grads": True, "name": f"regime-{preset}-{arch}"}
    base.update(dotted(overrides))
    return ExperimentConfig.preset(preset).override(base)


def run_regime_benchmark(runs_dir: str | Path, *, presets: Sequence[str] = ("default", "collapse"),
                         seeds: Sequence[int] = range(5), archs: Sequence[str] = ARCHS, n_jobs: int = 2,
                         progress: bool = True, **overrides) -> pd.DataFrame:
    """Train (or reuse) one run per preset, architecture and seed in ``runs_dir``; returns the sweep tables with
    ``preset`` and ``arch`` columns (also written to ``runs_dir/regime_sweep.parquet``)."""
    archs = list(dict.fromkeys(archs))
    if not archs or any(a not in ARCHS for a in archs):
        raise ValueError(f"archs must be some of {list(ARCHS)}, got {archs}")
    tables = []
    for preset in presets:
        for arch in archs:
            table = sweep(regime_config(preset, arch, **overrides), {"seed": list(seeds)}, runs_dir,
                          backend="loky" if n_jobs > 1 else "serial", n_jobs=n_jobs, progress=progress)
            tables.append(table.assign(preset=preset, arch=arch))
    out = pd.concat(tables, ignore_index=True)
    with atomic_path(Path(runs_dir) / "regime_sweep.parquet") as tmp:
        out.to_parquet(tmp, index=False)
    return out


@torch.no_grad()
def branch_output_gaps(run) -> dict[tuple[str, str], float]:
    """For every pair of prediction branches of a trained run's final model: the largest absolute difference of
    their logits over the validation set (0 means the two branches compute the same thing)."""
    cfg = run.config
    model = run.load_model()
    model.eval()
    _, _, _, (x, _) = _load_splits(cfg, torch.device("cpu"))
    gaps: dict[tuple[str, str], float] = {}
    for start in range(0, x.shape[1], 128):
        outs = model.forward_tasks(x[:, start:start + 128])
        for task, out in outs.items():
            names = [f"{task}/{b}" if len(outs) > 1 else b for b in run.branches]
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    gap = float((out.logits[i] - out.logits[j]).abs().max())
                    key = (names[i], names[j])
                    gaps[key] = max(gaps.get(key, 0.0), gap)
    return gaps


def per_run_regime(table: pd.DataFrame) -> pd.DataFrame:
    """One row per completed run of ``run_regime_benchmark``'s table: its diagnosis (state, flags, final and
    settled portion, plateau, importance Spearman and interval), the smallest output gap between two branches,
    and the final validation score of each branch and the ensemble."""
    rows = []
    for row in table[table["status"].isin(["complete", "skipped"])].itertuples(index=False):
        run = load_run(row.path)
        d = diagnose(run)
        num = d.numbers
        val = run.metrics[run.metrics["split"] == "val"]
        last = val[val["step"] == val["step"].max()].set_index("name")["value"]
        scores = {f"score/{n.split('/', 1)[1]}": float(v) for n, v in last.items() if n.split("/")[0] in ("miou", "acc")}
        rows.append({"preset": row.preset, "arch": row.arch, "seed": int(row.seed), "state": d.state,
                     "flags": ", ".join(d.flags),
                     "final": num["final"], "settled": "settling" in d.flags,
                     "plateau": None if math.isnan(num["plateau"]) else int(num["plateau"]),
                     "rho": num["rho"], "rho_low": num["rho_low"], "rho_high": num["rho_high"],
                     "min_output_gap": min(branch_output_gaps(run).values()),
                     **scores, "regime": regime_text(regime_of([run.config], str(row.preset))),
                     "path": str(row.path)})
    return pd.DataFrame(rows)


def regime_summary(per_run: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per preset and architecture: runs, states, the final portion under the threshold and the importance
    correlation (mean over seeds with a ``level`` t interval), runs with identical branch outputs, the ensemble's
    and the weakest branch's score, and whether each of the default regime's goals (``GOALS``) is met."""
    rows = []
    for (preset, arch), sub in per_run.groupby(["preset", "arch"], sort=False):
        final, rho = sub["final"].to_numpy(float), sub["rho"].to_numpy(float)
        f_lo, f_hi = _interval(final, level)
        finite = rho[np.isfinite(rho)]  # NaN: no gradients logged, or too few crossings to rank
        r_lo, r_hi = _interval(finite, level)
        branch_cols = [c for c in sub.columns if c.startswith("score/") and not c.endswith("ensemble")]
        lo_goal, hi_goal = GOALS["settled portion"]
        rows.append({
            "preset": preset, "arch": arch, "runs": len(sub),
            "states": ", ".join(f"{k} x{v}" for k, v in sub["state"].value_counts().items()),
            "settled runs": int(sub["settled"].sum()),
            "final portion": float(final.mean()), "final low": f_lo, "final high": f_hi,
            "spearman": float(finite.mean()) if len(finite) else float("nan"), "spearman low": r_lo, "spearman high": r_hi,
            "identical branch pairs": int((sub["min_output_gap"] < 1e-6).sum()),
            "ensemble score": float(sub["score/ensemble"].mean()) if "score/ensemble" in sub else float("nan"),
            "weakest branch score": float(sub[branch_cols].min(axis=1).mean()) if branch_cols else float("nan"),
            "goal: portion in 5-50%": bool(lo_goal <= f_lo and f_hi <= hi_goal and sub["settled"].all()),
            "goal: importance >= 0.3": bool(r_lo >= GOALS["importance lower bound"]),
            "goal: no identical branches": bool((sub["min_output_gap"] >= 1e-6).all()),
            "regime": f"{sub['regime'].iloc[0]}; {len(sub)} seeds",
        })
    return pd.DataFrame(rows)

