"""Theorem 1 in the regime it is stated for, next to the regime it is usually trained in.

The theorem's stay-at-zero condition ``|dL/dgamma| <= lam`` is about plain (sub)gradient steps. cen_lab's theorem
networks train with SGD momentum 0.9 by default. ``compare_regimes`` trains the same theorem networks (no
exchange, the penalty on the disjoint portion) for every combination of architecture (``plain``, ``bottleneck``)
and momentum (0.9, and 0: plain SGD), and by default once more with InstanceNorm (``model.norm = "instance"``,
the translation application's norm: plain, momentum 0.9), runs the local check on each, and reports side by side,
per regime:

- ``calibration``: ECE, Brier and Spearman of the prediction at gamma = 0, with bootstrap intervals, and the mean and
  std of ``dL/dgamma / ||dL/dx'||`` (0 and 1 under the theorem's independence assumption);
- ``outcome``: which penalised channels end training at zero, predicted at the first checkpoint against observed
  (with a Wilson interval), per lam.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..experiments.regime import architecture, optimiser, regime_of, regime_text
from .local_checks import calibration_summary, local_check_runs, outcome_table, train_theorem_runs

__all__ = ["RegimeComparison", "compare_regimes", "regime_label", "REGIME_DEFAULTS"]


# the full comparison of ``cen-lab bench-theorem-regimes``: the theorem notebook's networks (its defaults for lams,
# seeds, steps, rule, checkpoints and minibatches) in every regime; the report's notebook runs the plain ones only
REGIME_DEFAULTS = {"lams": [0.005, 0.01, 0.02], "seeds": [0, 1, 2], "steps": 300, "l1_rule": "proximal",
                   "checkpoints": 2, "n_batches": 8, "archs": ["plain", "bottleneck"], "momentums": [0.9, 0.0],
                   "instance": [("plain", 0.9)]}


def regime_label(arch: str, momentum: float, norm: str = "batch") -> str:
    """``plain, momentum 0.9`` (what the tables and figures call a regime), ``..., instance norm`` for another
    norm than BatchNorm."""
    return f"{arch}, momentum {momentum:g}" + ("" if norm == "batch" else f", {norm} norm")


@dataclass
class RegimeComparison:
    """What ``compare_regimes`` measured.

    Attributes
    ----------
    calibration : pandas.DataFrame
        One row per regime: ``regime, arch, momentum, norm, regime_text`` (``cen_lab.experiments.regime.regime_text`` of its runs),
        ``architecture, optimiser, n_channels, ece, ece_low, ece_high, brier, spearman, spearman_low,
        spearman_high, z_mean, z_std, no_gradient``.
    outcome : pandas.DataFrame
        ``outcome_table`` per regime, stacked: ``regime, arch, momentum, norm, lam, predicted, observed, ci_low,
        ci_high, inside`` (the prediction inside the observed interval), ...
    local : pandas.DataFrame
        The local-check rows of every regime, with ``regime, arch, momentum, norm_family`` columns (``norm`` stays
        the check's ``||dL/dx'||``).
    """

    calibration: pd.DataFrame
    outcome: pd.DataFrame
    local: pd.DataFrame

    def summary(self) -> dict:
        """The calibration and outcome tables as JSON-ready records (for ``summary.json``)."""
        return {"calibration": json.loads(self.calibration.to_json(orient="records")),
                "outcome": json.loads(self.outcome.to_json(orient="records"))}


def _known_rows(local: pd.DataFrame | None, runs, n_batches: int) -> pd.DataFrame | None:
    """The rows of ``local`` for ``runs`` (in their order) when every run has them at every checkpoint, with
    ``n_batches`` minibatches; else None."""
    if local is None:
        return None
    parts = []
    for run in runs.values():
        rows = local[local["run"] == run.path.name]
        if (rows.empty or set(rows["step"]) != set(run.checkpoint_steps)
                or rows.groupby("step")["batch"].nunique().ne(n_batches).any()):
            return None
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def compare_regimes(lams: Sequence[float], seeds: Sequence[int], runs_dir: str | Path, *, preset: str = "default",
                    steps: int = 300, l1_rule: str = "proximal", checkpoints: int = 2, n_batches: int = 8,
                    archs: Sequence[str] = ("plain", "bottleneck"), momentums: Sequence[float] = (0.9, 0.0),
                    instance: Sequence[tuple[str, float]] = (("plain", 0.9),), n_jobs: int = 1,
                    progress: bool = True, local: pd.DataFrame | None = None, **overrides) -> RegimeComparison:
    """Train (or reuse) the theorem networks of every (arch, momentum), and of every (arch, momentum) of
    ``instance`` with InstanceNorm, and check Theorem 1 on each.

    On InstanceNorm the check's scale is ``||dL/dx'||`` centred over each sample's positions
    (``cen_lab.network.hooks.record_bn_output_grad_norms``), where ``x_hat`` sums to zero.

    Runs go to ``runs_dir`` under names that carry the architecture, a non-default momentum and a non-batch norm
    (``theorem_runs.theorem_base``), so the default regime reuses the theorem notebook's own runs. ``overrides``
    are further config keys of every run, as in ``theorem_runs.theorem_base`` (``train__precision="bf16"``).

    ``local``: ``local_check_runs`` rows already computed with the same ``n_batches`` (and the default minibatch
    seed), such as the theorem notebook's section 2 on the default regime's runs. A regime whose runs all have
    rows there at every checkpoint reuses them instead of checking the same runs again.
    """
    calibration, outcomes, locals_ = [], [], []
    regimes = [(a, m, "batch") for a in archs for m in momentums] + [(a, m, "instance") for a, m in instance]
    for arch, momentum, norm in regimes:
        label = regime_label(arch, momentum, norm)
        runs = train_theorem_runs(lams, seeds, runs_dir, preset=preset, steps=steps, l1_rule=l1_rule,
                                  checkpoints=checkpoints, n_jobs=n_jobs, progress=progress,
                                  model__arch=arch, train__momentum=momentum, model__norm=norm, **overrides)
        local_rows = _known_rows(local, runs, n_batches)
        if local_rows is None:
            local_rows = local_check_runs(runs, n_batches=n_batches, progress=progress, n_jobs=n_jobs)
        cal = calibration_summary(local_rows)
        outcome, _ = outcome_table(runs, local_rows)
        cfg = next(iter(runs.values())).config
        calibration.append({
            "regime": label, "arch": arch, "momentum": momentum, "norm": norm,
            "regime_text": regime_text(regime_of([run.config for run in runs.values()], preset)),
            "architecture": architecture(cfg),
            "optimiser": optimiser(cfg), "n_channels": cal["n_channels"], "ece": cal["ece"],
            "ece_low": cal["ece_ci"][0], "ece_high": cal["ece_ci"][1], "brier": cal["brier"],
            "spearman": cal["spearman"], "spearman_low": cal["spearman_ci"][0],
            "spearman_high": cal["spearman_ci"][1], "z_mean": cal["normality"]["mean"],
            "z_std": cal["normality"]["std"], "no_gradient": cal["no_gradient"]["fraction"]})
        inside = (outcome["predicted"] >= outcome["ci_low"]) & (outcome["predicted"] <= outcome["ci_high"])
        outcomes.append(outcome.assign(regime=label, arch=arch, momentum=momentum, norm=norm, inside=inside))
        locals_.append(local_rows.assign(regime=label, arch=arch, momentum=momentum, norm_family=norm))
    outcome = pd.concat(outcomes, ignore_index=True)
    first = ["regime", "arch", "momentum", "norm", "lam", "predicted", "observed", "ci_low", "ci_high", "inside"]
    outcome = outcome[first + [c for c in outcome.columns if c not in first]]
    return RegimeComparison(pd.DataFrame(calibration), outcome, pd.concat(locals_, ignore_index=True))
