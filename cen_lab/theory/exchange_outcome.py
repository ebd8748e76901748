"""Does Theorem 1 say which channels CEN training exchanges? The formula against the outcome of real CEN runs.

Theorem 1 is stated for a network *without* exchange, at ``gamma = 0``. The question users ask is wider: in
CEN training (exchange on), which penalised channels end under the threshold, that is exchanged? This module
scores the formula's probability on that outcome, with the quantities training logs:

- **prediction**: ``attraction_probability(lam, ||dL/dx'||)``, with ``lam`` the run's weight per step and
  ``||dL/dx'||`` the channel's mean over a common early window: the logged steps before the run's first
  crossing (at least the first ``MIN_STEPS + 1`` logged steps), so that no channel's value is measured after
  any channel was exchanged;
- **outcome**: the channel crossed the threshold at some logged step (in CEN an exchanged channel gets no data
  gradient and does not come back; ``cen_lab.diagnose``'s crossings);
- beside it, the diagnosis's **importance** (the within-step percentile of ``|dL/dgamma|`` before the crossing)
  as a descriptive ranking, not a prediction: it is measured up to each channel's own crossing.

``exchange_outcome_scores`` gives, per architecture, the portion exchanged (Wilson interval), the mean
prediction, the ECE and Brier score, and the AUC of the prediction and of low importance for the outcome, each
with a bootstrap interval over runs (the channels of one run are not independent). The formula at gamma = 0 and
the corrected predictors on the same outcome are in ``cen_lab.theory.exchange_predictors``.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from ..experiments.diagnosis import MIN_STEPS, diagnose
from ..runs.reader import Run
from .formula import attraction_probability, brier_score, expected_calibration_error, proportion_ci

__all__ = ["exchange_outcome", "exchange_outcome_scores", "bootstrap_over_runs", "calibration_measures",
           "outcome_row"]


def exchange_outcome(runs: Mapping[str, Run] | Iterable[Run]) -> pd.DataFrame:
    """One row per penalised channel of every run: ``run, arch, seed, layer, branch, channel, norm`` (mean
    ``||dL/dx'||`` over the early window), ``window_end`` (its last step), ``first_crossing`` (the run's; NaN when
    none), ``predicted``, ``exchanged``, ``importance``. Raises ``ValueError`` for a run without logged gradients
    or without a recorded lam."""
    items = runs.items() if isinstance(runs, Mapping) else ((str(r.path.name), r) for r in runs)
    frames = []
    for label, run in items:
        if run.grads.empty:
            raise ValueError(f"{label}: no gradients logged (log.grads / obs.grads); the prediction needs ||dL/dx'||")
        lam = run.lam_per_step
        if lam is None:
            raise ValueError(f"{label}: the run records no lam; the prediction needs it")
        d = diagnose(run)
        c = d.crossings
        steps = np.sort(run.grads["step"].unique())
        first = c["crossing_step"].dropna()
        end = max(float(first.min()) if len(first) else np.inf, float(steps[min(MIN_STEPS, len(steps) - 1)]) + 1)
        early = run.grads[run.grads["step"] < end]
        norm = early.groupby(["layer", "branch", "channel"])["dxprime_norm"].mean()
        keys = c.set_index(["layer", "branch", "channel"]).index
        out = c[["layer", "branch", "channel", "importance"]].copy()
        out["norm"] = keys.map(norm).to_numpy(float)
        out["predicted"] = attraction_probability(lam, out["norm"].to_numpy())
        out["exchanged"] = c["crossing_step"].notna().to_numpy()
        out["window_end"] = int(early["step"].max())
        out["first_crossing"] = float(first.min()) if len(first) else np.nan
        cfg = run.config
        out.insert(0, "run", label)
        out.insert(1, "arch", cfg.model.arch if cfg is not None else run.manifest.get("model_class", "?"))
        out.insert(2, "seed", cfg.seed if cfg is not None else -1)
        frames.append(out)
    if not frames:
        raise ValueError("exchange_outcome needs at least one run")
    return pd.concat(frames, ignore_index=True)


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (the Mann-Whitney U over n1 * n0)."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def bootstrap_over_runs(groups: list[pd.DataFrame], measures, n_boot: int, level: float,
                        rng: np.random.Generator) -> dict[str, float]:
    """``measures(groups)`` (a dict of numbers) with ``<name> low`` / ``<name> high``: the ``level`` interval of
    ``n_boot`` bootstrap draws of whole runs (the channels of one run are not independent). With one run there is
    nothing to draw from: the intervals are NaN."""
    alpha = (1 - level) / 2
    point = measures(groups)
    draws = n_boot if len(groups) > 1 else 0
    boot = [measures([groups[i] for i in rng.integers(0, len(groups), len(groups))]) for _ in range(draws)]
    row = {}
    for name, value in point.items():
        values = np.array([b[name] for b in boot], float)
        values = values[np.isfinite(values)]
        row[name] = value
        row[f"{name} low"] = float(np.quantile(values, alpha)) if len(values) else float("nan")
        row[f"{name} high"] = float(np.quantile(values, 1 - alpha)) if len(values) else float("nan")
    return row


def calibration_measures(parts: list[pd.DataFrame], column: str, bins: int = 10) -> dict[str, float]:
    """``ECE``, ``Brier`` and ``AUC`` of the prediction ``column`` (clipped to [0, 1]) for ``exchanged``, over the
    channels of ``parts``."""
    p = np.concatenate([g[column].to_numpy(float) for g in parts]).clip(0, 1)
    y = np.concatenate([g["exchanged"].to_numpy(bool) for g in parts])
    return {"ECE": expected_calibration_error(p, y.astype(float), bins), "Brier": brier_score(p, y.astype(float)),
            "AUC": _auc(p, y)}


def outcome_row(part: pd.DataFrame, column: str, measures, n_boot: int, level: float,
                rng: np.random.Generator) -> dict[str, float]:
    """One scored row of the channels of ``part`` (rows with a ``column`` value): ``runs, channels, exchanged``
    (portion, Wilson interval), ``mean predicted``, then ``measures(groups)`` with its bootstrap over runs."""
    groups = [g for _, g in part.groupby("run", sort=False)]
    k, n = int(part["exchanged"].sum()), len(part)
    lo, hi = proportion_ci(k, n, level)
    row = {"runs": len(groups), "channels": n, "exchanged": k / n if n else float("nan"),
           "exchanged low": float(lo), "exchanged high": float(hi),
           "mean predicted": float(part[column].clip(0, 1).mean())}
    row.update(bootstrap_over_runs(groups, measures, n_boot, level, rng))
    return row


def exchange_outcome_scores(frame: pd.DataFrame, bins: int = 10, n_boot: int = 1000, level: float = 0.95,
                            seed: int = 0) -> pd.DataFrame:
    """Per architecture: ``runs, channels, exchanged`` (portion, Wilson interval), ``mean predicted``, ``ECE``,
    ``Brier``, ``AUC formula`` (the prediction for the outcome; 0.5 is chance) and ``AUC low importance``
    (``1 - importance``), each with a bootstrap interval over runs (``<name> low`` / ``<name> high``)."""
    rows = []
    rng = np.random.default_rng(seed)

    def measures(parts: list[pd.DataFrame]) -> dict[str, float]:
        m = calibration_measures(parts, "predicted", bins)
        imp = np.concatenate([g["importance"].to_numpy(float) for g in parts])
        y = np.concatenate([g["exchanged"].to_numpy(bool) for g in parts])
        ok = np.isfinite(imp)
        return {"ECE": m["ECE"], "Brier": m["Brier"], "AUC formula": m["AUC"],
                "AUC low importance": _auc(1 - imp[ok], y[ok])}

    for arch, sub in frame.groupby("arch", sort=False):
        rows.append({"arch": arch, **outcome_row(sub.dropna(subset=["predicted"]), "predicted", measures, n_boot,
                                                 level, rng)})
    return pd.DataFrame(rows)
