"""The probe's side of ``cen_lab.theory.lambda_choice``: per-channel speeds in learning-rate time, the per-layer
deceleration and the data gradient's noise, measured from a probe run (steps 1 and 2 of the model described
there)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..experiments.diagnosis import _steps_matrix
from ..experiments.training import lr_rates
from ..runs.forecast_model import rates_of
from ..runs.reader import Run, load_run

__all__ = ["MODELLED", "MIN_LOGS", "STRIDE", "ProbeFit", "fit_probe"]

MODELLED = ("sgd", "adam")  # optimisers the model knows (subgradient L1)
MIN_LOGS = 8  # logged steps the probe's window needs (so STRIDE-step speeds exist for every channel)
STRIDE = 4  # logged steps a local speed spans


@dataclass
class ProbeFit:
    """The per-channel quantities of a probe (see the module docstring).

    ``channels``: layer, branch, channel, gamma0, D (starting speed in ``u``), D_se, s (sd of dL/dgamma), dx
    (mean ||dL/dx'||), layer_index; ``h``: per layer; ``lrs``: the rate of every step of the budget.
    """

    run: str
    lam: float
    optimizer: str
    momentum: float
    threshold: float
    probe_steps: int
    lrs: np.ndarray
    channels: pd.DataFrame
    h: pd.Series
    sxy: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # per-channel within sums, for h
    sxx: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    describe: str = ""  # the probe's training in words: architecture, optimiser, schedule (its config's, or given)

    @property
    def budget(self) -> int:
        return len(self.lrs)


def _lr_schedule(run: Run, budget: int | None, optimizer: str | None, lr, momentum: float | None
                 ) -> tuple[str, float, np.ndarray]:
    cfg = run.config
    if cfg is not None:
        optimizer = optimizer or cfg.train.optimizer
        momentum = cfg.train.momentum if momentum is None else momentum
        budget = cfg.train.steps if budget is None else budget
        if lr is None:  # the schedule over the budget (the probe's own when the budget is its train.steps)
            lr = lr_rates(cfg.override({"train.steps": budget}).train)
        if cfg.train.l1_rule != "subgradient":
            raise ValueError(f"{run.path}: the probe uses the {cfg.train.l1_rule!r} L1 rule; the model knows the "
                             "subgradient rule only (the reference code's)")
    missing = [n for n, v in (("optimizer", optimizer), ("lr", lr), ("budget", budget)) if v is None]
    if missing:
        raise ValueError(f"{run.path}: a {run.source} run records no optimiser; give {', '.join(missing)} "
                         "(e.g. optimizer='sgd', lr=0.01 or a function step -> lr, momentum=0.9, budget=10000)")
    if optimizer not in MODELLED:
        raise ValueError(f"optimizer {optimizer!r} is not modelled; the model knows {', '.join(MODELLED)} "
                         "(subgradient L1)")
    momentum = 0.0 if optimizer == "adam" or momentum is None else float(momentum)
    return optimizer, momentum, rates_of(lr, budget)


def fit_probe(probe: Run | str | Path, budget: int | None = None, *, optimizer: str | None = None,
              lr: float | Sequence[float] | Callable[[int], float] | None = None, momentum: float | None = None,
              lam: float | None = None, threshold: float | None = None, window: float = 1 / 3) -> ProbeFit:
    """Measure a probe's per-channel speeds, decelerations and gradient noise (steps 1 and 2 of the model).

    ``optimizer``, ``lr`` (one rate, the rate of every step of the budget, or a function step -> rate) and
    ``momentum`` come from a trained run's config; give them for an observed or imported run. ``lam`` (the
    weight per step) and ``threshold`` default to what the run records. ``window``: the probe's window starts at
    this fraction of its logged steps.
    """
    run = probe if isinstance(probe, Run) else load_run(probe)
    lam = run.lam_per_step if lam is None else lam
    thr = run.manifest.get("threshold") if threshold is None else threshold
    if lam is None or thr is None:
        raise ValueError(f"{run.path}: the probe records no {'lam' if lam is None else 'threshold'}; give it")
    if run.gammas.empty or not run.gammas["penalised"].any():
        raise ValueError(f"{run.path}: the probe has no penalised gammas; nothing is attracted to 0")
    steps, rows, g = _steps_matrix(run.gammas)
    probe_steps = int(run.manifest.get("last_step") or steps[-1])
    if budget is not None and budget < probe_steps:
        raise ValueError(f"the budget ({budget} steps) is shorter than the probe ({probe_steps} steps)")
    optimizer, momentum, lrs = _lr_schedule(run, budget, optimizer, lr, momentum)
    if len(lrs) < probe_steps:
        raise ValueError(f"the budget ({len(lrs)} steps) is shorter than the probe ({probe_steps} steps)")
    in_window = steps >= steps[0] + window * (steps[-1] - steps[0])
    if in_window.sum() < MIN_LOGS:
        need = int(np.ceil(MIN_LOGS / (1 - window)))
        raise ValueError(f"{run.path}: the probe's window has {int(in_window.sum())} logged steps; the model needs "
                         f"{MIN_LOGS} (a probe of at least {need} logged steps: log more often or probe longer)")
    if optimizer == "adam" and run.grads.empty:
        raise ValueError(f"{run.path}: under Adam the model needs the data gradient's noise: log gradients in the "
                         "probe (log.grads=True, or observe's grads)")
    u = np.concatenate([[0.0], np.cumsum(lrs)])
    pen = rows["penalised"].to_numpy()
    a = np.abs(g[:, pen].astype(np.float64))  # [S, C]
    ch = rows[pen].reset_index(drop=True)
    us = u[steps]
    alive = a >= thr
    w = in_window[:, None] & alive
    # a channel that crossed before the window: every logged step before its crossing
    few = w.sum(0) < STRIDE + 1
    w[:, few] = alive[:, few]
    # local speeds over STRIDE logged steps, both ends in the window
    both = w[STRIDE:] & w[:-STRIDE]
    du = (us[STRIDE:] - us[:-STRIDE])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        vloc = np.where(both & (du > 0), -(a[STRIDE:] - a[:-STRIDE]) / du, np.nan)
    disp = a[0][None, :] - (a[STRIDE:] + a[:-STRIDE]) / 2
    disp = np.where(np.isnan(vloc), np.nan, disp)
    n = np.sum(~np.isnan(vloc), 0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: channels crossed at once
        vbar, dbar = np.nanmean(vloc, 0), np.nanmean(disp, 0)
        sxy = np.nansum((vloc - vbar) * (disp - dbar), 0)
        sxx = np.nansum((disp - dbar) ** 2, 0)
        v_sd = np.nanstd(vloc, 0, ddof=1)
    crossed_at_once = n == 0  # under the threshold by its second logged step: as fast as the model allows
    vbar = np.where(crossed_at_once, np.inf, vbar)
    dbar = np.where(crossed_at_once, 0.0, dbar)
    layer_idx = pd.factorize(ch["layer"])[0]
    h = _pooled_h(sxy, sxx, layer_idx)
    D = vbar + h[layer_idx] * dbar
    D_se = np.where(n > 1, np.nan_to_num(v_sd) / np.sqrt(np.maximum(n / STRIDE, 1)), 0.0)
    s = np.zeros(len(ch))
    dx = np.full(len(ch), np.nan)
    if not run.grads.empty:
        keys = ["layer", "branch", "channel"]
        gr = run.grads[run.grads["step"].isin(steps[in_window])]
        agg = gr.groupby(keys).agg(s=("dgamma", "std"), dx=("dxprime_norm", "mean"))
        idx = pd.MultiIndex.from_frame(ch[keys])
        s = np.nan_to_num(agg["s"].reindex(idx).to_numpy(float))
        dx = agg["dx"].reindex(idx).to_numpy(float)
    channels = ch[["layer", "branch", "channel"]].assign(gamma0=a[0], D=D, D_se=D_se, s=s, dx=dx,
                                                           layer_index=layer_idx)
    if run.config is not None:
        from ..experiments.regime import SMOKE_TEST, architecture, is_smoke_test, optimiser

        describe = f"{architecture(run.config)}; {optimiser(run.config)}"
        if is_smoke_test(run.config):
            describe += f" (evidence: {SMOKE_TEST})"
    else:
        describe = (f"{run.source} {run.manifest.get('model_class', 'model')}; {optimizer} (given)"
                    + (f" momentum {momentum:g}" if optimizer == "sgd" else ""))
    return ProbeFit(run.path.name, float(lam), optimizer, momentum, float(thr), probe_steps, lrs, channels,
                    pd.Series(h, index=pd.unique(ch["layer"])), sxy, sxx, describe)


def _pooled_h(sxy: np.ndarray, sxx: np.ndarray, layer_idx: np.ndarray) -> np.ndarray:
    """Per layer, ``-sum(Sxy) / sum(Sxx)`` over its channels (speed against displacement within channels),
    clipped at 0 (a channel is never modelled as accelerating away from its start)."""
    k = layer_idx.max() + 1
    num = np.bincount(layer_idx, weights=sxy, minlength=k)
    den = np.bincount(layer_idx, weights=sxx, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.where(den > 0, -num / den, 0.0), 0.0, None)
