"""Do Theorem 1's formula, or the corrected predictors of its miscalibration, say which channels CEN training
exchanges?

``cen_lab.miscalibration`` corrects the formula on networks *without* exchange, where the outcome is "gamma = 0
is a local minimum" at a checkpoint. Here the outcome is the one users ask about: the penalised channel crossed
the threshold during CEN training, exchange on (``exchange_outcome``; once exchanged, a channel gets no data
gradient and does not come back). Every score is measured before any channel of its run was exchanged:

- ``formula, training``: ``2*Phi(lam / ||dL/dx'||) - 1`` with ``||dL/dx'||`` logged during training, averaged over
  the run's early window (the logged steps before its first crossing; ``exchange_outcome``'s prediction);
- ``formula, gamma = 0``: the same formula with the theorem's own quantity, ``||dL/dx'||`` at gamma = 0, from the
  local check at the last checkpoint inside that window, with the exchange switched off (the theorem's setting;
  in a network that exchanges, a channel at gamma = 0 gets no gradient), averaged over minibatches;
- ``(a) Gaussian g``: ``P(|g| <= lam)`` with ``g ~ N(mu_g, sigma_g^2)``, the mean and spread of that local check's
  ``g = dL/dgamma`` over its minibatches. On the networks without exchange, (a) re-measures its outcome's own
  quantity and is a check, not a prediction; here the outcome is a later, different event, so it predicts;
- ``(b) training features``: the logistic model of ``cen_lab.miscalibration`` on what training logs
  (``log(lam / ||dL/dx'||)``, ``dL/dgamma / ||dL/dx'||`` and ``log|gamma|`` over the early window), refitted with
  the exchange as its target on the other seeds of the same architecture, tested on each held-out seed.

``predictor_scores`` gives per architecture and predictor the ECE, Brier score and AUC, with intervals from a
bootstrap over runs. The local check costs one forward and backward pass per penalised channel pair and minibatch
(about 20 s per run of the default preset with 8 minibatches, on 2 cores).
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import pandas as pd

from .._util.progress import progress_bar
from ..runs.reader import Run, load_run
from .exchange_outcome import calibration_measures, exchange_outcome, exchange_outcome_scores, outcome_row
from .miscalibration import FEATURES, gaussian_attraction, leave_one_seed_out, log_features, z_ratio

__all__ = ["PREDICTORS", "outcome_checkpoint", "exchange_local_check", "leave_one_seed_out", "exchange_predictions",
           "predictor_scores", "theorem_on_exchange"]

# column of ``exchange_predictions`` -> the predictor's name in every table
PREDICTORS = {"predicted": "formula, training ||dL/dx'||",
              "predicted_local": "formula, ||dL/dx'|| at gamma = 0",
              "predicted_gaussian": "(a) Gaussian g at gamma = 0",
              "predicted_training": "(b) training features, other seeds",
              "predicted_training_no_gamma": "(b) without |gamma|"}
# the features of each (b) column: all three, and without |gamma| (how much of (b) is "already small")
_TRAINING = {"predicted_training": list(FEATURES),
             "predicted_training_no_gamma": [f for f in FEATURES if f != "log_abs_gamma"]}
_KEY = ["run", "layer", "branch", "channel"]


def _items(runs: Mapping[str, Run]) -> list[tuple[str, Run]]:
    if not isinstance(runs, Mapping):
        raise TypeError("runs must be a mapping label -> Run (as exchange_outcome labels them), got "
                        f"{type(runs).__name__}")
    return list(runs.items())


def outcome_checkpoint(run: Run, window_end: int, label: str = "") -> int:
    """The last checkpoint of ``run`` at or before ``window_end`` (the last logged step before its first
    crossing, ``exchange_outcome``'s ``window_end``). Raises ``ValueError`` when there is none."""
    steps = [s for s in run.checkpoint_steps if s <= window_end]
    if not steps:
        raise ValueError(f"{label or run.path.name}: no checkpoint at or before step {window_end}, the end of the "
                         f"window before the run's first crossing (checkpoints at {run.checkpoint_steps}); the local "
                         "check needs one: train with a smaller train.ckpt_every")
    return max(steps)


def exchange_local_check(runs: Mapping[str, Run], n_batches: int = 8, seed: int = 0, progress: bool = True,
                         outcome: pd.DataFrame | None = None) -> pd.DataFrame:
    """Theorem 1's local check (``cen_lab.theorem.local_check``, exchange switched off) of every run at its
    ``outcome_checkpoint``: the ``local_check`` columns, ``run`` being the label of ``runs``. ``outcome``:
    ``exchange_outcome(runs)`` when the caller has it already (computed here otherwise)."""
    from .local_checks import local_check

    items = _items(runs)
    outcome = exchange_outcome(dict(items)) if outcome is None else outcome
    windows = outcome.groupby("run")[["window_end", "first_crossing"]].first()
    frames = []
    bar = progress_bar(total=len(items), desc="local check at gamma = 0, exchange off", disable=not progress)
    for label, run in items:
        step = outcome_checkpoint(run, int(windows.loc[label, "window_end"]), label)
        first = windows.loc[label, "first_crossing"]
        if step >= first:  # a short run: the early window is at least MIN_STEPS + 1 logged steps
            warnings.warn(f"{label}: the last checkpoint in the early window (step {step}) is not before the run's "
                          f"first crossing (step {first:g}): some channels were exchanged before the local check",
                          UserWarning, stacklevel=2)
        frames.append(local_check(run, [step], n_batches, seed, exchange_off=True).assign(run=label))
        bar.update(1)
    bar.close()
    return pd.concat(frames, ignore_index=True)


def _training_features(label: str, run: Run, window_end: int) -> pd.DataFrame:
    """Per penalised channel: the features of (b) over the logged steps up to ``window_end``."""
    g = run.grads[run.grads["step"] <= window_end]
    g = g.assign(z=z_ratio(g["dgamma"].to_numpy(float), g["dxprime_norm"].to_numpy(float)))
    feats = g.groupby(["layer", "branch", "channel"]).agg(train_norm=("dxprime_norm", "mean"),
                                                          z_trained=("z", "mean"))
    gam = run.gammas[run.gammas["step"] <= window_end]
    gam = gam[gam["step"] == gam["step"].max()].set_index(["layer", "branch", "channel"])["gamma"]
    feats["abs_gamma"] = gam.abs().reindex(feats.index).to_numpy(float)
    return feats.reset_index().assign(run=label)


def exchange_predictions(runs: Mapping[str, Run], local: pd.DataFrame | None = None,
                         outcome: pd.DataFrame | None = None) -> pd.DataFrame:
    """``exchange_outcome(runs)`` (or the ``outcome`` given) with the other predictors' columns (see
    ``PREDICTORS``).

    ``local``: ``exchange_local_check(runs)``; without it ``predicted_local`` and ``predicted_gaussian`` are NaN.
    The (b) columns are NaN for an architecture with fewer than two seeds (they are fitted on the other seeds);
    ``predicted_training_no_gamma`` leaves ``log|gamma|`` out, to show how much of (b) is that the channel's gamma
    is already small. Give the runs of one preset: (b) pools the seeds of an architecture.
    """
    items = _items(runs)
    frame = exchange_outcome(dict(items)) if outcome is None else outcome
    windows = frame.groupby("run")["window_end"].first()
    feats = pd.concat([_training_features(label, run, int(windows[label])) for label, run in items], ignore_index=True)
    frame = frame.merge(feats, on=_KEY, how="left")
    lam = frame["run"].map({label: run.lam_per_step for label, run in items}).to_numpy(float)
    for name, values in log_features(lam, frame["train_norm"].to_numpy(float),
                                     frame["abs_gamma"].to_numpy(float)).items():
        frame[name] = values
    if local is None:
        frame["predicted_local"] = frame["predicted_gaussian"] = np.nan
    else:
        per = local.rename(columns={"modality": "branch"}).groupby(_KEY).agg(
            predicted_local=("predicted", "mean"), mu=("g", "mean"), sigma=("g", "std"), lam_local=("lam", "first"),
            checkpoint=("step", "first"))
        per["predicted_gaussian"] = gaussian_attraction(per["lam_local"].to_numpy(float), per["mu"].to_numpy(float),
                                                        per["sigma"].fillna(0.0).to_numpy(float))
        frame = frame.merge(per[["predicted_local", "predicted_gaussian", "checkpoint"]].reset_index(), on=_KEY,
                            how="left")
    for column, features in _TRAINING.items():
        frame[column] = np.nan
        for _, sub in frame.groupby("arch", sort=False):
            frame.loc[sub.index, column] = leave_one_seed_out(sub, features, "exchanged")
    return frame


def predictor_scores(frame: pd.DataFrame, bins: int = 10, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Per architecture and predictor of an ``exchange_predictions`` frame (predictors with no values left out):
    ``arch, predictor, runs, channels, exchanged`` (with its Wilson interval), ``mean predicted``, and ``ECE``,
    ``Brier`` and ``AUC`` (0.5 is chance), each with ``<name> low`` / ``<name> high`` from a bootstrap over runs."""
    rows = []
    rng = np.random.default_rng(seed)
    for arch, sub in frame.groupby("arch", sort=False):
        for column, name in PREDICTORS.items():
            part = sub.dropna(subset=[column])
            if not part.empty:
                rows.append({"arch": arch, "predictor": name, **outcome_row(
                    part, column, lambda parts, column=column: calibration_measures(parts, column, bins), n_boot,
                    level, rng)})
    return pd.DataFrame(rows)


def theorem_on_exchange(table: pd.DataFrame, n_boot: int = 1000, local_batches: int = 8,
                        progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per preset and architecture of a ``cen_lab.experiments.regime_bench.run_regime_benchmark`` table:
    ``exchange_outcome_scores`` (Theorem 1's probability, from the early window's ``||dL/dx'||``, scored on which
    penalised channels each run ended up exchanging), and ``exchange_predictors.predictor_scores`` (every
    predictor, with the local check of ``local_batches`` minibatches at gamma = 0; 0 skips it)."""
    if local_batches < 0:
        raise ValueError(f"local_batches must be >= 0 (0 skips the local check), got {local_batches}")
    done = table[table["status"].isin(["complete", "skipped"])]
    frames, predictors = [], []
    for preset, sub in done.groupby("preset", sort=False):
        runs = {str(p): load_run(p) for p in sub["path"]}
        outcome = exchange_outcome(runs)
        frames.append(exchange_outcome_scores(outcome, n_boot=n_boot).assign(preset=preset))
        local = exchange_local_check(runs, local_batches, progress=progress, outcome=outcome) if local_batches else None
        predictors.append(predictor_scores(exchange_predictions(runs, local, outcome), n_boot=n_boot)
                          .assign(preset=preset))
    out, pred = pd.concat(frames, ignore_index=True), pd.concat(predictors, ignore_index=True)
    return (out[["preset", *[c for c in out.columns if c != "preset"]]],
            pred[["preset", *[c for c in pred.columns if c != "preset"]]])
