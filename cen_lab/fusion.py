"""The fusion benchmark: CEN against the usual alternatives and its own ablations, same data, same budget.

Every variant is a bundle of config overrides on one base (``fusion_base``), trained for the same steps with
the same code paths and logs, over several seeds with ``cen_lab.sweep``. ``compute_fusion_results`` turns the
runs into a long table (one row per variant and prediction branch, mean and t interval across seeds,
parameter count, training time); ``compare_to`` gives differences with Welch intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .config import ExperimentConfig
from .runlog import load_run
from .sweeps import sweep

__all__ = ["VARIANTS", "FAMILIES", "fusion_base", "run_fusion_benchmark", "per_run_scores", "compute_fusion_results",
           "fusion_summary", "compare_to", "runs_of_seed"]

_NO_CEN = {"model.exchange": "none", "train.sparsity": "none"}

# name -> (family, overrides on fusion_base); for two modalities, rgb and depth
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "unimodal-rgb": ("unimodal", {"data.modalities": ["rgb"], **_NO_CEN}),
    "unimodal-depth": ("unimodal", {"data.modalities": ["depth"], **_NO_CEN}),
    "early-fusion": ("baseline", {"model.fusion": "early", **_NO_CEN}),
    "late-fusion": ("baseline", {"model.fusion": "late", "model.share_convs": False, **_NO_CEN}),
    "aggregate-sum": ("baseline", {"model.fusion": "aggregate-sum", **_NO_CEN}),
    "aggregate-concat": ("baseline", {"model.fusion": "aggregate-concat", **_NO_CEN}),
    "cen": ("cen", {}),
    "cen-no-exchange": ("ablation", {"model.exchange": "none"}),
    "cen-unshared-convs": ("ablation", {"model.share_convs": False}),
    "cen-l1-all": ("ablation", {"train.sparsity": "all"}),
    "cen-no-l1": ("ablation", {"train.lam": 0.0}),
    "cen-proximal": ("ablation", {"train.l1_rule": "proximal"}),
    "cen-random-exchange": ("ablation", {"model.exchange": "random"}),
}
FAMILIES = ("unimodal", "baseline", "cen", "ablation")


def fusion_base(preset: str = "default", steps: int = 300, **overrides) -> ExperimentConfig:
    """The common base: the preset with widths (16, 16, 32, 32), ``lam = 1e-2`` so that exchange starts within
    the budget, evaluation only at the start and the end, and one checkpoint. ``overrides`` use ``__`` for
    dots (``train__lam=5e-3``)."""
    base = {"name": f"fusion-{preset}", "model.widths": (16, 16, 32, 32), "model.strides": (1, 2, 1, 2),
            "train.lam": 1e-2, "train.steps": steps,
            "train.ckpt_every": steps, "log.eval_every": steps, "log.every": max(1, steps // 30),
            "model.fusion_block": 1}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return ExperimentConfig.preset(preset).override(base)


def run_fusion_benchmark(runs_dir: str | Path, *, preset: str = "default", variants: Sequence[str] | None = None,
                         seeds: Sequence[int] = range(5), steps: int = 300, n_jobs: int = 2, progress: bool = True,
                         **overrides) -> pd.DataFrame:
    """Train (or reuse) every variant for every seed with ``cen_lab.sweep``; returns the sweep table (with
    ``variant``, ``seed``, ``path``, ``status``, ``seconds``). Unknown variant names are errors."""
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown fusion variant {unknown[0]!r}; choose from {list(VARIANTS)}")
    bundles = {v: VARIANTS[v][1] for v in names}
    return sweep(fusion_base(preset, steps, **overrides), {"seed": list(seeds)}, runs_dir, variants=bundles,
                 backend="loky" if n_jobs > 1 else "serial", n_jobs=n_jobs, progress=progress)


def runs_of_seed(table: pd.DataFrame, seed: int | None = None, variants: Sequence[str] | None = None) -> dict:
    """variant -> Run for one seed (default: the smallest) of a benchmark table, for looking at the dynamics."""
    done = table[table["status"].isin(["complete", "skipped"])]
    seed = int(done["seed"].min()) if seed is None else seed
    sub = done[done["seed"] == seed]
    if variants is not None:
        sub = sub[sub["variant"].isin(variants)]
    return {row.variant: load_run(row.path) for row in sub.itertuples(index=False)}


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if len(values) < 2 or np.std(values, ddof=1) == 0:
        return float("nan"), float("nan")
    low, high = stats.t.interval(level, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return float(low), float(high)


def per_run_scores(table: pd.DataFrame) -> pd.DataFrame:
    """The final validation score of every prediction branch of every completed run in a benchmark table:
    ``variant, seed, branch, metric, value, params, seconds``."""
    rows = []
    for row in table[table["status"].isin(["complete", "skipped"])].itertuples(index=False):
        run = load_run(row.path)
        val = run.metrics[run.metrics["split"] == "val"]
        last = val[val["step"] == val["step"].max()]
        metric = "miou" if run.manifest["task"] == "seg" else "accuracy"
        params = sum(p.numel() for p in run.load_model().parameters())
        for branch in run.outputs + ["ensemble"]:
            value = last.loc[last["name"] == f"{metric}/{branch}", "value"]
            rows.append({"variant": row.variant, "seed": row.seed, "branch": branch, "metric": metric,
                         "value": float(value.iloc[0]), "params": params,
                         "seconds": float(run.manifest.get("train_seconds", float("nan")))})
    return pd.DataFrame(rows)


def compute_fusion_results(scores: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per (variant, prediction branch) from ``per_run_scores`` of a benchmark table.

    Returns
    -------
    pandas.DataFrame
        ``variant, family, branch, metric`` (``miou`` or ``accuracy``), ``n_seeds, mean, std, ci_low, ci_high``
        (t interval across seeds at ``level``), ``params`` (trainable parameters), ``seconds`` (mean wall time
        of the training loop per run, from the run manifests), in variant order, then the branches in
        output order with ``ensemble`` last. Failed runs are left out (``n_seeds`` shows it).
    """
    df = scores
    out = []
    for (variant, branch), sub in df.groupby(["variant", "branch"], sort=False):
        v = sub["value"].to_numpy()
        low, high = _interval(v, level)
        timed = sub["seconds"].dropna()
        out.append({"variant": variant, "family": VARIANTS[variant][0] if variant in VARIANTS else "other",
                    "branch": branch, "metric": sub["metric"].iloc[0], "n_seeds": len(v), "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "ci_low": low, "ci_high": high,
                    "params": int(sub["params"].iloc[0]), "seconds": float(timed.mean()) if len(timed) else float("nan")})
    return pd.DataFrame(out)


def fusion_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: the ensemble (the variant's final prediction) with its interval, each branch's mean,
    parameters and training time, best ensemble first."""
    ens = results[results["branch"] == "ensemble"].set_index("variant")
    branches = results[results["branch"] != "ensemble"].pivot(index="variant", columns="branch", values="mean")
    out = ens[["family", "metric", "n_seeds", "mean", "ci_low", "ci_high", "params", "seconds"]].join(
        branches.add_prefix("branch/"))
    return out.sort_values("mean", ascending=False).reset_index()


def compare_to(scores: pd.DataFrame, reference: str = "cen", level: float = 0.95) -> pd.DataFrame:
    """Ensemble score of ``reference`` minus each other variant's (means over seeds) with a Welch t interval.

    ``scores`` is ``per_run_scores`` of a benchmark table. Rows: ``variant, difference, ci_low, ci_high,
    verdict`` (``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``).
    """
    ens = scores[scores["branch"] == "ensemble"]
    per_seed = {v: sub["value"].to_numpy() for v, sub in ens.groupby("variant", sort=False)}
    if reference not in per_seed:
        raise ValueError(f"no completed runs of the reference variant {reference!r}")
    ref = per_seed[reference]
    rows = []
    for variant, v in per_seed.items():
        if variant == reference:
            continue
        low = high = float("nan")  # no interval from fewer than two seeds, or when both sides never vary
        if len(ref) > 1 and len(v) > 1 and (np.ptp(ref) > 0 or np.ptp(v) > 0):
            ci = stats.ttest_ind(ref, v, equal_var=False).confidence_interval(level)
            low, high = float(ci.low), float(ci.high)
        verdict = "better" if low > 0 else "worse" if high < 0 else "no clear difference"
        rows.append({"variant": variant, "difference": float(ref.mean() - v.mean()), "ci_low": low, "ci_high": high,
                     "verdict": verdict})
    return pd.DataFrame(rows)
