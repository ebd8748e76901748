"""Where will this run end? ``forecast(run)`` reads a run in progress (trained, observed or imported) and forecasts
the portion of penalised gammas under the exchange threshold at the end of its budget, with an interval, the
state that implies and the step at which the portion would pass 90%.

It is ``predict_exchange``'s probe that keeps growing: the same time in learning rate, the same absorption and
relaxation, but read from the run's own recent speeds at its own lambda, so that it needs no gradient log and
sharpens as the run goes. The model is ``cen_lab.runs.forecast_model``; ``cen_lab.train`` records it as the run
goes (the ``forecasts`` table, every ``log.forecast_every`` steps), and ``cen_lab.observe`` does when it is given
the schedule. How good it is at 5, 10, 25 and 50% of a run, against ``predict_exchange`` and a learning-curve
extrapolation of the portion itself, is ``cen-lab bench-forecast`` (README, "Forecasting a run").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..experiments.diagnosis import _steps_matrix
from ..experiments.training import lr_rates
from ..runs.forecast_model import DECEL, MIN_LOGS, SHRINK, SPREAD, WINDOW, ForecastResult, forecast_arrays, rates_of
from ..runs.reader import Run, load_run

__all__ = ["Forecast", "forecast", "truncate_run", "schedule_of", "MIN_LOGS"]


@dataclass
class Forecast:
    """``forecast``'s answer.

    ``step``: the last logged step it read; ``budget``: the steps of the whole run; ``now``: the portion under the
    threshold at ``step``; ``predicted``, ``low``, ``high``: the portion forecast at ``budget`` and its interval;
    ``state``: ``collapsing`` (>= 0.9), ``partial`` or ``none`` (< 0.01); ``step_90``: the step the portion
    would pass 90% (None: not within the budget); ``crossings``: per penalised channel, the step it is (or is
    forecast to be) under the threshold from, -1 for never within the budget.
    """

    run: str
    step: int
    budget: int
    now: float
    predicted: float
    low: float
    high: float
    state: str
    step_90: int | None
    level: float
    regime: str
    crossings: pd.DataFrame = dataclasses.field(repr=False)

    def __str__(self) -> str:
        at = "" if self.step_90 is None else f"; 90% under the threshold at step {self.step_90}"
        return (f"forecast of {self.run} at step {self.step} of {self.budget}: {self.predicted:.1%} of the penalised "
                f"gammas under the threshold at the end ({self.level:.0%} interval {self.low:.1%}-{self.high:.1%}; "
                f"{self.now:.1%} now), {self.state}{at}\nregime: {self.regime}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("step", "budget", "now", "predicted", "low", "high", "state", "step_90")}


def truncate_run(run: Run, step: int) -> Run:
    """``run`` as it was at ``step``: every table's rows up to it (what a forecast made then could read)."""
    tables = {t: getattr(run, t) for t in ("gammas", "exchange", "metrics", "grads", "forecasts")}
    tables = {t: df[df["step"] <= step] if "step" in df else df for t, df in tables.items()}
    manifest = {**run.manifest, "last_step": int(step), "status": "incomplete" if step < run.manifest.get(
        "total_steps", step + 1) else run.manifest.get("status")}
    return dataclasses.replace(run, manifest=manifest, **tables)


def schedule_of(run: Run, budget: int | None = None,
                lr: float | Sequence[float] | Callable[[int], float] | None = None) -> np.ndarray:
    """The learning rate of every step of the budget: a trained run's config, or ``lr`` (one rate, every step's
    rate, or a function step -> rate) and ``budget`` for an observed or imported run (its ``total_steps`` if
    recorded)."""
    cfg = run.config
    if cfg is not None and lr is None:
        steps = cfg.train.steps if budget is None else int(budget)
        return lr_rates(cfg.override({"train.steps": steps}).train)
    budget = budget if budget is not None else (run.manifest.get("total_steps") if cfg is None else cfg.train.steps)
    missing = [n for n, v in (("lr", lr), ("budget", budget)) if v is None]
    if missing:
        raise ValueError(f"{run.path}: a {run.source} run records no learning-rate schedule; give "
                         f"{' and '.join(missing)} (e.g. lr=0.01, or a function step -> lr, and budget=10000)")
    return rates_of(lr, budget)


def forecast(run: Run | str | Path, *, at: int | None = None, budget: int | None = None,
             lr: float | Sequence[float] | Callable[[int], float] | None = None, threshold: float | None = None,
             level: float = 0.8, n_boot: int = 200, seed: int = 0, window: float = WINDOW,
             spread: float = SPREAD, decel: float = DECEL, shrink: float = SHRINK) -> Forecast:
    """Forecast the final exchange of ``run`` from the gammas it has logged so far.

    Parameters
    ----------
    run : Run or run directory
        A run in progress (or finished: its forecast is its final portion), of any source.
    at : int, optional
        Forecast as of this step (the run's tables up to it); default: everything logged.
    budget : int, optional
        Steps of the whole run (default: a trained run's ``train.steps``, an observed run's ``total_steps``).
    lr : float, sequence or callable, optional
        The schedule of an observed or imported run (see ``schedule_of``); a trained run's is its config's.
    threshold : float, optional
        Default: the run's.
    level : float
        Level of the bootstrap part of the interval (the model's own error widens it; README).
    n_boot, seed, window, spread, decel, shrink
        The bootstrap's replicates and seed; the model's window, error factor, deceleration weight and the
        weight of the layer's deceleration in each channel's (``cen_lab.runs.forecast_model``).

    Raises
    ------
    ValueError
        A run with lam 0 (nothing will be exchanged), fewer than ``MIN_LOGS`` logged steps, no penalised gamma, no
        schedule (an observed run: give ``lr`` and ``budget``), a budget shorter than the steps already logged.
    """
    run = run if isinstance(run, Run) else load_run(run)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if run.lam_per_step is not None and run.lam_per_step == 0:
        raise ValueError(f"{run.path}: lam is 0, so no gamma is pushed to 0 and nothing will be exchanged beyond what "
                         "the data gradient does; there is nothing to forecast")
    if at is not None:
        run = truncate_run(run, at)
    thr = run.threshold if threshold is None else float(threshold)
    unapplied = sorted(run.manifest.get("unapplied_layers") or {})  # norms the forward never ran: as diagnose
    gammas = run.gammas[~run.gammas["layer"].isin(unapplied)] if unapplied else run.gammas
    if gammas.empty or not gammas["penalised"].any():
        raise ValueError(f"{run.path}: no penalised gamma is logged; nothing is attracted to 0")
    steps, rows, g = _steps_matrix(gammas)
    if len(steps) < MIN_LOGS:
        raise ValueError(f"{run.path}: a forecast needs {MIN_LOGS} logged steps; the run has {len(steps)} (up to "
                         f"step {int(steps[-1])}): wait for more, or log more often")
    rates = schedule_of(run, budget, lr)
    if int(steps[-1]) > len(rates):
        raise ValueError(f"the budget ({len(rates)} steps) is shorter than the steps already logged ({int(steps[-1])})")
    pen = rows["penalised"].to_numpy()
    u = np.concatenate([[0.0], np.cumsum(rates)])
    layer = pd.factorize(rows.loc[pen, "layer"])[0]
    res: ForecastResult = forecast_arrays(steps, np.abs(g[:, pen]), u, thr, layer, window=window, spread=spread,
                                          decel=decel, shrink=shrink, level=level, n_boot=n_boot, seed=seed)
    crossings = rows.loc[pen, ["layer", "branch", "channel"]].reset_index(drop=True).assign(crossing_step=res.crossing)
    return Forecast(run.path.name, res.step, res.budget, res.now, res.predicted, res.low, res.high, res.state,
                    None if res.step_90 < 0 else res.step_90, level, _regime(run, res, thr), crossings)


def _regime(run: Run, res: ForecastResult, thr: float) -> str:
    if run.config is not None:
        from ..experiments.regime import SMOKE_TEST, architecture, is_smoke_test, optimiser

        text = f"{architecture(run.config)}; {optimiser(run.config)}; lam {run.lam_per_step:g}"
        if is_smoke_test(run.config):
            text += f" (evidence: {SMOKE_TEST})"
    else:
        lam = run.lam_per_step
        lam = "not recorded" if lam is None else f"{lam:g}"
        text = f"{run.source} {run.manifest.get('model_class', 'model')}; lam {lam}"
    return f"{text}; budget {res.budget} steps; threshold {thr:g}; forecast accuracy: README, 'Forecasting a run'"
