"""The exchange forecast's model, on arrays: where will the portion of penalised gammas under the threshold be at
the end of the budget, from the gammas logged so far (``cen_lab.theory.forecast`` reads it off a run;
``ForecastRecorder`` records it while a run trains or is observed).

The model
---------
Time is counted in learning rate, ``u(t) = lr_0 + ... + lr_{t-1}`` (as ``cen_lab.theory.lambda_choice``): under
Adam the penalty alone moves a gamma by ``lr`` a step, under SGD by ``lr * lam / (1 - momentum)``, so in ``u`` a
channel moves at a speed, and the schedule says how much ``u`` is left: ``u(budget) - u(now)``. Under a cosine
schedule much less is left than the fraction of steps suggests; a curve fitted in steps cannot know that.

1. **Absorption.** A channel under the threshold now is exchanged: its own output is discarded, it gets no data
   gradient, the penalty keeps it there. It counts as exchanged at the end.
2. **Recent speed.** For every channel above the threshold, its local speeds of ``|gamma|`` in ``u`` over
   ``stride`` logged steps in the trailing window (the last ``window`` of the logged steps); its speed now is
   the mean of the window's last quarter.
3. **Deceleration.** Speed against level (``|gamma|``) within each live channel over the window: its slope
   ``h_c >= 0`` (a channel that has come down is held back more), shrunk towards its layer's pooled slope ``h_L``
   (``h_c = (Sxy_c + tau h_L) / (Sxx_c + tau)``, ``tau = shrink`` times the layer's mean ``Sxx``; ``shrink =
   inf``: the layer's alone), times ``decel``. The distance it will still move is ``v / h * (1 - exp(-h *
   u_left))`` (``v * u_left`` for ``h = 0``): a relaxation.
4. **Crossing.** A channel crosses when that distance exceeds ``|gamma| - threshold``; its step is where the
   schedule's ``u`` reaches it. The forecast is the portion exchanged now plus the portion predicted to cross.
5. **Interval.** A bootstrap over channels within layers (which re-estimates ``h_L``) and over each speed (its
   standard error), widened by the model's own error on the new crossings: ``[now + new / (1 + spread), now +
   new * (1 + spread)]``, ``spread`` chosen on the tuning runs (``cen-lab bench-forecast``; README).

With no data gradient every speed is the penalty's and nothing decelerates: the forecast is the penalty's
schedule (tested). A finished run has no ``u`` left: its forecast is its final portion.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MIN_LOGS", "WINDOW", "SPREAD", "DECEL", "SHRINK", "STRIDE", "MAX_STATES", "ForecastWarning",
           "ForecastResult", "forecast_arrays", "relaxation", "widen", "rates_of", "auto_cadence", "ForecastRecorder"]

MIN_LOGS = 8  # logged steps a forecast needs (a window of >= 4, so that every live channel has a local speed)
WINDOW = 0.25  # trailing fraction of the logged steps whose speeds are read (chosen on the tuning runs, README)
SHRINK = 0.3  # the layer's deceleration's weight in each channel's (inf: the layer's; chosen on the tuning runs)
DECEL = 1.0  # the weight of the measured deceleration (0: constant speeds; chosen on the tuning runs, README)
SPREAD = 0.75  # the model's error on the new crossings, as a factor (chosen on the tuning runs, README)
STRIDE = 4  # logged steps a local speed spans (fewer when the window is short)
COLLAPSING, NONE = 0.9, 0.01  # as cen_lab.diagnose and predict_exchange
FORECASTS_PER_RUN = 50  # the automatic cadence: about this many forecasts over a run
PERSIST = 3  # consecutive forecasts that must agree, with their whole interval, before the warning
MAX_STATES = 2048  # logged states a recorder keeps; beyond, every 2nd (4th, ...) of them (>= 2 * MIN_LOGS)


class ForecastWarning(UserWarning):
    """The forecast says, with its whole interval, that a run is collapsing or will exchange nothing."""


def relaxation(D: np.ndarray, h: np.ndarray, u: np.ndarray | float) -> np.ndarray:
    """``Delta(u) = D / h * (1 - exp(-h u))``, ``D * u`` where ``h = 0``; broadcasts."""
    D, h, u = np.asarray(D, np.float64), np.asarray(h, np.float64), np.asarray(u, np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = np.where(h > 0, D * -np.expm1(-h * u) / np.where(h > 0, h, 1.0), D * u)
    return np.where(np.isinf(D) & (D > 0), np.inf, out)


@dataclass
class ForecastResult:
    """One forecast, on arrays. ``crossing``: per channel, the step it is under the threshold from (its logged
    step for a channel under it now, -1 for one that stays above within the budget)."""

    step: int
    budget: int
    now: float
    predicted: float
    low: float
    high: float
    state: str
    step_90: int  # the step the portion passes 90%, -1: not within the budget
    crossing: np.ndarray
    h: np.ndarray  # per layer


def _state(p: float) -> str:
    return "collapsing" if p >= COLLAPSING else ("none" if p < NONE else "partial")


def _pooled_h(sxy: np.ndarray, sxx: np.ndarray, layer: np.ndarray, k: int) -> np.ndarray:
    """Per layer, the pooled within-channel slope of speed on level, clipped at 0."""
    num = np.bincount(layer, weights=sxy, minlength=k)
    den = np.bincount(layer, weights=sxx, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.where(den > 0, num / den, 0.0), 0.0, None)


def _channel_h(sxy: np.ndarray, sxx: np.ndarray, alive: np.ndarray, layer: np.ndarray, k: int, decel: float,
               shrink: float) -> np.ndarray:
    """Each channel's deceleration: its own slope shrunk towards its layer's pooled one (``shrink`` times the
    layer's mean ``Sxx`` of live channels as the prior's weight; inf: the layer's), clipped at 0, times ``decel``."""
    h_layer = _pooled_h(sxy, sxx, layer, k)
    if np.isinf(shrink):
        return decel * h_layer[layer]
    n = np.bincount(layer, weights=alive.astype(float), minlength=k)
    mean_sxx = np.bincount(layer, weights=np.where(alive, sxx, 0.0), minlength=k) / np.maximum(n, 1)
    tau = shrink * mean_sxx[layer]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.where(sxx + tau > 0, (sxy + tau * h_layer[layer]) / (sxx + tau), 0.0)
    return decel * np.clip(h, 0.0, None)


def _u_needed(v: np.ndarray, h: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """The ``u`` a channel of speed ``v`` and deceleration ``h`` needs to move more than ``dist`` (inf: never)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lin = np.where(v > 0, dist / v, np.inf)
        y = h * dist / np.where(v > 0, v, 1.0)  # the equilibrium is reached (y >= 1) or not
        rel = np.where((v > 0) & (y < 1), -np.log1p(-np.where(y < 1, y, 0.0)) / np.where(h > 0, h, 1.0), np.inf)
    return np.where(h > 0, rel, lin)


def forecast_arrays(steps: np.ndarray, a: np.ndarray, u: np.ndarray, threshold: float, layer: np.ndarray, *,
                    window: float = WINDOW, spread: float = SPREAD, decel: float = DECEL, shrink: float = SHRINK,
                    level: float = 0.8, n_boot: int = 200,
                    seed: int = 0) -> ForecastResult:
    """The forecast from logged ``|gamma|``.

    Parameters
    ----------
    steps : int array [S]
        The logged steps so far, increasing; the forecast is made at ``steps[-1]``.
    a : float array [S, C]
        ``|gamma|`` of the C penalised channels at those steps.
    u : float array [budget + 1]
        The schedule's cumulative learning rate, ``u[t]`` before step t (``u[0] = 0``).
    threshold : float
    layer : int array [C]
        Each channel's layer index (0..L-1).
    window, spread, decel, shrink, level, n_boot, seed
        See the module docstring (``decel`` scales the measured deceleration: 0 extrapolates each channel's
        recent speed as constant; ``shrink`` weighs the layer's deceleration in each channel's); ``seed`` makes
        the bootstrap a function of its arguments alone.
    """
    steps = np.asarray(steps, np.int64)
    a = np.asarray(a, np.float64)
    S, C = a.shape
    budget = len(u) - 1
    K = int(steps[-1])
    if S < MIN_LOGS:
        raise ValueError(f"a forecast needs {MIN_LOGS} logged steps; this run has {S} up to step {K}")
    if K > budget:
        raise ValueError(f"the budget ({budget} steps) is shorter than the steps already logged ({K})")
    k = int(layer.max()) + 1 if C else 0
    us = u[steps]
    alive = a[-1] >= threshold
    now = float(np.mean(~alive)) if C else 0.0
    k0 = int(np.searchsorted(steps, K - window * (K - steps[0]), side="left"))
    n_win = S - k0
    if n_win < MIN_LOGS // 2:  # the window keeps at least half the minimum
        k0 = S - MIN_LOGS // 2
        n_win = S - k0
    st = max(1, min(STRIDE, n_win // 2))
    w, uu = a[k0:], us[k0:]
    du = (uu[st:] - uu[:-st])[:, None]
    ok = (w[st:] >= threshold) & (w[:-st] >= threshold) & (du > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        vloc = np.where(ok, -(w[st:] - w[:-st]) / np.where(du > 0, du, 1.0), np.nan)  # [P, C]
    lev = np.where(ok, (w[st:] + w[:-st]) / 2, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: channels under the threshold
        vm, lm = np.nanmean(vloc, 0), np.nanmean(lev, 0)
        sxy = np.where(alive, np.nansum((vloc - vm) * (lev - lm), 0), 0.0)
        sxx = np.where(alive, np.nansum((lev - lm) ** 2, 0), 0.0)
        recent = vloc[-max(1, len(vloc) // 4):]
        v = np.nan_to_num(np.nanmean(recent, 0))
        n = np.sum(~np.isnan(recent), 0)
        v_se = np.where(n > 1, np.nan_to_num(np.nanstd(recent, 0, ddof=1)) / np.sqrt(np.maximum(n, 1)), 0.0)
    h_layer = decel * _pooled_h(sxy, sxx, layer, k)
    h = _channel_h(sxy, sxx, alive, layer, k, decel, shrink)
    u_left = u[-1] - us[-1]
    dist = a[-1] - threshold  # to move strictly more than this

    def portion(v_, h_, dist_, alive_):
        return np.mean(~alive_ | (relaxation(v_, h_, u_left) > dist_), axis=-1)

    need = _u_needed(v, h, dist)
    cross = np.searchsorted(u, us[-1] + need, side="right")  # u[t] >= u_K + need first at t
    cross = np.where(alive & (need <= u_left) & (cross <= budget), np.maximum(cross, K + 1), -1)
    first_under = np.argmax(a < threshold, axis=0)  # the first logged step under it (absorbed since)
    cross = np.where(alive, cross, steps[first_under])
    predicted = float(np.mean(cross >= 0)) if C else 0.0
    lo = hi = predicted
    if C and n_boot > 0 and u_left > 0:
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(layer == j), size=(n_boot, int((layer == j).sum())))
                              for j in range(k) if (layer == j).any()], axis=1)  # [B, C] within layers
        hb = np.stack([_channel_h(sxy[i], sxx[i], alive[i], layer[i], k, decel, shrink) for i in idx])  # [B, C]
        vb = v[idx] + v_se[idx] * rng.standard_normal(idx.shape)
        boot = portion(vb, hb, dist[idx], alive[idx])
        lo, hi = (float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    lo, hi = widen(now, predicted, lo, hi, spread)
    step_90 = -1
    if C:
        need90 = int(np.ceil(COLLAPSING * C))
        within = np.sort(cross[cross >= 0])
        if len(within) >= need90:
            step_90 = int(within[need90 - 1])
    return ForecastResult(K, budget, now, predicted, lo, hi, _state(predicted), step_90, cross, h_layer)


def rates_of(lr: Any, budget: int) -> np.ndarray:
    """The learning rate of every step of a ``budget``-step run: ``lr`` is one rate, every step's rate, or a
    function step -> rate."""
    budget = int(budget)
    if callable(lr):
        rates = np.array([float(lr(s)) for s in range(budget)])
    elif np.ndim(lr):
        rates = np.asarray(lr, dtype=np.float64)
        if len(rates) != budget:
            raise ValueError(f"lr has {len(rates)} rates; the budget has {budget} steps")
    else:
        rates = np.full(budget, float(lr))
    if (rates < 0).any() or not np.isfinite(rates).all():
        raise ValueError("learning rates must be finite and >= 0")
    return rates


def widen(now, predicted, low, high, spread):
    """The interval with the model's own error on the new crossings (``predicted - now``) as a factor ``spread``:
    at least ``[now + new / (1 + spread), now + new * (1 + spread)]``, within ``[now, 1]``; works on arrays."""
    new = np.asarray(predicted) - now
    lo = np.maximum(now, np.minimum(np.minimum(low, predicted), now + new / (1 + spread)))
    hi = np.minimum(1.0, np.maximum(np.maximum(high, predicted), now + new * (1 + spread)))
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def auto_cadence(total_steps: int, log_every: int = 1) -> int:
    """Steps between recorded forecasts: about ``FORECASTS_PER_RUN`` over the run, a multiple of ``log_every``."""
    per = max(1, round(total_steps / max(log_every, 1) / FORECASTS_PER_RUN))
    return per * max(log_every, 1)


class ForecastRecorder:
    """Keeps the penalised ``|gamma|`` of every logged state and records a forecast at the logged steps that reach
    each multiple of ``every`` (a function of the steps alone, so a resumed run records what an uninterrupted one
    does); warns once (``ForecastWarning``) when ``PERSIST`` forecasts in a row say, with their whole interval,
    collapsing or none (one forecast of a noisy run can say so and the next not). Past ``MAX_STATES`` logged
    states it keeps every 2nd (then 4th, ...) of them, chosen by their index alone, plus the newest, so that memory
    stays bounded and a resumed run keeps the same ones; ``cen_lab.forecast(run)`` reads them all.

    Parameters
    ----------
    writer : RunWriter
        Where the ``forecasts`` rows go.
    penalised : bool array [R]
        Which rows of a logged state are penalised.
    layer : int array [R]
        Each row's layer index.
    rates : float array [budget]
        The learning rate of every step of the budget.
    threshold : float
    every : int
        Steps between forecasts (``auto_cadence``).
    lam : float or None
        Named in the warning.
    sink : object with ``forecast(step, result)``, optional
        A TensorBoard sink.
    """

    def __init__(self, writer: Any, penalised: np.ndarray, layer: np.ndarray, rates: np.ndarray, threshold: float,
                 every: int, lam: float | None = None, sink: Any = None):
        self.writer, self.threshold, self.every, self.lam, self.sink = writer, float(threshold), int(every), lam, sink
        self.penalised = np.asarray(penalised, bool)
        self.layer = np.unique(np.asarray(layer)[self.penalised], return_inverse=True)[1]
        self.u = np.concatenate([[0.0], np.cumsum(np.asarray(rates, np.float64))])
        self.steps: list[int] = []  # the kept states: index % stride == 0 in the sequence of logged states
        self.a: list[np.ndarray] = []  # their penalised |gamma|, float32 [C]
        self.seen, self.stride = 0, 1
        self.next_due = 0
        self.warned = False
        self._streak: tuple[str | None, int] = (None, 0)  # the extreme the last forecasts agreed on, and how many
        self.last: ForecastResult | None = None
        self.seconds = 0.0  # time spent forecasting (the benchmark's cost)
        self._loaded = False  # the states on disk (a resumed run) are read at the first logged state

    @property
    def budget(self) -> int:
        return len(self.u) - 1

    def state(self, step: int, gamma: np.ndarray) -> ForecastResult | None:
        """Add the logged state ``step`` (its gathered gammas, all rows) and forecast when one is due."""
        import time

        if not self._loaded:
            self._load(int(step))
        row = np.abs(np.asarray(gamma, np.float32)[self.penalised])
        self._keep(int(step), row)
        if step < self.next_due or self.seen < MIN_LOGS or step > self.budget or not self.penalised.any():
            return None
        t0 = time.perf_counter()
        steps, a = self.steps, self.a
        if steps[-1] != step:  # the newest state, not kept for later
            steps, a = steps + [int(step)], a + [row]
        res = forecast_arrays(np.array(steps), np.stack(a), self.u, self.threshold, self.layer, seed=step)
        self.seconds += time.perf_counter() - t0
        self.next_due = (step // self.every + 1) * self.every
        self.last = res
        self.writer.add("forecasts", step=np.array([step], np.int64), budget=np.array([res.budget], np.int64),
                        now=np.array([res.now]), predicted=np.array([res.predicted]), low=np.array([res.low]),
                        high=np.array([res.high]), state=np.array([res.state], dtype=object),
                        step_90=np.array([res.step_90], np.int64))
        if self.sink is not None:
            self.sink.forecast(step, res)
        self._warn(res)
        return res

    def _keep(self, step: int, row: np.ndarray) -> None:
        """Count the logged state; keep it when its index is a multiple of the stride (doubled past MAX_STATES)."""
        if self.seen % self.stride == 0:
            self.steps.append(step)
            self.a.append(row)
        self.seen += 1
        if len(self.steps) > MAX_STATES:
            self.stride *= 2
            self.steps, self.a = self.steps[::2], self.a[::2]  # the kept indexes were multiples of the old stride

    def _load(self, step: int) -> None:
        """The logged states and forecasts on disk before ``step`` (a resumed run), so that the forecasts that
        follow equal an uninterrupted run's."""
        self._loaded = True
        g = _on_disk(self.writer, "gammas", ["step", "gamma"], step)
        if len(g):
            order = np.argsort(g["step"].to_numpy(), kind="stable")
            steps, counts = np.unique(g["step"].to_numpy(), return_counts=True)
            rows = g["gamma"].to_numpy()[order].reshape(len(steps), counts[0])  # [S, R], the observer's row order
            for s, r in zip(steps, rows):
                self._keep(int(s), np.abs(r[self.penalised].astype(np.float32)))
        done = _on_disk(self.writer, "forecasts", ["step"], step)["step"]
        if len(done):
            self.next_due = (int(done.max()) // self.every + 1) * self.every

    def _warn(self, res: ForecastResult) -> None:
        extreme = "collapsing" if res.low >= COLLAPSING else ("none" if res.high < NONE else None)
        same, n = self._streak
        self._streak = (extreme, n + 1 if extreme == same else 1)
        if self.warned or extreme is None or self._streak[1] < PERSIST or res.step >= res.budget:
            return
        lam = f" ({self.lam:g} a step)" if self.lam else ""
        if extreme == "collapsing":
            what = (f"collapsing: {res.predicted:.0%} ({res.low:.0%}-{res.high:.0%}) of the penalised gammas under the "
                    f"threshold at step {res.budget}. Lower lam{lam} or the threshold")
        else:
            what = (f"exchanging nothing: {res.predicted:.1%} ({res.low:.1%}-{res.high:.1%}) under the threshold at "
                    f"step {res.budget}. Raise lam{lam} or the learning rate, lengthen the budget, or lower the threshold")
        self.warned = True
        warnings.warn(f"{self.writer.path}: the forecasts up to step {res.step} say the exchange is {what}",
                      ForecastWarning, stacklevel=3)


def _on_disk(writer: Any, table: str, columns: list[str], before: int):
    """The rows of ``table`` already written in ``writer``'s run with ``step < before`` (a DataFrame)."""
    import pandas as pd

    parts = [pd.read_parquet(p, columns=columns) for p in sorted((writer.path / table).glob("part-*.parquet"))]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in columns})
    return df[df["step"] < before]
