"""Which lambda? Predict the exchange a lambda will give from a short probe of the training.

``predict_exchange(probe, lams, budget)`` reads a probe, a run of the first few hundred steps of the training
one wants (``cen_lab.train`` with ``stop_at``, or the user's own loop under ``cen_lab.observe``) at one or a few
lambdas, and predicts, for every lambda of a grid, the portion of penalised gammas under the exchange threshold at
the end of the budget, with an interval, and the state the run is expected to reach (``collapsing``,
``partial``, ``none``).

Measured (README, "Choosing lambda and the threshold"): with three 150-step probes of a 600-step budget, a mean
absolute error of 0.038 (plain) and 0.023 (bottleneck) on held-out lambdas and seeds; at lambda 2e-4 with a
10,000-step budget and 300-step probes, 0.35 on plain (a slow cascade the probes cannot see) and 0.031 on
bottleneck.

The model
---------
Time is counted in learning rate, ``u(t) = lr_0 + ... + lr_{t-1}``: under Adam the penalty alone moves a gamma by
``lr`` a step, under SGD with momentum ``mu`` by ``lr * lam / (1 - mu)``, so in ``u`` every penalised gamma moves
at a speed, and a learning-rate schedule only changes how much ``u`` the budget holds.

1. **Speeds in the probe.** For every penalised channel and every logged step of the probe's window (its last
   two thirds, where the channel is still above the threshold), the local speed of ``|gamma|`` in ``u`` (over
   ``STRIDE`` logged steps) and its displacement from the start ``Delta = |gamma_0| - |gamma|``.
2. **Deceleration.** ``speed = D_c - h_L * Delta``: a channel that has moved is held back more (the data gradient
   of a useful channel restores it, the network compensates). ``h_L >= 0`` is pooled over the channels of a layer
   (a within-channel regression), ``D_c`` is the channel's own starting speed. Then
   ``Delta(u) = D_c / h_L * (1 - exp(-h_L * u))``, a relaxation towards an equilibrium (``D_c * u`` for
   ``h_L = 0``: the schedule when nothing resists).
3. **How lambda enters.** The penalty is one term of the gradient. SGD: ``D(lam) = D(lam_p) + (lam - lam_p) /
   (1 - mu)``. Adam divides the mean gradient ``d`` by its root mean square: ``D = d / (sqrt(s^2 + d^2) + eps)``,
   ``s`` the standard deviation of the channel's data gradient ``dL/dgamma`` in the probe (``log.grads``), so
   ``d_p`` is solved from ``D(lam_p)`` and ``d(lam) = d_p + lam - lam_p``. With no data gradient (``s = 0``,
   ``h = 0``) this is exactly the penalty's schedule (``cen_lab.experiments.diagnosis.schedule_steps``).
4. **Absorption.** A channel under the threshold is exchanged: its own output is discarded, it gets no data
   gradient, and the penalty keeps it there. So it counts as exchanged from its crossing on.
5. **Several probes.** The model's error grows with the distance between the probe's lambda and the predicted
   one (its lambda dependence is approximate). Given probes at a few lambdas, each lambda is predicted from the
   two probes around it, interpolated in log lambda.
6. **Interval.** A bootstrap over channels (resampled within each layer, which re-estimates ``h_L``) and over each
   channel's starting speed (normal, with its standard error). It holds for the model; how far the model is from
   real runs is what ``cen-lab bench-lambda`` measures on held-out lambdas and seeds (README).

Plain Theorem 1 beside it (``theorem1`` column): the mean over penalised channels of ``2 Phi(lam / ||dL/dx'||) -
1``, ``||dL/dx'||`` the channel's mean in the probe's window.

What it models: SGD (heavy-ball momentum, subgradient L1 as the reference code) and Adam (subgradient L1), any
learning-rate schedule; a probe with at least ``MIN_LOGS`` logged steps in its window; Adam needs ``log.grads``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..runs.forecast_model import relaxation  # the relaxation of step 2 (shared with the run's own forecast)
from ..runs.reader import Run
from .formula import attraction_probability
from .lambda_probe import MIN_LOGS, MODELLED, STRIDE, ProbeFit, _pooled_h, fit_probe

__all__ = ["MODELLED", "MIN_LOGS", "STRIDE", "COLLAPSING", "NONE", "ExchangePrediction", "ProbeFit", "fit_probe",
           "predict_exchange", "predicted_state", "relaxation", "speed_at"]

COLLAPSING = 0.9  # predicted portion from which the state is "collapsing" (as cen_lab.diagnose)
NONE = 0.01  # predicted portion under which the state is "none" (no sparsification)
ADAM_EPS = 1e-8


@dataclass
class ExchangePrediction:
    """``predict_exchange``'s answer.

    ``table``: one row per lambda: lam, predicted (portion under the threshold at the budget's end), low, high
    (the ``level`` interval), state (``collapsing``, ``partial`` or ``none``), theorem1 (plain Theorem 1's
    portion), median_crossing (predicted step of the median crossing channel, or NA), probes (the lambdas of
    the probes it came from).
    ``crossings``: per lambda and channel, the predicted crossing step (-1: never within the budget).
    """

    table: pd.DataFrame
    crossings: pd.DataFrame
    fit: ProbeFit
    budget: int
    level: float
    regime: str
    notes: list[str] = field(default_factory=list)
    fits: list[ProbeFit] = field(default_factory=list)  # every probe's fit (the first is ``fit``)

    def __str__(self) -> str:
        lams = ", ".join(f"{f.lam:g}" for f in (self.fits or [self.fit]))
        lines = [f"predicted exchange at step {self.budget} (probe: {self.fit.probe_steps} steps at lam {lams}; "
                 f"{self.level:.0%} intervals hold for the model, see the README's validation)",
                 f"regime: {self.regime}", *[f"note: {n}" for n in self.notes], self.table.to_string(index=False)]
        return "\n".join(lines)


def speed_at(D: np.ndarray, lam_p: float, lam: float, optimizer: str, momentum: float = 0.0,
             s: np.ndarray | float = 0.0, eps: float = ADAM_EPS) -> np.ndarray:
    """A channel's starting speed (in ``u``) at ``lam``, from its speed ``D`` at the probe's ``lam_p`` (step 3).

    SGD: ``D + (lam - lam_p) / (1 - momentum)``. Adam: the mean gradient ``d_p`` with ``D = d_p / (sqrt(s^2 +
    d_p^2) + eps)`` is solved for, then ``d = d_p + lam - lam_p`` gives ``d / (sqrt(s^2 + d^2) + eps)``; a
    saturated speed (``|D| >= 1 - 1e-6``, or ``s = 0``) is read as ``d_p = lam_p`` (the data gradient moves it
    no slower than the penalty alone).
    """
    D = np.asarray(D, dtype=np.float64)
    if optimizer == "sgd":
        return D + (lam - lam_p) / (1.0 - momentum)
    if optimizer != "adam":
        raise ValueError(f"optimizer {optimizer!r} is not modelled; the model knows {', '.join(MODELLED)}")
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), D.shape)
    Dc = np.clip(np.nan_to_num(D, posinf=1.0, neginf=-1.0), -1 + 1e-6, 1 - 1e-6)
    sat = (s <= 0) | (np.abs(np.nan_to_num(D, posinf=1.0)) >= 1 - 1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        d_p = np.where(sat, lam_p, Dc * s / np.sqrt(1 - Dc ** 2))
    d = d_p + lam - lam_p
    return d / (np.sqrt(s ** 2 + d ** 2) + eps)


def predicted_state(portion: float) -> str:
    """``collapsing`` (>= ``COLLAPSING``), ``none`` (< ``NONE``) or ``partial``."""
    return "collapsing" if portion >= COLLAPSING else ("none" if portion < NONE else "partial")


def predict_exchange(probe: Run | str | Path | ProbeFit | Sequence[Run | str | Path | ProbeFit],
                     lams: Sequence[float], budget: int | None = None, *,
                     level: float = 0.95, n_boot: int = 400, seed: int = 0, optimizer: str | None = None,
                     lr: float | Sequence[float] | Callable[[int], float] | None = None,
                     momentum: float | None = None, lam: float | None = None, threshold: float | None = None
                     ) -> ExchangePrediction:
    """Predict the final exchange of every lambda of ``lams`` after ``budget`` steps, from one or a few probes.

    Parameters
    ----------
    probe : Run, run directory or ProbeFit, or a sequence of them
        The first steps of the training (``cen_lab.train(cfg, stop_at=K)`` with ``cfg.train.steps`` the budget,
        or the user's loop under ``cen_lab.observe``), with gammas logged (and gradients for Adam). Several
        probes at different lambdas: each lambda of the grid is predicted from the two probes around it, the
        predictions interpolated in log lambda (outside their range: from the nearest probe). The model's error
        grows with the distance from the probe's lambda (README: "Choosing lambda and the threshold").
    lams : sequence of float
        The lambda grid (weights per step, > 0).
    budget : int, optional
        Steps of the full training (default: the probe's ``train.steps``).
    level : float
        Level of the bootstrap intervals.
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seed of the bootstrap.
    optimizer, lr, momentum, lam, threshold
        For a probe that does not record them (observed or imported runs); see ``fit_probe``.

    Returns
    -------
    ExchangePrediction
        With several probes, ``fit`` is the first probe's and ``fits`` holds all of them.

    Raises
    ------
    ValueError
        Lambdas that are not positive, a budget shorter than the probe, a probe with too few logged steps or no
        penalised gammas, an optimiser the model does not know, Adam without logged gradients, probes of
        different budgets or at the same lambda.
    """
    lams = [float(x) for x in np.atleast_1d(np.asarray(lams, dtype=np.float64))]
    bad = [x for x in lams if not (x > 0 and np.isfinite(x))]
    if not lams or bad:
        raise ValueError(f"lambdas must be positive and finite; got {bad or 'an empty grid'}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    probes = list(probe) if isinstance(probe, (list, tuple)) else [probe]
    if not probes:
        raise ValueError("predict_exchange needs at least one probe")
    fits = [p if isinstance(p, ProbeFit) else fit_probe(p, budget, optimizer=optimizer, lr=lr, momentum=momentum,
                                                        lam=lam, threshold=threshold) for p in probes]
    for fit in fits:
        if budget is not None and budget != fit.budget:
            raise ValueError(f"the fit of {fit.run} was made for a budget of {fit.budget} steps, not {budget}")
    if len({f.budget for f in fits}) > 1:
        raise ValueError(f"the probes were fitted for different budgets: {sorted({f.budget for f in fits})}")
    fits.sort(key=lambda f: f.lam)
    if len({f.lam for f in fits}) < len(fits):
        raise ValueError(f"two probes share a lambda: {[f.lam for f in fits]}")
    one = [_predict_one(f, lams, level, n_boot, seed) for f in fits]
    if len(fits) == 1:
        table, crossings = one[0]
        table["probes"] = f"{fits[0].lam:g}"
    else:
        table, crossings = _interpolate(fits, one, lams)
    notes = []
    if fits[0].optimizer == "sgd" and fits[0].momentum:
        notes.append("SGD with momentum: the velocity's build-up over the first 1/(1 - momentum) steps is read as "
                     "part of the starting speed")
    f0 = fits[0]
    u_sum = float(np.sum(f0.lrs))
    regime = (f"probe{'s' if len(fits) > 1 else ''} {', '.join(f.run for f in fits)}: {f0.probe_steps} steps at lam "
              f"{', '.join(f'{f.lam:g}' for f in fits)}; {f0.describe}"
              + f"; budget {f0.budget} steps, lr sum {u_sum:.3g}; threshold {f0.threshold:g}")
    return ExchangePrediction(table, crossings, f0, f0.budget, level, regime, notes, fits)


def _interpolate(fits: list[ProbeFit], one: list[tuple[pd.DataFrame, pd.DataFrame]], lams: list[float]
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each lambda from the two probes around it, linear in log lambda; outside their range, the nearest."""
    logs = np.log([f.lam for f in fits])
    rows, crossings = [], []
    for i, lam_ in enumerate(lams):
        x = np.log(lam_)
        j = int(np.clip(np.searchsorted(logs, x) - 1, 0, len(fits) - 2))
        w = float(np.clip((x - logs[j]) / (logs[j + 1] - logs[j]), 0.0, 1.0))
        a, b = one[j][0].iloc[i], one[j + 1][0].iloc[i]
        row = {k: (1 - w) * a[k] + w * b[k] for k in ("predicted", "low", "high", "theorem1")}
        near = a if w < 0.5 else b
        row.update(lam=lam_, state=predicted_state(row["predicted"]), median_crossing=near["median_crossing"],
                   probes=f"{fits[j].lam:g}" if w == 0 else (f"{fits[j + 1].lam:g}" if w == 1
                                                             else f"{fits[j].lam:g}-{fits[j + 1].lam:g}"))
        rows.append(row)
        cr = one[j if w < 0.5 else j + 1][1]
        crossings.append(cr[cr["lam"] == lam_])
    table = pd.DataFrame(rows)[["lam", "predicted", "low", "high", "state", "theorem1", "median_crossing", "probes"]]
    table["median_crossing"] = table["median_crossing"].astype("Int64")
    return table, pd.concat(crossings, ignore_index=True)


def _predict_one(fit: ProbeFit, lams: list[float], level: float, n_boot: int, seed: int
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One probe's prediction for every lambda of ``lams``: the table and the crossings."""
    c = fit.channels
    u = np.concatenate([[0.0], np.cumsum(fit.lrs)])
    h = fit.h.to_numpy()[c["layer_index"].to_numpy()]
    rng = np.random.default_rng(seed)
    li = c["layer_index"].to_numpy()
    boot_idx = np.concatenate([rng.choice(np.flatnonzero(li == k), size=(n_boot, int((li == k).sum())))
                               for k in range(li.max() + 1)], axis=1)  # [B, C] within layers
    h_boot = np.stack([_pooled_h(fit.sxy[i], fit.sxx[i], li[i]) for i in boot_idx])  # [B, layers]
    D_noise = rng.standard_normal(boot_idx.shape)
    rows, cross_rows = [], []
    dist = c["gamma0"].to_numpy() - fit.threshold  # the distance to cover: strictly more than this
    D_fit, s = c["D"].to_numpy(), c["s"].to_numpy()
    # the bootstrap's replicates, the same for every lambda: resampled speeds, noises, decelerations, distances
    D_b = D_fit[boot_idx] + c["D_se"].to_numpy()[boot_idx] * D_noise
    s_b, dist_b = s[boot_idx], dist[boot_idx]
    h_b = np.take_along_axis(h_boot, li[boot_idx], axis=1)
    dx = c["dx"].to_numpy()
    dx = dx[np.isfinite(dx)]  # empty without logged gradients
    for lam_ in lams:
        D = speed_at(D_fit, fit.lam, lam_, fit.optimizer, fit.momentum, s)
        moved = relaxation(D, h, u[-1])
        point = float(np.mean(moved > dist))
        Db = speed_at(D_b, fit.lam, lam_, fit.optimizer, fit.momentum, s_b)
        boot = np.mean(relaxation(Db, h_b, u[-1]) > dist_b, axis=1)
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        lo, hi = min(lo, point), max(hi, point)
        steps = _crossing_steps(D, h, u, dist)
        theorem = float(np.mean(attraction_probability(lam_, dx))) if len(dx) else float("nan")
        crossed = steps[steps >= 0]
        rows.append({"lam": lam_, "predicted": point, "low": float(lo), "high": float(hi),
                     "state": predicted_state(point), "theorem1": theorem,
                     "median_crossing": int(np.median(crossed)) if len(crossed) else pd.NA})
        cross_rows.append(c[["layer", "branch", "channel"]].assign(lam=lam_, crossing_step=steps))
    table = pd.DataFrame(rows)
    table["median_crossing"] = table["median_crossing"].astype("Int64")
    return table, pd.concat(cross_rows, ignore_index=True)


def _crossing_steps(D: np.ndarray, h: np.ndarray, u: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """The first step after which the modelled displacement exceeds ``dist`` (-1: never within the budget)."""
    moved = relaxation(D[None, :], h[None, :], u[1:, None])  # [T, C]: after step t + 1
    over = moved > dist[None, :]
    first = over.argmax(0)
    out = np.where(over.any(0), first + 1, -1)
    return np.where(dist < 0, 0, out)
