"""Theorem 1 and Corollary 1 checked on trained networks (see ``cen_lab.theory`` for the statement).

- ``theorem_config`` (from ``cen_lab.theory.networks``): the compact no-exchange network the checks train
  (proximal L1 by default, so that "attracted to zero" is an exact zero).
- ``local_check``: at checkpoints, for every penalised channel and many minibatches, set that channel's gamma
  to 0 and measure the data-loss gradient ``g_c`` and ``||dL/dx'_c||``; the theorem predicts
  ``P(|g_c| <= lam) = attraction_probability(lam, ||dL/dx'_c||)``.
- ``calibration_summary``: Brier score, expected calibration error, Spearman correlation (with channel
  bootstrap intervals), reliability table, and the Gaussianity of ``g_c / ||dL/dx'_c||``.
- ``outcome_table``: which channels end training at zero, against the prediction from an early checkpoint.
- ``corollary_check`` (from ``cen_lab.theory.corollary``): train without exchange, then fine-tune with and without
  exchange from the same weights; compare the training losses per seed.
- ``verdict_table``, ``theorem_regimes``, ``theorem_summary`` (from ``cen_lab.theory.verdicts``): one verdict per
  claim with the regime it holds in, and the notebook's summary.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .._util.progress import progress_bar
from ..data import load_data
from ..experiments.training import data_losses
from ..network.hooks import record_bn_output_grad_norms  # noqa: F401  (importable from here, as before)
from ..runs.observer import BNLayer, penalised_masks, resolve_layers  # noqa: F401
from ..runs.reader import Run, load_run
from .corollary import corollary_check, corollary_summary, training_loss  # noqa: F401  (part of this API)
from .foreign import exchange_is_off, local_check_model, set_attribute  # noqa: F401  (part of this API)
from .formula import (attraction_probability, brier_score, expected_calibration_error,  # noqa: F401
                      proportion_ci, reliability_table)
from .networks import theorem_base, theorem_config, train_theorem_runs  # noqa: F401  (part of this API)
from .verdicts import (CONTROLLED_REGIME, theorem_regimes, theorem_summary,  # noqa: F401
                       verdict_display, verdict_table)
from .zeroing import _local_frame, _zeroed_gradients, minibatch_indices  # noqa: F401

log = logging.getLogger(__name__)

__all__ = ["theorem_base", "theorem_config", "train_theorem_runs", "local_check", "local_check_model",
           "minibatch_indices", "calibration_summary", "outcome_table", "theorem_regimes", "verdict_table",
           "training_loss", "corollary_check", "corollary_summary", "local_check_runs", "theorem_summary",
           "calibration_frame", "verdict_display"]


def _cen_loss(model, batch) -> torch.Tensor:
    xb, yb = batch
    out = model(xb)
    branch, ens = data_losses(out.logits, out.ensemble, yb)
    return branch.sum() + ens


def local_check(run: Run, steps: Sequence[int] | None = None, n_batches: int = 16, seed: int = 0,
                progress: bool = False, exchange_off: bool = False) -> pd.DataFrame:
    """Evaluate Theorem 1's local condition at gamma = 0 for every penalised channel of ``run``.

    For each checkpoint step and each of ``n_batches`` training minibatches (drawn once with ``seed``), each
    penalised channel's gamma is set to 0 (others unchanged, BN in training mode as during training), and one
    forward/backward pass of the data loss gives ``g = dL/dgamma_c`` and ``norm = ||dL/dx'_c||_2``. Without
    exchange the modality branches do not interact, so one channel per modality is zeroed in the same pass.

    ``exchange_off=True`` checks the run's weights with the exchange switched off (``Run.load_model(step,
    exchange="none")``), the setting the theorem is stated for: in a network that exchanges, a channel at
    gamma = 0 is replaced by the other branches' and gets no gradient (``g = 0``, ``norm = 0``).

    Returns
    -------
    pandas.DataFrame
        ``run, lam, step, layer, modality, channel, batch, gamma`` (its trained value), ``g, norm, z`` (g / norm),
        ``predicted`` (``attraction_probability(lam, norm)``), ``attracted`` (``|g| <= lam``).
    """
    cfg = run.config
    lam = run.lam_per_step  # the per-step weight: with train.l1_per_output, lam times the outputs
    steps = list(run.checkpoint_steps if steps is None else steps)
    ds = load_data(cfg.data)
    x_np, y_np = ds.stacked(0)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    batches = [(x[:, idx], y[idx]) for idx in minibatch_indices(x.shape[1], cfg.train.batch_size, n_batches, seed)]
    rows: list[tuple] = []
    bar = progress_bar(total=len(steps) * n_batches, desc=f"local check {run.path.name}", disable=not progress, leave=False)
    for step in steps:
        model = run.load_model(step, exchange="none" if exchange_off else None)
        model.train()
        layers = [BNLayer(name, (bn,)) for name, bn in model.cen_layers()]
        penalised = [(li, int(m), int(c)) for li, (_, bn) in enumerate(model.cen_layers())
                     for m, c in torch.nonzero(bn.penalty_mask).tolist()]
        if cfg.model.exchange == "none" or exchange_off:
            by_mod: dict[int, list] = {}
            for item in penalised:
                by_mod.setdefault(item[1], []).append(item)
            groups = [list(g) for g in zip(*by_mod.values())]
            leftovers = set(penalised) - {i for g in groups for i in g}
            groups += [[i] for i in sorted(leftovers)]
        else:
            groups = [[item] for item in penalised]
        rows += [(step, *r) for r in _zeroed_gradients(model, layers, groups, batches, _cen_loss, bar)]
    bar.close()
    return _local_frame(rows, run.path.name, lam)


def _local_check_path(path: str, n_batches: int, seed: int) -> pd.DataFrame:
    """``local_check`` of the run at ``path`` on one torch thread (a worker of ``local_check_runs``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return local_check(load_run(path), None, n_batches, seed)
    finally:
        torch.set_num_threads(previous)


def local_check_runs(runs: Mapping[tuple[float, int], Run], n_batches: int = 16, seed: int = 0,
                     progress: bool = True, n_jobs: int = 1) -> pd.DataFrame:
    """``local_check`` of every run at every checkpoint, concatenated in the order of ``runs`` (with a progress
    bar over runs).

    ``n_jobs > 1`` checks runs in that many joblib (loky) worker processes of one torch thread each, as
    ``cen_lab.sweep`` trains: on 2 cores two single-thread workers checked 4 theorem runs 1.4x faster than one
    two-thread process, with identical numbers (``benchmarks``-style side-by-side timing, 2026-12-04).
    """
    items = list(runs.values())
    bar = progress_bar(total=len(items), desc="local check", disable=not progress)
    if n_jobs > 1 and len(items) > 1:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")(
            delayed(_local_check_path)(str(run.path), n_batches, seed) for run in items)
    else:
        results = (local_check(run, None, n_batches, seed) for run in items)
    frames = []
    for frame in results:
        frames.append(frame)
        bar.update(1)
    bar.close()
    return pd.concat(frames, ignore_index=True)


def _channel_key(df: pd.DataFrame) -> pd.Series:
    return df["run"].astype(str) + "|" + df["step"].astype(str) + "|" + df["layer"] + "|" + df["modality"].astype(str) \
        + "|" + df["channel"].astype(str)


def calibration_summary(local: pd.DataFrame, bins: int = 10, n_boot: int = 300, level: float = 0.95,
                        seed: int = 0) -> dict:
    """How well ``predicted`` matches ``attracted`` in a ``local_check`` frame.

    Returns
    -------
    dict
        ``brier``, ``ece``, ``spearman`` (per channel: mean prediction against observed fraction over
        minibatches), each with ``<name>_ci`` from a bootstrap over channels; ``reliability`` (a DataFrame with
        Wilson intervals per bin); ``normality`` (D'Agostino-Pearson test of ``z``, its mean and std, and the
        number of values); ``no_gradient`` (the portion of channels with ``||dL/dx'|| = 0`` in every minibatch,
        where the prediction is 1 and the channel attracted by construction, with its Wilson interval).
    """
    p, y = local["predicted"].to_numpy(), local["attracted"].to_numpy().astype(float)
    key = _channel_key(local).to_numpy()
    codes, inverse = np.unique(key, return_inverse=True)
    per_p = np.bincount(inverse, weights=p) / np.bincount(inverse)
    per_y = np.bincount(inverse, weights=y) / np.bincount(inverse)

    def spearman(pp: np.ndarray, yy: np.ndarray) -> float:
        return float(stats.spearmanr(pp, yy).statistic) if np.ptp(pp) > 0 and np.ptp(yy) > 0 else float("nan")

    rng = np.random.default_rng(seed)
    boot = {"brier": [], "ece": [], "spearman": []}
    members = [np.flatnonzero(inverse == i) for i in range(len(codes))]
    for _ in range(n_boot):
        pick = rng.integers(0, len(codes), len(codes))
        rows = np.concatenate([members[i] for i in pick])
        boot["brier"].append(brier_score(p[rows], y[rows]))
        boot["ece"].append(expected_calibration_error(p[rows], y[rows], bins))
        boot["spearman"].append(spearman(per_p[pick], per_y[pick]))
    alpha = (1 - level) / 2
    out = {"brier": brier_score(p, y), "ece": expected_calibration_error(p, y, bins), "spearman": spearman(per_p, per_y),
           "n_rows": int(len(p)), "n_channels": int(len(codes))}
    for name, values in boot.items():
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        out[f"{name}_ci"] = [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if len(v) else [np.nan, np.nan]
    z = local["z"].to_numpy()
    z = z[np.isfinite(z)]
    test = stats.normaltest(z) if len(z) >= 20 else None
    out["normality"] = {"n": int(len(z)), "mean": float(np.mean(z)), "std": float(np.std(z)),
                        "statistic": float(test.statistic) if test else float("nan"),
                        "pvalue": float(test.pvalue) if test else float("nan")}
    # channels with no gradient at gamma = 0 in any minibatch: the check is vacuous there (per channel, since the
    # rows of one channel are not independent)
    dead = int((np.bincount(inverse, weights=(local["norm"].to_numpy() == 0)) == np.bincount(inverse)).sum())
    low, high = proportion_ci(dead, len(codes), level)
    out["no_gradient"] = {"fraction": dead / len(codes) if len(codes) else float("nan"), "ci": [float(low), float(high)]}
    out["reliability"] = reliability_table(p, y, bins, level)
    return out


def calibration_frame(calibration: dict) -> pd.DataFrame:
    """The scalar results of ``calibration_summary`` as a table: ``measure, value, ci_low, ci_high``."""
    rows = [{"measure": name, "value": calibration[name], "ci_low": calibration[f"{name}_ci"][0],
             "ci_high": calibration[f"{name}_ci"][1]} for name in ("brier", "ece", "spearman")]
    nrm = calibration["normality"]
    rows += [{"measure": "mean of g/||dL/dx'|| (N(0,1): 0)", "value": nrm["mean"], "ci_low": np.nan, "ci_high": np.nan},
             {"measure": "std of g/||dL/dx'|| (N(0,1): 1)", "value": nrm["std"], "ci_low": np.nan, "ci_high": np.nan},
             {"measure": "normality test p-value", "value": nrm["pvalue"], "ci_low": np.nan, "ci_high": np.nan}]
    if "no_gradient" in calibration:
        dead = calibration["no_gradient"]
        rows.append({"measure": "vacuous channels: ||dL/dx'|| = 0 at gamma = 0",
                     "value": dead["fraction"], "ci_low": dead["ci"][0], "ci_high": dead["ci"][1]})
    return pd.DataFrame(rows)


def outcome_table(runs: Mapping[tuple[float, int], Run], local: pd.DataFrame, early_step: int | None = None,
                  zero_tol: float | None = None, level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Which penalised channels end training at zero, against the prediction at an early checkpoint.

    Parameters
    ----------
    runs : mapping (lam, seed) -> Run
    local : pandas.DataFrame
        ``local_check`` rows of those runs (must include ``early_step``).
    early_step : int, optional
        Checkpoint whose mean predicted probability per channel is the prediction (default: each run's first).
    zero_tol : float, optional
        |gamma| at or below this counts as zero; default 0 for the proximal rule (exact zeros) and
        ``lr * lam / (1 - momentum)`` (the size of one subgradient step, with the run's per-step lam) for the
        subgradient rule.

    Returns
    -------
    (per_lam, per_channel) : pandas.DataFrame
        ``per_lam``: ``lam, n_seeds, n_channels, predicted, observed, ci_low, ci_high`` (Wilson), ``seed_spread``
        (std of the per-seed observed fraction), ``zero_tol``, ``early_step``. ``per_channel``: one row per
        channel with its ``predicted`` and ``zero``.
    """
    channel_rows = []
    for (lam, seed), run in runs.items():
        cfg = run.config
        tol = zero_tol if zero_tol is not None else (
            0.0 if cfg.train.l1_rule == "proximal" else cfg.train.lr * run.lam_per_step / (1 - cfg.train.momentum))
        sub = local[local["run"] == run.path.name]
        step = early_step if early_step is not None else int(sub["step"].min())
        pred = sub[sub["step"] == step].groupby(["layer", "modality", "channel"])["predicted"].mean()
        final = run.gammas[(run.gammas["step"] == run.gammas["step"].max()) & run.gammas["penalised"]]
        final = final.set_index(["layer", "modality", "channel"])["gamma"]
        joined = pd.DataFrame({"predicted": pred, "final_gamma": final}).dropna()
        joined["zero"] = joined["final_gamma"].abs() <= tol
        joined = joined.reset_index().assign(lam=lam, seed=seed, zero_tol=tol, early_step=step)
        channel_rows.append(joined)
    per_channel = pd.concat(channel_rows, ignore_index=True)
    rows = []
    for lam, sub in per_channel.groupby("lam", sort=True):
        k, n = int(sub["zero"].sum()), len(sub)
        low, high = proportion_ci(k, n, level)
        per_seed = sub.groupby("seed")["zero"].mean()
        rows.append({"lam": lam, "n_seeds": int(sub["seed"].nunique()), "n_channels": n,
                     "predicted": float(sub["predicted"].mean()), "observed": k / n, "ci_low": float(low),
                     "ci_high": float(high), "seed_spread": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
                     "zero_tol": float(sub["zero_tol"].max()), "early_step": int(sub["early_step"].min())})
    return pd.DataFrame(rows), per_channel
