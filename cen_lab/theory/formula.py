r"""Theorem 1 of the CEN paper, its statistics, and checks where its assumptions hold by construction.

Theorem 1 (NeurIPS 2020). For a BN scaling factor gamma of a network *without* exchange, trained with
``L + lam * sum|gamma|``, the probability that gamma is attracted to 0 (0 is a local minimum) is

.. math:: P = 2\,\Phi\!\left(\frac{\lambda}{|\partial L/\partial x'|}\right) - 1,

with :math:`\Phi` the standard normal CDF and :math:`x'` the BN output. Derivation: at gamma = 0 the
subgradient condition for a minimum is :math:`|\partial L/\partial\gamma| \le \lambda`; with
:math:`\partial L/\partial\gamma = (\partial L/\partial x')\,\hat x` and :math:`\hat x \sim N(0, 1)` this is
:math:`P(|\hat x| \le \lambda / |\partial L/\partial x'|)`. Some renderings print
:math:`2\Phi(\lambda\,\partial L/\partial x) - 1` without the inverse; ``attraction_probability_inverseless``
computes that variant so that experiments can tell the two apart.

In a real layer :math:`\partial L/\partial\gamma_c = \sum_i (\partial L/\partial x'_{c,i})\,\hat x_{c,i}` over
batch and space; with independent standard normal :math:`\hat x` independent of the upstream gradient this is
:math:`N(0, \lVert\partial L/\partial x'_c\rVert_2^2)`, so the operational prediction is
``attraction_probability(lam, ||dL/dx'_c||_2)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

__all__ = ["attraction_probability", "attraction_probability_inverseless", "proportion_ci", "brier_score",
           "reliability_table", "expected_calibration_error", "controlled_check", "dynamic_check"]


def _as_nonnegative(name: str, x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        bad = torch.isnan(x).any() or (x < 0).any()
    else:
        arr = np.asarray(x, dtype=np.float64)
        bad = np.isnan(arr).any() or (arr < 0).any()
    if bad:
        raise ValueError(f"{name} must be >= 0 (and not NaN)")
    return x


def attraction_probability(lam: Any, grad_norm: Any) -> Any:
    """``2 * Phi(lam / grad_norm) - 1``, the probability that 0 is a local minimum for gamma (Theorem 1).

    Parameters
    ----------
    lam : float, array or tensor
        L1 weight, >= 0.
    grad_norm : float, array or tensor
        ``||dL/dx'||`` (L2 norm over batch and space), >= 0. Broadcasts with ``lam``.

    Returns
    -------
    float, numpy.ndarray or torch.Tensor
        The type of the inputs (a tensor if either is one). ``grad_norm = 0`` gives 1 (then dL/dgamma = 0 and
        ``|0| <= lam`` always holds, also for ``lam = 0``); ``lam = 0`` with ``grad_norm > 0`` gives 0.

    Raises
    ------
    ValueError
        For negative or NaN inputs.
    """
    _as_nonnegative("lam", lam)
    _as_nonnegative("grad_norm", grad_norm)
    if isinstance(lam, torch.Tensor) or isinstance(grad_norm, torch.Tensor):
        ref = lam if isinstance(lam, torch.Tensor) else grad_norm
        lam_t = torch.as_tensor(lam, dtype=torch.float64, device=ref.device)
        g_t = torch.as_tensor(grad_norm, dtype=torch.float64, device=ref.device)
        ratio = torch.where(g_t == 0, torch.full_like(g_t * lam_t, float("inf")), lam_t / g_t)
        out = torch.special.erf(ratio / np.sqrt(2.0))  # 2 Phi(z) - 1 = erf(z / sqrt 2)
        return out.to(ref.dtype) if ref.dtype.is_floating_point else out
    lam_a, g_a = np.asarray(lam, np.float64), np.asarray(grad_norm, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_a == 0, np.inf, lam_a / np.where(g_a == 0, 1.0, g_a))
    out = 2.0 * stats.norm.cdf(ratio) - 1.0
    return float(out) if out.ndim == 0 else out


def attraction_probability_inverseless(lam: Any, grad_norm: Any) -> Any:
    """The variant ``2 * Phi(lam * grad_norm) - 1`` printed in some renderings (for comparison only)."""
    _as_nonnegative("lam", lam)
    _as_nonnegative("grad_norm", grad_norm)
    out = 2.0 * stats.norm.cdf(np.asarray(lam, np.float64) * np.asarray(grad_norm, np.float64)) - 1.0
    return float(out) if np.ndim(out) == 0 else out


def proportion_ci(k: Any, n: Any, level: float = 0.95, method: str = "wilson") -> tuple[np.ndarray, np.ndarray]:
    """Binomial confidence intervals for ``k`` successes in ``n`` trials (scipy; ``"wilson"`` or ``"exact"``,
    i.e. Clopper-Pearson). Vectorised; returns ``(low, high)`` arrays (NaN where ``n = 0``)."""
    k_a, n_a = np.broadcast_arrays(np.asarray(k, np.int64), np.asarray(n, np.int64))
    low, high = np.full(k_a.shape, np.nan), np.full(k_a.shape, np.nan)
    for idx in np.ndindex(k_a.shape):
        if n_a[idx] > 0:
            ci = stats.binomtest(int(k_a[idx]), int(n_a[idx])).proportion_ci(confidence_level=level, method=method)
            low[idx], high[idx] = ci.low, ci.high
    return low, high


def brier_score(predicted: Any, observed: Any) -> float:
    """Mean squared difference between predicted probabilities and 0/1 outcomes."""
    p, y = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need equal, non-empty shapes, got {p.shape} and {y.shape}")
    return float(np.mean((p - y) ** 2))


def reliability_table(predicted: Any, observed: Any, bins: int = 10, level: float = 0.95) -> pd.DataFrame:
    """Predicted probability against observed frequency in equal-width bins of the prediction.

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin: ``bin_low, bin_high, n, mean_predicted, observed, ci_low, ci_high``
        (Wilson interval at ``level``).
    """
    p, y = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"need equal, non-empty shapes, got {p.shape} and {y.shape}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        if n == 0:
            continue
        k = int(y[sel].sum())
        low, high = proportion_ci(k, n, level)
        rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n": n, "mean_predicted": float(p[sel].mean()),
                     "observed": k / n, "ci_low": float(low), "ci_high": float(high)})
    return pd.DataFrame(rows)


def expected_calibration_error(predicted: Any, observed: Any, bins: int = 10) -> float:
    """ECE: the bin-size weighted mean of ``|mean predicted - observed frequency|`` over equal-width bins."""
    table = reliability_table(predicted, observed, bins)
    return float((table["n"] * (table["mean_predicted"] - table["observed"]).abs()).sum() / table["n"].sum())


def controlled_check(ratios: Sequence[float], grad_norms: Sequence[float] = (0.05, 20.0), trials: int = 4000,
                     positions: int = 256, mode: str = "gaussian", level: float = 0.99, seed: int = 0) -> pd.DataFrame:
    """Monte Carlo of "0 is a local minimum" for BN channels at gamma = 0 with a known upstream gradient.

    For each ``grad_norm`` G and ratio r, ``lam = r * G``; a fixed upstream gradient ``u`` (``positions`` values,
    zero mean, ``||u|| = G``) meets ``x_hat`` and the event is ``|sum_i u_i x_hat_i| <= lam``.

    Parameters
    ----------
    mode : {"gaussian", "batchnorm"}
        ``"gaussian"``: ``x_hat`` drawn i.i.d. N(0, 1), the theorem's assumption exactly. ``"batchnorm"``:
        ``x_hat`` is what a real ``torch.nn.BatchNorm1d`` makes of skewed (exponential) inputs, and the gradient
        comes from autograd through it with gamma = 0.

    Returns
    -------
    pandas.DataFrame
        One row per (grad_norm, ratio): ``grad_norm, ratio, lam, n, attracted, frequency, ci_low, ci_high``
        (Clopper-Pearson at ``level``), ``predicted`` (the formula), ``predicted_inverseless``, ``within_ci``,
        ``inverseless_within_ci``, ``abs_error``.
    """
    if mode not in ("gaussian", "batchnorm"):
        raise ValueError(f"mode must be 'gaussian' or 'batchnorm', got {mode!r}")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for g_norm in grad_norms:
        u = torch.randn(positions, generator=gen, dtype=torch.float64)
        u = u - u.mean()  # BN's backward removes the mean of dL/dx'; a centred u keeps the assumption exact
        u = u * (g_norm / u.norm())
        if mode == "gaussian":
            x_hat = torch.randn(trials, positions, generator=gen, dtype=torch.float64)  # [trials, positions]
            dgamma = x_hat @ u
        else:
            bn = torch.nn.BatchNorm1d(trials, dtype=torch.float64)
            with torch.no_grad():
                bn.weight.zero_()
            x = torch.empty(positions, trials, dtype=torch.float64).exponential_(generator=gen)  # [positions, channels]
            (bn(x) * u[:, None]).sum().backward()  # dL/dx' = u for every channel
            dgamma = bn.weight.grad
        for r in ratios:
            lam = r * g_norm
            k = int((dgamma.abs() <= lam).sum())
            rows.append({"grad_norm": g_norm, "ratio": r, "lam": lam, "n": trials, "attracted": k})
    df = pd.DataFrame(rows)
    df["frequency"] = df["attracted"] / df["n"]
    df["ci_low"], df["ci_high"] = proportion_ci(df["attracted"], df["n"], level, method="exact")
    df["predicted"] = attraction_probability(df["lam"].to_numpy(), df["grad_norm"].to_numpy())
    df["predicted_inverseless"] = attraction_probability_inverseless(df["lam"].to_numpy(), df["grad_norm"].to_numpy())
    df["within_ci"] = (df["predicted"] >= df["ci_low"]) & (df["predicted"] <= df["ci_high"])
    df["inverseless_within_ci"] = (df["predicted_inverseless"] >= df["ci_low"]) & (df["predicted_inverseless"] <= df["ci_high"])
    df["abs_error"] = (df["frequency"] - df["predicted"]).abs()
    return df


def dynamic_check(ratios: Sequence[float], rules: Sequence[str] = ("proximal", "subgradient"), runs: int = 2000,
                  steps: int = 200, lr: float = 0.1, start_scale: float = 0.05, tol: float | None = None,
                  level: float = 0.99, seed: int = 0) -> pd.DataFrame:
    """Run the optimiser on gamma and count how often it ends at zero (a different quantity from Theorem 1).

    Each run starts at ``gamma_0 ~ U(-start_scale, start_scale)`` and takes ``steps`` updates with a fresh data
    gradient ``g_t = x_hat_t . u ~ N(0, 1)`` (``||u|| = 1``, so ``lam = ratio``) per step: the subgradient rule
    ``gamma -= lr * (g_t + lam * sign(gamma))`` or the proximal rule ``gamma = soft(gamma - lr * g_t, lr * lam)``.
    Theorem 1 is the one-step probability of staying at zero; the fraction of runs *found* at zero after many
    steps is the stationary probability of a random walk, which is smaller.

    Returns
    -------
    pandas.DataFrame
        ``rule, ratio, n, at_zero, frequency, ci_low, ci_high, predicted_static, tol``: ``at_zero`` counts runs
        ending exactly at 0 (proximal) or within ``tol`` (subgradient; default ``lr * (lam + 1)``, one step).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for rule in rules:
        if rule not in ("proximal", "subgradient"):
            raise ValueError(f"rule must be 'proximal' or 'subgradient', got {rule!r}")
        for r in ratios:
            lam = float(r)
            gamma = rng.uniform(-start_scale, start_scale, size=runs)
            for _ in range(steps):
                g = rng.standard_normal(runs)
                if rule == "subgradient":
                    gamma = gamma - lr * (g + lam * np.sign(gamma))
                else:
                    z = gamma - lr * g
                    gamma = np.sign(z) * np.maximum(np.abs(z) - lr * lam, 0.0)
            t = 0.0 if rule == "proximal" else (tol if tol is not None else lr * (lam + 1.0))
            k = int((np.abs(gamma) <= t).sum())
            rows.append({"rule": rule, "ratio": lam, "n": runs, "at_zero": k, "tol": t})
    df = pd.DataFrame(rows)
    df["frequency"] = df["at_zero"] / df["n"]
    df["ci_low"], df["ci_high"] = proportion_ci(df["at_zero"], df["n"], level, method="exact")
    df["predicted_static"] = attraction_probability(df["ratio"].to_numpy(), 1.0)
    return df[["rule", "ratio", "n", "at_zero", "frequency", "ci_low", "ci_high", "predicted_static", "tol"]]
