"""Validation of ``cen_lab.forecast``: ``cen-lab bench-forecast``.

Every complete run in a folder (the long regime's runs of ``cen-lab bench-long``: the ``long`` preset at lams 2e-4
and 2e-3 on both architectures, the 600-step default, the 512-scene comparison) is cut at 5, 10, 25 and 50% of its
budget and forecast from what it had logged by then; each forecast is scored on the run's final portion of
penalised gammas under the threshold. Beside it, from the same cut:

- ``probe``: ``predict_exchange`` with the cut run as its probe, at the run's own lambda;
- ``peer``: learning-curve extrapolation of the portion-under-threshold curve itself (``curve_peer``, the families
  of Domhan et al. 2015 by Akaike weights).

The forecaster's four settings (its window, the weight of its deceleration, how much each channel's deceleration
leans on its layer's, and the error factor of its interval)
are chosen on the **tuning runs**, seed 0 of every variant (``tune_forecaster``), and scored on the others
(seeds >= 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..experiments.diagnosis import _steps_matrix
from ..experiments.fusion import _interval
from ..runs.reader import Run, load_run
from ..runs.forecast_model import DECEL, SHRINK, SPREAD, WINDOW, widen
from .curve_peer import extrapolate_curve
from .forecast import forecast, truncate_run
from .lambda_choice import predict_exchange

__all__ = ["FRACTIONS", "GOALS", "WINDOWS", "DECELS", "SHRINKS", "SPREADS", "load_runs", "variant_of", "score_runs",
           "tune_forecaster",
           "forecast_summary", "run_forecast_benchmark"]

FRACTIONS = (0.05, 0.1, 0.25, 0.5)
GOALS = {0.1: 0.10, 0.25: 0.05, 0.5: 0.05}  # mean absolute error goals (issue 33) from these fractions
COVERAGE_GOAL = 0.8
WINDOWS = (0.25, 0.5, 0.75)  # the tuning grid
DECELS = (0.0, 0.5, 1.0)
SHRINKS = (0.0, 0.3, 1.0, float("inf"))
SPREADS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
METHODS = ("forecast", "probe", "peer")


def load_runs(runs_dir: str | Path) -> list[Run]:
    """Every complete trained run directly under ``runs_dir``, by name."""
    out = []
    for d in sorted(Path(runs_dir).iterdir()):
        if (d / "manifest.json").exists() and (d / "config.json").exists():
            run = load_run(d)
            if run.complete and run.config is not None and not run.gammas.empty:
                out.append(run)
    return out


def variant_of(run: Run) -> str:
    """``<data>-<arch>-lam<lam>-T<steps>``: what a run's seeds share (data ``pool``, ``finite`` or ``canonical``)."""
    c = run.config
    data = "pool" if c.data.train_pool else ("finite" if c.train.steps > 1000 else "canonical")
    return f"{data}-{c.model.arch}-lam{c.train.lam:g}-T{c.train.steps}"


def _curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    steps, rows, g = _steps_matrix(run.gammas)
    pen = rows["penalised"].to_numpy()
    return steps, (np.abs(g[:, pen]) < run.threshold).mean(1)


def score_runs(runs: Iterable[Run], fractions: Sequence[float] = FRACTIONS, *,
               windows: Sequence[float] = (WINDOW,), decels: Sequence[float] = (DECEL,),
               shrinks: Sequence[float] = (SHRINK,), spreads: Sequence[float] = (SPREAD,),
               methods: Sequence[str] = METHODS, n_boot: int = 200,
               progress: bool = True) -> pd.DataFrame:
    """One row per run, fraction, method (and forecaster setting): run, variant, arch, seed, lam, budget, final,
    fraction, step, now, method, window, decel, shrink, spread, predicted, low, high, error (predicted - final),
    covered,
    note (why a method could not answer). The forecaster is computed once per window, deceleration and shrink; each
    spread widens the same bootstrap interval (``forecast_model.widen``)."""
    from .._util.progress import progress_bar

    runs = list(runs)
    rows = []
    for run in progress_bar(runs, desc="forecast runs", unit="run", disable=not progress):
        steps, portion = _curve(run)
        budget = run.config.train.steps
        final = float(portion[-1])
        base = {"run": run.path.name, "variant": variant_of(run), "arch": run.config.model.arch,
                "seed": run.config.seed,
                "lam": run.config.train.lam, "budget": budget, "final": final}
        for f in fractions:
            k = int(np.searchsorted(steps, f * budget, side="right")) - 1
            cut = truncate_run(run, int(steps[k]))
            row0 = {**base, "fraction": f, "step": int(steps[k]), "now": float(portion[k])}
            for method in methods:
                grid = ([(w, d, sh) for w in windows for d in decels for sh in shrinks] if method == "forecast"
                        else [(np.nan, np.nan, np.nan)])
                for w, d, sh in grid:
                    r = {**row0, "method": method, "window": w, "decel": d, "shrink": sh, "spread": np.nan,
                         "predicted": np.nan, "low": np.nan, "high": np.nan, "note": ""}
                    try:
                        r.update(_answer(method, cut, steps[:k + 1], portion[:k + 1], budget, w, d, sh, n_boot))
                    except ValueError as e:
                        r["note"] = str(e).split(": ", 1)[-1][:160]
                    if method != "forecast":
                        rows.append(r)
                        continue
                    for sp in spreads:  # the same bootstrap, widened by each error factor
                        lo, hi = widen(r["now"], r["predicted"], r["low"], r["high"], sp)
                        rows.append({**r, "spread": sp, "low": lo, "high": hi})
    df = pd.DataFrame(rows)
    df["error"] = df["predicted"] - df["final"]
    covered = (df["low"] <= df["final"] + 1e-12) & (df["final"] <= df["high"] + 1e-12)
    df["covered"] = covered.astype(float).where(df["predicted"].notna())  # NaN: the method gave no answer
    return df


def _answer(method: str, cut: Run, steps: np.ndarray, portion: np.ndarray, budget: int, window: float,
            decel: float, shrink: float, n_boot: int) -> dict:
    if method == "forecast":  # the bootstrap's interval alone (spread 0): score_runs widens it
        fc = forecast(cut, window=window, decel=decel, shrink=shrink, spread=0.0, n_boot=n_boot)
        return {"predicted": fc.predicted, "low": fc.low, "high": fc.high}
    if method == "peer":
        ex = extrapolate_curve(steps, portion, budget)
        return {"predicted": ex.predicted, "low": ex.low, "high": ex.high}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = predict_exchange(cut, [cut.lam_per_step], budget, n_boot=n_boot, level=0.8).table.iloc[0]
    return {"predicted": float(t["predicted"]), "low": float(t["low"]), "high": float(t["high"])}


def tune_forecaster(scores: pd.DataFrame, min_fraction: float = 0.1) -> dict:
    """The forecaster's setting chosen on ``scores`` of the tuning runs (``score_runs`` over ``WINDOWS`` x
    ``DECELS`` x ``SHRINKS`` x ``SPREADS``): the window, deceleration and shrink of the least mean absolute error
    at fractions >= ``min_fraction`` (the error does not depend on the spread), then the smallest spread whose
    intervals cover the final portion in >= 80% of those forecasts (the widest, if none does)."""
    f = scores[(scores["method"] == "forecast") & (scores["fraction"] >= min_fraction) & scores["predicted"].notna()]
    if f.empty:
        raise ValueError("no forecast of the tuning runs to tune on")
    mae = f.groupby(["window", "decel", "shrink"])["error"].apply(lambda e: e.abs().mean())
    window, decel, shrink = (float(x) for x in mae.idxmin())
    best = f[(f["window"] == window) & (f["decel"] == decel) & (f["shrink"] == shrink)]
    cov = best.groupby("spread")["covered"].mean()
    ok = cov[cov >= COVERAGE_GOAL]
    spread = float(ok.index.min()) if len(ok) else float(cov.index.max())
    return {"window": window, "decel": decel, "shrink": shrink, "spread": spread, "mae": float(mae.min()),
            "coverage": float(cov[spread]), "n": int((best["spread"] == spread).sum()),
            "runs": sorted(f["run"].unique())}


def forecast_summary(scores: pd.DataFrame, level: float = 0.95, by: Sequence[str] = ("arch",)) -> pd.DataFrame:
    """Per ``by`` (default: architecture; ``("arch", "variant")`` for each variant), fraction and method: n (runs
    answered), mae with a t interval (its low end at least 0), the mean signed error (bias), coverage of the
    intervals, the goal where there is one and whether the forecaster's mean absolute error meets it (``met``;
    coverage is read beside it, goal >= 80%)."""
    rows = []
    for key, g in scores.groupby([*by, "fraction", "method"], sort=True):
        *group, f, method = key
        g = g[g["predicted"].notna()]
        ae = g["error"].abs().to_numpy()
        lo, hi = _interval(ae, level) if len(ae) else (np.nan, np.nan)
        lo = max(lo, 0.0) if np.isfinite(lo) else lo  # an absolute error is >= 0
        goal = GOALS.get(f) if method == "forecast" else None
        rows.append({**dict(zip(by, group)), "fraction": f, "method": method, "n": len(g),
                     "mae": float(ae.mean()) if len(ae) else np.nan, "mae_low": lo, "mae_high": hi,
                     "bias": float(g["error"].mean()) if len(g) else np.nan,
                     "coverage": float(g["covered"].astype(float).mean()) if len(g) else np.nan,
                     "goal": np.nan if goal is None else goal,
                     "met": bool(ae.mean() <= goal) if goal is not None and len(ae) else None})
    return pd.DataFrame(rows)


def run_forecast_benchmark(runs: str | Path | Sequence[Run], fractions: Sequence[float] = FRACTIONS, *,
                           tuning_seeds: Sequence[int] = (0,), n_boot: int = 200, progress: bool = True
                           ) -> tuple[pd.DataFrame, dict, pd.DataFrame, pd.DataFrame]:
    """The whole benchmark: tune the forecaster on the runs of ``tuning_seeds`` (``WINDOWS`` x ``DECELS`` x
    ``SHRINKS`` x ``SPREADS``), then score it at that setting, with the probe and the peer, on every other run.

    Returns ``(tuning scores, chosen setting, scores, summary)``. Raises ``ValueError`` when ``runs`` (a folder, or
    runs) holds no complete run of a tuning seed or none of another seed.
    """
    runs = load_runs(runs) if isinstance(runs, (str, Path)) else list(runs)
    tuning = [r for r in runs if r.config.seed in tuning_seeds]
    scored = [r for r in runs if r.config.seed not in tuning_seeds]
    if not tuning or not scored:
        raise ValueError(f"the benchmark needs complete runs of the tuning seeds {list(tuning_seeds)} and of other "
                         f"seeds; found {len(tuning)} and {len(scored)}")
    tune = score_runs(tuning, fractions, windows=WINDOWS, decels=DECELS, shrinks=SHRINKS, spreads=SPREADS,
                      methods=("forecast",), n_boot=n_boot, progress=progress)
    choice = tune_forecaster(tune)
    scores = score_runs(scored, fractions, windows=(choice["window"],), decels=(choice["decel"],),
                        shrinks=(choice["shrink"],), spreads=(choice["spread"],), n_boot=n_boot, progress=progress)
    return tune, choice, scores, forecast_summary(scores)
