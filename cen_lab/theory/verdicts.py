"""What the Theorem 1 notebook concludes: one verdict per claim, each with the regime it holds in, and the
machine-readable summary. ``cen_lab.theorem`` re-exports these.

- ``theorem_regimes``: the settings behind the trained networks' and the Corollary's numbers (``cen_lab.experiments.regime``).
- ``verdict_table``: one row per claim (controlled checks, calibration and ranking in trained networks,
  Gaussianity, outcome, Corollary 1, and per training regime), with the rule each verdict follows.
- ``verdict_display``: the same table for reading (rounded, intervals as text).
- ``theorem_summary``: everything as JSON-ready records (``summary.json``).
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..experiments.regime import regime_of, regime_text
from ..runs.reader import Run
from .formula import proportion_ci
from .networks import theorem_config

__all__ = ["CONTROLLED_REGIME", "theorem_regimes", "verdict_table", "verdict_display", "theorem_summary"]


def _coverage(within: np.ndarray, level: float) -> tuple[float, list[float], str]:
    """Fraction of grid points inside their interval, its Wilson interval, and whether the misses are
    consistent with the intervals' nominal level (binomial test at 1%)."""
    n, k_in = len(within), int(np.sum(within))
    low, high = proportion_ci(k_in, n, 0.95)
    p = stats.binomtest(n - k_in, n, 1 - level, alternative="greater").pvalue
    return k_in / n, [float(low), float(high)], "holds" if p >= 0.01 else "does not hold"


def theorem_regimes(runs: Mapping[tuple[float, int], Run], preset: str, *, corollary_lam: float,
                    finetune_steps: int, seeds: Sequence[int], steps: int, checkpoints: int,
                    **overrides) -> dict[str, dict]:
    """The regimes behind the theorem notebook's numbers (see ``cen_lab.experiments.regime``): ``trained`` (the networks of
    ``train_theorem_runs``, read from their configs), ``corollary-shared`` and ``corollary-unshared`` (those of
    ``corollary_check`` with the same ``overrides``)."""
    out = {"trained": regime_of([run.config for run in runs.values()], preset)}
    for share in (True, False):
        cfgs = [theorem_config(preset, corollary_lam, seed, steps, "proximal", checkpoints, model__share_convs=share,
                               **overrides) for seed in seeds]
        out[f"corollary-{'shared' if share else 'unshared'}"] = regime_of(
            cfgs, preset, then=f"then {finetune_steps} fine-tuning steps with and without exchange")
    return out


CONTROLLED_REGIME = "Monte Carlo where the theorem's assumptions hold by construction (no trained network)"


def _ece_verdict(low: float, high: float, tolerance: float) -> str:
    """Calibration holds when the ECE's interval lies below ``tolerance``, fails when it lies above."""
    return "holds" if high < tolerance else "does not hold" if low > tolerance else "inconclusive"


def verdict_table(controlled: pd.DataFrame, calibration: dict, outcome: pd.DataFrame, corollary: pd.DataFrame,
                  level: float = 0.99, ece_tolerance: float = 0.05,
                  regimes: Mapping[str, dict] | None = None, comparison=None, miscalibration=None) -> pd.DataFrame:
    """One row per claim: ``claim, measured, number, interval, verdict, regime``.

    ``regime`` says what each number holds for (``theorem_regimes``; "not stated" without ``regimes``): the
    controlled checks hold for their Monte Carlo, the others for the trained networks' architecture, preset,
    steps, lam, optimiser and L1 rule, and the tiny preset's say that they carry no evidence.

    Rules (stated so that a reader can disagree with them):

    - controlled checks: ``holds`` when the number of grid points whose prediction falls outside the Monte Carlo
      interval (at ``level``) is consistent with that level (binomial test at 1%), else ``does not hold``;
    - calibration in trained networks: ``holds`` when the ECE bootstrap interval lies below ``ece_tolerance``,
      ``does not hold`` when it lies above, else ``inconclusive``;
    - ranking: ``holds`` when the Spearman interval lies above 0;
    - Gaussianity of ``g / ||dL/dx'||``: ``holds`` when the normality test gives p >= 0.01 and the std is within
      10% of 1;
    - outcome: ``holds`` when every lam's predicted fraction lies inside the observed interval;
    - Corollary 1: as ``corollary_summary`` says;
    - with ``comparison`` (``theorem_regimes.compare_regimes``): the calibration and outcome rules again for every
      training regime (architecture x momentum), each row stating its regime;
    - with ``miscalibration`` (``miscalibration.compare_predictions``): the calibration rule for the check (a)
      ("Gaussian form of g around a drift": fitted on the outcome's own quantity, so not a prediction) and the
      corrected prediction (b) on held-out data, with the share of the formula's ECE each removes.
    """
    rows = []
    frac, ci, verdict = _coverage(controlled["within_ci"].to_numpy(), level)
    rows.append({"claim": "Theorem 1, 2*Phi(lam/|dL/dx'|)-1, where its assumptions hold (controlled)",
                 "measured": f"grid points whose prediction lies in the {level:.0%} Monte Carlo interval "
                             f"(max |error| {controlled['abs_error'].max():.3f})",
                 "number": frac, "interval": ci, "verdict": verdict})
    frac, ci, verdict = _coverage(controlled["inverseless_within_ci"].to_numpy(), level)
    rows.append({"claim": "Inverse-less variant 2*Phi(lam*|dL/dx'|)-1 (controlled)",
                 "measured": f"grid points whose prediction lies in the {level:.0%} Monte Carlo interval",
                 "number": frac, "interval": ci, "verdict": verdict})
    lo, hi = calibration["ece_ci"]
    verdict = _ece_verdict(lo, hi, ece_tolerance)
    rows.append({"claim": "Theorem 1 in trained networks: predicted P(|dL/dgamma| <= lam) at gamma = 0",
                 "measured": f"expected calibration error (tolerance {ece_tolerance}); Brier "
                             f"{calibration['brier']:.3f}", "number": calibration["ece"], "interval": [lo, hi],
                 "verdict": verdict})
    lo, hi = calibration["spearman_ci"]
    rows.append({"claim": "The formula ranks channels by how often they are attracted",
                 "measured": "Spearman correlation, predicted vs observed per channel", "number": calibration["spearman"],
                 "interval": [lo, hi], "verdict": "holds" if lo > 0 else "does not hold" if hi <= 0 else "inconclusive"})
    nrm = calibration["normality"]
    ok = nrm["pvalue"] >= 0.01 and abs(nrm["std"] - 1) <= 0.1
    rows.append({"claim": "dL/dgamma / ||dL/dx'|| ~ N(0, 1) in trained networks (the independence assumption)",
                 "measured": f"std of the ratio (mean {nrm['mean']:.2f}); normality test p = {nrm['pvalue']:.2g}",
                 "number": nrm["std"], "interval": [float("nan"), float("nan")],
                 "verdict": "holds" if ok else "does not hold"})
    inside = (outcome["predicted"] >= outcome["ci_low"]) & (outcome["predicted"] <= outcome["ci_high"])
    rows.append({"claim": "Early-training prediction of which channels end at zero",
                 "measured": f"largest |predicted - observed| fraction over lam ({int(inside.sum())}/{len(inside)} "
                             "predictions inside the observed 95% interval)",
                 "number": float((outcome["predicted"] - outcome["observed"]).abs().max()),
                 "interval": [float("nan"), float("nan")], "verdict": "holds" if inside.all() else "does not hold"})
    for r in corollary.itertuples(index=False):
        rows.append({"claim": f"Corollary 1 ({'shared' if r.share_convs else 'unshared'} convolutions, {r.comparison})",
                     "measured": f"training loss with exchange minus without, mean over {r.n_seeds} seeds "
                                 f"({r.seeds_lower_with_exchange} lower with exchange)",
                     "number": r.mean_delta, "interval": [r.ci_low, r.ci_high], "verdict": r.verdict})
    texts = {k: regime_text(v) for k, v in (regimes or {}).items()}

    def regime_for(claim: str) -> str:
        if "(controlled)" in claim:
            return CONTROLLED_REGIME
        if claim.startswith("Corollary"):
            return texts.get("corollary-unshared" if "(unshared" in claim else "corollary-shared", "not stated")
        return texts.get("trained", "not stated")

    out = pd.DataFrame(rows)
    out["regime"] = [regime_for(claim) for claim in out["claim"]]
    if comparison is not None:
        out = pd.concat([out, _regime_rows(comparison, ece_tolerance)], ignore_index=True)
    if miscalibration is not None:
        extra = []
        for r in miscalibration.ece.iloc[1:].itertuples(index=False):
            check = r.predictor.startswith("(a)")  # fitted on the outcome's own quantity: not a prediction
            extra.append({"claim": (f"Gaussian form of g around a drift {r.predictor}" if check
                                    else f"Corrected prediction {r.predictor}"),
                          "measured": f"expected calibration error (tolerance {ece_tolerance}); removes "
                                      f"{r.explained:.0%} of the formula's ECE on the same rows",
                          "number": r.ece, "interval": [r.ci_low, r.ci_high],
                          "verdict": _ece_verdict(r.ci_low, r.ci_high, ece_tolerance),
                          "regime": texts.get("trained", "not stated")})
        out = pd.concat([out, pd.DataFrame(extra)], ignore_index=True)
    return out


def verdict_display(verdicts: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``verdict_table`` for reading: ``number`` rounded to ``digits``, ``interval`` as ``"low to high"`` with the
    same rounding (empty where a claim has no interval). The table itself keeps the numbers for ``summary.json``."""
    def interval(bounds) -> str:
        low, high = (float(b) for b in bounds)
        return "" if np.isnan(low) or np.isnan(high) else f"{low:.{digits}f} to {high:.{digits}f}"

    return verdicts.assign(number=verdicts["number"].astype(float).round(digits),
                           interval=[interval(b) for b in verdicts["interval"]])


def _regime_rows(comparison, ece_tolerance: float) -> pd.DataFrame:
    """The calibration and outcome verdicts of every regime of a ``RegimeComparison``."""
    rows = []
    for r in comparison.calibration.itertuples(index=False):
        lo, hi = r.ece_low, r.ece_high
        rows.append({"claim": f"Theorem 1 in trained networks ({r.regime})",
                     "measured": f"expected calibration error (tolerance {ece_tolerance}); dL/dgamma / ||dL/dx'|| "
                                 f"mean {r.z_mean:.2f}, std {r.z_std:.2f}", "number": r.ece, "interval": [lo, hi],
                     "verdict": _ece_verdict(lo, hi, ece_tolerance), "regime": r.regime_text})
        sub = comparison.outcome[comparison.outcome["regime"] == r.regime]
        rows.append({"claim": f"Early-training prediction of which channels end at zero ({r.regime})",
                     "measured": f"largest |predicted - observed| fraction over lam ({int(sub['inside'].sum())}/"
                                 f"{len(sub)} predictions inside the observed 95% interval)",
                     "number": float((sub["predicted"] - sub["observed"]).abs().max()),
                     "interval": [float("nan"), float("nan")],
                     "verdict": "holds" if sub["inside"].all() else "does not hold", "regime": r.regime_text})
    return pd.DataFrame(rows)


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.to_json(orient="records"))


def theorem_summary(controlled: pd.DataFrame, controlled_bn: pd.DataFrame, dynamic: pd.DataFrame, calibration: dict,
                    outcome: pd.DataFrame, corollary: pd.DataFrame, corollary_sum: pd.DataFrame,
                    verdicts: pd.DataFrame, regimes: Mapping[str, dict] | None = None) -> dict:
    """The machine-readable summary of the Theorem 1 notebook (``summary.json``).

    Keys: ``controlled`` (``max_abs_error``, ``within_ci_fraction``, ``inverseless_within_ci_fraction``, the same
    for the real-BatchNorm variant, and ``rows``), ``dynamic.rows``, ``trained`` (``brier``, ``ece``, ``spearman``
    with ``*_ci``, ``normality``, ``reliability``), ``outcome.rows`` (lam, predicted, observed, ci_low, ci_high,
    ...), ``corollary`` (``rows`` per seed and ``summary``), ``verdicts`` (each with its ``regime``) and
    ``regimes`` (``theorem_regimes``: the settings behind the trained and the Corollary numbers).
    """
    trained = {k: v for k, v in calibration.items() if k != "reliability"}
    trained["reliability"] = _records(calibration["reliability"])
    return {
        "controlled": {"max_abs_error": float(controlled["abs_error"].max()),
                       "within_ci_fraction": float(controlled["within_ci"].mean()),
                       "inverseless_within_ci_fraction": float(controlled["inverseless_within_ci"].mean()),
                       "batchnorm_max_abs_error": float(controlled_bn["abs_error"].max()),
                       "batchnorm_within_ci_fraction": float(controlled_bn["within_ci"].mean()),
                       "rows": _records(controlled)},
        "dynamic": {"rows": _records(dynamic)},
        "trained": trained,
        "outcome": {"rows": _records(outcome)},
        "corollary": {"rows": _records(corollary), "summary": _records(corollary_sum)},
        "verdicts": _records(verdicts),
        "regimes": dict(regimes or {}),
    }
