"""The forecast's generic peer: learning-curve extrapolation of the portion-under-threshold curve itself, by the
parametric families of Domhan, Springenberg and Hutter ("Speeding up automatic hyperparameter optimization of
deep neural networks by extrapolation of learning curves", IJCAI 2015), fitted by least squares with scipy and
ensembled by Akaike weights.

It sees what a generic tool sees: the curve, in steps. It does not know the learning-rate schedule, the gammas
still above the threshold or how fast they move. ``cen-lab bench-forecast`` scores it beside ``cen_lab.forecast``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize

__all__ = ["FAMILIES", "CurveExtrapolation", "extrapolate_curve"]

# name -> (f(x, *params), initial params); x = 1 + 100 * step / budget, in [1, 101] (Domhan's x is an epoch >= 1)
FAMILIES = {
    "vap": (lambda x, a, b, c: np.exp(a + b / x + c * np.log(x)), (-1.0, -0.5, 0.1)),
    "pow3": (lambda x, c, a, alpha: c - a * x ** (-alpha), (0.5, 0.5, 0.5)),
    "log_log_linear": (lambda x, a, b: np.log(np.clip(a * np.log(x) + b, 1e-12, None)), (0.1, 1.0)),
    "hill3": (lambda x, ymax, eta, kappa: ymax * x ** eta / (kappa ** eta + x ** eta), (0.5, 2.0, 20.0)),
    "log_power": (lambda x, a, b, c: a / (1 + (x / np.exp(b)) ** c), (0.5, 3.0, -2.0)),
    "pow4": (lambda x, c, a, b, alpha: c - (a * x + b) ** (-alpha), (0.5, 1.0, 1.0, 0.5)),
    "mmf": (lambda x, alpha, beta, kappa, delta: alpha - (alpha - beta) / (1 + (kappa * x) ** delta),
            (0.5, 0.0, 0.05, 2.0)),
    "exp4": (lambda x, c, a, b, alpha: c - np.exp(-a * x ** alpha + b), (0.5, 0.1, 0.0, 1.0)),
    "janoschek": (lambda x, alpha, beta, kappa, delta: alpha - (alpha - beta) * np.exp(-kappa * x ** delta),
                  (0.5, 0.0, 0.01, 1.5)),
    "weibull": (lambda x, alpha, beta, kappa, delta: alpha - (alpha - beta) * np.exp(-(kappa * x) ** delta),
                (0.5, 0.0, 0.05, 1.5)),
    "ilog2": (lambda x, c, a: c - a / np.log(x + 1), (0.5, 0.5)),
}


@dataclass
class CurveExtrapolation:
    """The peer's answer: ``predicted`` (the Akaike-weighted mean of the families' values at the budget, clipped to
    [0, 1]), ``low``/``high`` (the weighted quantiles of ``level``), and per family its value and weight."""

    predicted: float
    low: float
    high: float
    families: dict[str, tuple[float, float]]  # name -> (value at the budget, Akaike weight)


def _x(steps: np.ndarray, budget: int) -> np.ndarray:
    return 1.0 + 100.0 * np.asarray(steps, np.float64) / budget


def extrapolate_curve(steps: np.ndarray, values: np.ndarray, budget: int, level: float = 0.8) -> CurveExtrapolation:
    """Fit every family of ``FAMILIES`` to ``values`` (a portion in [0, 1]) over ``steps`` and extrapolate to
    ``budget``. A family that fails to fit, or gives a non-finite value, is left out; with none left (or a flat
    curve, which every family fits as flat), the last value is the answer."""
    steps, y = np.asarray(steps, np.float64), np.asarray(values, np.float64)
    x, x_end = _x(steps, budget), float(_x(np.array([budget]), budget)[0])
    n = len(y)
    fits: dict[str, tuple[float, float]] = {}
    for name, (f, p0) in FAMILIES.items():
        if n <= len(p0) + 1:
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                p, _ = optimize.curve_fit(f, x, y, p0=p0, maxfev=4000)
            except (RuntimeError, ValueError, optimize.OptimizeWarning, TypeError):
                continue
            rss = float(np.sum((f(x, *p) - y) ** 2))
            end = float(f(x_end, *p))
        if not (np.isfinite(rss) and np.isfinite(end)):
            continue
        aic = n * np.log(max(rss, 1e-12) / n) + 2 * len(p0)
        fits[name] = (float(np.clip(end, 0.0, 1.0)), aic)
    if not fits:
        last = float(y[-1]) if n else 0.0
        return CurveExtrapolation(last, last, last, {})
    aics = np.array([a for _, a in fits.values()])
    w = np.exp(-(aics - aics.min()) / 2)
    w /= w.sum()
    vals = np.array([v for v, _ in fits.values()])
    order = np.argsort(vals)
    cum = np.cumsum(w[order])
    lo = float(vals[order][np.searchsorted(cum, (1 - level) / 2)])
    hi = float(vals[order][min(np.searchsorted(cum, (1 + level) / 2), len(vals) - 1)])
    pred = float(np.dot(w, vals))
    return CurveExtrapolation(pred, min(lo, pred), max(hi, pred),
                              {k: (v, float(wi)) for (k, (v, _)), wi in zip(fits.items(), w)})
