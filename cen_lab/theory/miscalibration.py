"""Why Theorem 1's prediction is miscalibrated in trained networks, measured; a check of the Gaussian form and a
corrected prediction.

At gamma = 0, ``g = dL/dgamma = sum_i (dL/dx'_i) x_hat_i`` over the n = batch x H x W positions of a channel. With
``x_hat`` independent of ``dL/dx'`` (the theorem's assumption), ``g ~ N(0, ||dL/dx'||^2)`` and the correlation
``corr(dL/dx', x_hat) = g / (||dL/dx'|| ||x_hat||) = z / sqrt(n)`` (BN makes ``||x_hat|| = sqrt(n)``) has the scale
``1/sqrt(n)``. ``channel_statistics`` reports, per checked channel, that correlation against its scale (which
is ``z``, averaged over minibatches) and the mean and spread of ``g`` over minibatches: a drift (mean far from 0)
is a different failure from a spread (std far from ``||dL/dx'||``).

Two corrected models, each scored on data it was not fitted on (``compare_predictions``), of which only (b) is a
prediction:

(a) ``gaussian``: ``P(|g| <= lam)`` with ``g ~ N(mu_g, sigma_g^2)`` per channel, ``mu_g`` and ``sigma_g`` estimated
    on the first half of a checkpoint's minibatches and tested on the other half. With ``mu_g = 0`` and
    ``sigma_g = ||dL/dx'||`` it is the theorem's formula (``gaussian_attraction``). **A check, not a prediction**:
    it is fitted to the outcome's own quantity ``g`` of the same channel at the same checkpoint and scored on more
    minibatches of it, so it tests that ``g`` is Gaussian around a drift; it cannot predict anything ``g`` was
    not measured for.
(b) ``training``: no gradient at gamma = 0. A logistic model of "attracted" on what a user logs during training
    (``log.grads``): ``log(lam / ||dL/dx'||)`` and ``dL/dgamma / ||dL/dx'||`` at the trained gamma, and
    ``log|gamma|``, fitted on the other seeds and tested on each held-out seed (leave one seed out), on the same
    held-out minibatches.

The ECE of the formula, (a) and (b) on the same test rows, with bootstrap intervals over channels, and the share of
the formula's ECE each removes, come from ``calibration_summary``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import optimize, stats

from ..runs.reader import Run
from .formula import attraction_probability
from .local_checks import calibration_summary

# the names of the two corrected models in every table and figure: (a) re-measures the outcome's own quantity
CHECK_A = "(a) check, not a prediction: Gaussian g, same channel"
PREDICTION_B = "(b) training-time features, other seeds"

__all__ = ["CHECK_A", "PREDICTION_B", "gaussian_attraction", "layer_sizes", "channel_statistics", "training_features",
           "fit_logistic", "leave_one_seed_out", "z_ratio", "log_features", "MiscalibrationResult",
           "compare_predictions"]

_CHANNEL = ["run", "step", "layer", "modality", "channel"]
FEATURES = ("log_lam_over_norm", "z_trained", "log_abs_gamma")


def gaussian_attraction(lam: float, mu: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
    """``P(|g| <= lam)`` for ``g ~ N(mu, sigma^2)``; 1 where ``sigma = 0`` and ``|mu| <= lam``, else 0 there.
    With ``mu = 0`` and ``sigma = ||dL/dx'||`` this is Theorem 1's ``2 * Phi(lam / ||dL/dx'||) - 1``."""
    mu, sigma = np.broadcast_arrays(np.asarray(mu, float), np.asarray(sigma, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.norm.cdf((lam - mu) / sigma) - stats.norm.cdf((-lam - mu) / sigma)
    return np.where(sigma > 0, p, (np.abs(mu) <= lam).astype(float))


def layer_sizes(run: Run, step: int | None = None) -> dict[str, int]:
    """n = batch x H x W of each penalised BN layer of a cen_lab run, from one forward pass of a training
    minibatch (``train.batch_size``) through its model."""
    from ..data import load_data

    model = run.load_model(step).train()
    cfg = run.config
    x, _ = load_data(cfg.data).stacked(0)
    xb = torch.from_numpy(x[:, :cfg.train.batch_size])
    sizes: dict[str, int] = {}
    handles = []
    for name, bn in model.cen_layers():
        def hook(module, inputs, output, name=name):
            first = output[0] if isinstance(output, (list, tuple)) else output[0]  # one branch [N, C, H, W]
            sizes[name] = int(first.shape[0] * first[0, 0].numel())
        handles.append(bn.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.forward_tasks(xb)
    finally:
        for h in handles:
            h.remove()
    return sizes


def channel_statistics(local: pd.DataFrame, sizes: Mapping[str, int]) -> pd.DataFrame:
    """Per checked channel (``run, step, layer, modality, channel``): ``n``, ``corr_mean`` (mean over minibatches of
    corr(dL/dx', x_hat) = z / sqrt(n)), ``corr_scale`` (1 / sqrt(n)), ``corr_over_scale`` (their ratio: mean z,
    0 under independence), ``g_mean``, ``g_std`` (over minibatches), ``norm_mean`` (mean ``||dL/dx'||``, what
    ``g_std`` would be under independence), ``gamma`` (trained) and ``n_batches``. Channels with no gradient at
    gamma = 0 (``norm = 0``) are left out."""
    live = local[local["norm"] > 0]
    grouped = live.groupby(_CHANNEL, sort=False)
    out = grouped.agg(g_mean=("g", "mean"), g_std=("g", "std"), norm_mean=("norm", "mean"), z_mean=("z", "mean"),
                      gamma=("gamma", "first"), n_batches=("g", "size")).reset_index()
    out["n"] = out["layer"].map(sizes).astype(float)
    out["corr_scale"] = 1.0 / np.sqrt(out["n"])
    out["corr_mean"] = out["z_mean"] * out["corr_scale"]
    out["corr_over_scale"] = out["z_mean"]
    return out.drop(columns="z_mean")


def z_ratio(dgamma: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """``dL/dgamma / ||dL/dx'||`` as the (b) model reads it: 0 where the norm is 0 (no gradient reached the channel)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, dgamma / norm, 0.0)


def log_features(lam: float | np.ndarray, norm: np.ndarray, gamma: np.ndarray) -> dict[str, np.ndarray]:
    """The (b) model's two log features: ``log_lam_over_norm`` (``log(lam / ||dL/dx'||)``, the norm floored at
    1e-12) and ``log_abs_gamma`` (``log(|gamma| + 1e-4)``); the third, ``z_trained``, is ``z_ratio``'s."""
    with np.errstate(divide="ignore", invalid="ignore"):  # lam = 0 gives -inf, as the model has always read it
        return {"log_lam_over_norm": np.log(lam / np.maximum(norm, 1e-12)),
                "log_abs_gamma": np.log(np.abs(gamma) + 1e-4)}


def training_features(runs: Mapping[tuple[float, int], Run], local: pd.DataFrame) -> pd.DataFrame:
    """``local`` with the training-time features of each row's channel at its checkpoint (from the run's
    ``grads`` table at the latest logged step not after it): ``log_lam_over_norm``, ``z_trained``
    (dgamma / dxprime_norm at the trained gamma), ``log_abs_gamma``, and ``seed``."""
    frames = []
    for (lam, seed), run in runs.items():
        rows = local[local["run"] == run.path.name]
        if rows.empty:
            continue
        grads = run.grads
        if grads.empty:
            raise ValueError(f"{run.path.name} logged no gradients (log.grads); prediction (b) needs them")
        parts = []
        for step in sorted(rows["step"].unique()):
            logged = grads["step"][grads["step"] <= step]
            at = int(logged.max()) if len(logged) else int(grads["step"].min())
            g = grads[grads["step"] == at][["layer", "branch", "channel", "dgamma", "dxprime_norm"]]
            parts.append(g.rename(columns={"branch": "modality"}).assign(step=step))
        feats = pd.concat(parts, ignore_index=True)
        merged = rows.merge(feats, on=["step", "layer", "modality", "channel"], how="left")
        norm = merged["dxprime_norm"].to_numpy(float)
        logs = log_features(lam, norm, merged["gamma"].to_numpy(float))
        merged["log_lam_over_norm"] = logs["log_lam_over_norm"]
        merged["z_trained"] = z_ratio(merged["dgamma"].to_numpy(float), norm)
        merged["log_abs_gamma"] = logs["log_abs_gamma"]
        frames.append(merged.drop(columns=["dgamma", "dxprime_norm"]).assign(seed=seed))
    return pd.concat(frames, ignore_index=True)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Weights ``w`` (intercept first) of a logistic regression of ``y`` (0/1) on the columns of ``x``, by
    minimising the mean log-loss plus ``l2 * |w|^2`` (L-BFGS). Features are used as given; standardise them first."""
    design = np.column_stack([np.ones(len(x)), x])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = design @ w
        p = 1.0 / (1.0 + np.exp(-s))
        value = np.mean(np.logaddexp(0.0, s) - y * s) + l2 * w @ w
        grad = design.T @ (p - y) / len(y) + 2 * l2 * w
        return float(value), grad

    return optimize.minimize(loss, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x


def _logistic_predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(w[0] + x @ w[1:])))


def leave_one_seed_out(fit: pd.DataFrame, features: list[str], target: str,
                       apply_to: pd.DataFrame | None = None) -> np.ndarray:
    """For each seed of ``apply_to`` (default: ``fit``): a logistic model of ``target`` on ``features``, fitted on
    the rows of ``fit`` from the other seeds (features standardised on those rows), applied to that seed's rows of
    ``apply_to``. NaN for a seed with no other seed to fit on (so everywhere with one seed)."""
    apply_to = fit if apply_to is None else apply_to
    out = np.full(len(apply_to), np.nan)
    seeds = apply_to["seed"].to_numpy()
    for s in np.unique(seeds):
        rows = fit[fit["seed"] != s]
        if rows.empty:
            continue
        xs = rows[features].to_numpy(float)  # sliced as a frame: the same array layout, so the same sums, as before
        mean, std = xs.mean(0), xs.std(0) + 1e-12
        w = fit_logistic((xs - mean) / std, rows[target].to_numpy(float))
        held = seeds == s
        out[held] = _logistic_predict(w, (apply_to.loc[held, features].to_numpy(float) - mean) / std)
    return out


@dataclass
class MiscalibrationResult:
    """What ``compare_predictions`` found.

    Attributes
    ----------
    channels : pandas.DataFrame
        ``channel_statistics`` of every checked channel.
    predictions : pandas.DataFrame
        The held-out rows: the ``local_check`` columns, ``seed``, and ``predicted_formula``,
        ``predicted_gaussian`` (a) and ``predicted_training`` (b).
    ece : pandas.DataFrame
        ``predictor, ece, ci_low, ci_high, brier, explained`` (the share of the formula's ECE removed), ``n_rows``.
    splits : dict
        ``fit_batches`` and ``test_batches`` (a), and per held-out seed the seeds its model (b) was fitted on.
    """

    channels: pd.DataFrame
    predictions: pd.DataFrame
    ece: pd.DataFrame
    splits: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-ready digest for ``summary.json``: the ECE table, the splits and the drift in numbers."""
        import json

        ch = self.channels
        return {"ece": json.loads(self.ece.to_json(orient="records")), "splits": self.splits,
                "drift": {"n_channels": int(len(ch)), "corr_over_scale_mean": float(ch["corr_over_scale"].mean()),
                          "corr_over_scale_median": float(ch["corr_over_scale"].median()),
                          "g_mean_over_norm_mean": float((ch["g_mean"] / ch["norm_mean"]).mean()),
                          "g_std_over_norm_mean": float((ch["g_std"] / ch["norm_mean"]).mean())}}


def compare_predictions(runs: Mapping[tuple[float, int], Run], local: pd.DataFrame, *, fit_fraction: float = 0.5,
                        seed: int = 0) -> MiscalibrationResult:
    """Score the formula, (a) and (b) on the same held-out rows (see the module docstring).

    Rows of minibatch index < ``fit_fraction * n_batches`` fit (a) and (b); the others are the test rows. (b) for a
    seed is fitted on the fit rows of the other seeds only. Needs at least two seeds and two minibatches.
    """
    batches = sorted(local["batch"].unique())
    k = int(round(fit_fraction * len(batches)))
    if len(batches) < 2 or not 0 < k < len(batches):
        raise ValueError(f"need at least two minibatches per checkpoint to fit on some and test on others, got {len(batches)}")
    fit_b, test_b = set(batches[:k]), set(batches[k:])
    data = training_features(runs, local)
    seeds = sorted(data["seed"].unique())
    if len(seeds) < 2:
        raise ValueError("prediction (b) is fitted on some seeds and tested on others: give runs of at least two seeds")
    fit, test = data[data["batch"].isin(fit_b)], data[data["batch"].isin(test_b)].copy()

    # (a): per channel mean and std of g over the fit minibatches
    moments = fit.groupby(_CHANNEL)["g"].agg(mu="mean", sigma="std").reset_index()
    test = test.merge(moments, on=_CHANNEL, how="left")
    lam_test = test["lam"].to_numpy(float)
    test["predicted_formula"] = attraction_probability(lam_test, test["norm"].to_numpy(float))
    test["predicted_gaussian"] = gaussian_attraction(lam_test, test["mu"].fillna(0.0).to_numpy(),
                                                     test["sigma"].fillna(0.0).to_numpy())

    # (b): leave one seed out, features standardised on the fitting seeds
    test["predicted_training"] = leave_one_seed_out(fit, list(FEATURES), "attracted", apply_to=test)
    folds = {int(s): sorted(int(x) for x in fit.loc[fit["seed"] != s, "seed"].unique()) for s in seeds}

    rows = []
    base = None
    for name, col in (("formula 2*Phi(lam/||dL/dx'||)-1", "predicted_formula"),
                      (CHECK_A, "predicted_gaussian"),
                      (PREDICTION_B, "predicted_training")):
        cal = calibration_summary(test.assign(predicted=test[col].clip(0, 1)), seed=seed)
        base = cal["ece"] if base is None else base
        rows.append({"predictor": name, "ece": cal["ece"], "ci_low": cal["ece_ci"][0], "ci_high": cal["ece_ci"][1],
                     "brier": cal["brier"], "explained": 1 - cal["ece"] / base if base > 0 else float("nan"),
                     "n_rows": cal["n_rows"]})
    sizes, seen = {}, set()
    for run in runs.values():  # one forward pass per distinct network and batch size, not per run
        key = (repr(run.config.model), run.config.train.batch_size, repr(run.config.data))
        if key not in seen:
            seen.add(key)
            sizes.update(layer_sizes(run))
    splits = {"fit_batches": sorted(int(b) for b in fit_b), "test_batches": sorted(int(b) for b in test_b),
              "training_fit_seeds": folds}
    keep = [c for c in local.columns] + ["seed", "predicted_formula", "predicted_gaussian", "predicted_training"]
    return MiscalibrationResult(channel_statistics(local, sizes), test[keep], pd.DataFrame(rows), splits)
