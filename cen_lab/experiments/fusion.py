"""The fusion benchmark: CEN against the usual alternatives and its own ablations, same data, same budget.

Every variant is a bundle of config overrides on one base (``fusion_base``), trained for the same steps with
the same code paths and logs, over several seeds with ``cen_lab.sweep``. ``compute_fusion_results`` turns the
runs into a long table (one row per variant and prediction branch, mean and t interval across seeds,
parameter count, training time); ``compare_to`` gives differences with Welch intervals.

``SCENARIOS`` adds the TPAMI extension's other scenarios on the same base and machinery: cycle fusion of three
modalities, multitask learning on one input (segmentation, depth, edges) and multimodal multitask learning,
with the single-task networks and the no-exchange multitask network to compare them with. Every table then has
a ``task`` column, and each task is scored by its own metric (``cen_lab.network.tasks``: mIoU, depth MAE where lower is
better, edge F1).

The default benchmark runs every variant on both architectures (``ARCHS``: ``plain`` conv blocks and the
``bottleneck`` residual network with the exchange at ``bn2``). Every table has an ``arch`` column, read from each
run's own config; means, intervals and comparisons are taken within one architecture, never across. Every
per-run and aggregated table also carries ``regime`` (``cen_lab.experiments.regime.regime_text``: preset, architecture,
steps, lam, optimiser, L1 rule and what evidence the preset gives).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .._util.atomic import atomic_path
from ..config import ARCHS, ExperimentConfig, dotted  # ARCHS: the default benchmark's architectures, plain first
from ..errors import said
from ..runs.reader import load_run
from .precision import name_suffix
from .sweeps import sweep

LOWER_IS_BETTER = ("mae", "l1")  # metrics where a smaller value is better (depth MAE, translation L1)

__all__ = ["ARCHS", "VARIANTS", "SCENARIOS", "REFERENCE_SWITCHES", "DEFAULT_SCENARIOS", "FAMILIES", "fusion_base",
           "run_fusion_benchmark", "per_run_scores", "compute_fusion_results", "fusion_summary", "compare_to",
           "compare_switches", "final_exchange_ratios", "runs_of_seed", "completed_runs", "by_arch",
           "SWITCH_BASES"]

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
_MT = {"data.modalities": ["rgb"], "data.tasks": ["seg", "depth", "edges"]}
# name -> (family, overrides on fusion_base): the other CEN scenarios and what they are compared with
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "cycle-fusion": ("scenario", {"data.modalities": ["rgb", "depth", "edges"], "model.exchange": "cyclic"}),
    "three-modal-mean": ("cen", {"data.modalities": ["rgb", "depth", "edges"]}),
    "multitask": ("scenario", _MT),
    "multitask-no-exchange": ("ablation", {**_MT, "model.exchange": "none"}),
    "single-task-depth": ("single-task", {"data.modalities": ["rgb"], "data.tasks": ["depth"], **_NO_CEN}),
    "single-task-edges": ("single-task", {"data.modalities": ["rgb"], "data.tasks": ["edges"], **_NO_CEN}),
    "multimodal-multitask": ("scenario", {"data.modalities": ["rgb", "depth"], "data.tasks": ["seg", "edges"]}),
}
# name -> (family, overrides on fusion_base): the switches that remove a difference from the reference code, each
# to be compared with the variant it changes (``cen``, or ``three-modal-mean`` for M = 3; see the README's table)
REFERENCE_SWITCHES: dict[str, tuple[str, dict[str, Any]]] = {
    "cen-l1-per-output": ("reference", {"train.l1_per_output": True}),
    "three-modal-alternate-halves": ("reference", {"data.modalities": ["rgb", "depth", "edges"],
                                                   "train.sparsity": "alternate-halves"}),
}
# each reference switch and the variant it changes
SWITCH_BASES = {"cen-l1-per-output": "cen", "three-modal-alternate-halves": "three-modal-mean"}
# the scenario runs of the scenarios notebook: the paper's fusion (``cen``) and rgb-only segmentation come from
# VARIANTS
DEFAULT_SCENARIOS = ("cen", "unimodal-rgb", *SCENARIOS)
FAMILIES = ("unimodal", "single-task", "baseline", "cen", "scenario", "ablation", "reference")
_CATALOGUE = {**VARIANTS, **SCENARIOS, **REFERENCE_SWITCHES}


# lam of the fusion base where it is not the preset's own: the "collapse" preset (SGD at a constant rate, the
# default before 2026-12) was benchmarked with lam 1e-2, so that its exchange started within the budget
FUSION_LAM = {"collapse": 1e-2}


def fusion_base(preset: str = "default", steps: int = 600, **overrides) -> ExperimentConfig:
    """The common base: the preset with widths (16, 16, 32, 32), the preset's lam (``FUSION_LAM`` where it
    differs), ten validation passes (for the learning curves, ``cen_lab.experiments.learning_curves``), and one
    checkpoint. ``overrides`` use ``__`` for dots (``train__lam=5e-3``)."""
    lam = FUSION_LAM.get(preset, ExperimentConfig.preset(preset).train.lam)
    base = {"name": f"fusion-{preset}", "model.widths": (16, 16, 32, 32), "model.strides": (1, 2, 1, 2),
            "train.lam": lam, "train.steps": steps,
            "train.ckpt_every": steps, "log.eval_every": max(1, steps // 10), "log.every": max(1, steps // 30),
            "model.fusion_block": 1}
    base.update(dotted(overrides))
    base["name"] += name_suffix(base.get("train.precision", "fp32"))  # bf16 runs in their own folders
    if base.get("model.arch", "plain") != "plain":  # each architecture's runs in their own folders
        base["name"] += f"-{base['model.arch']}"
    return ExperimentConfig.preset(preset).override(base)


def run_fusion_benchmark(runs_dir: str | Path, *, preset: str = "default", variants: Sequence[str] | None = None,
                         seeds: Sequence[int] = range(5), steps: int = 600, archs: str | Sequence[str] = ARCHS,
                         n_jobs: int = 2, progress: bool = True, **overrides) -> pd.DataFrame:
    """Train (or reuse) every variant for every seed on every architecture with ``cen_lab.sweep``.

    ``variants`` are names from ``VARIANTS`` (the default: all of them), ``SCENARIOS`` or ``REFERENCE_SWITCHES``;
    ``archs`` are ``model.arch`` values (default: both, plain first), one sweep each, each in its own run
    folders. Unknown names are errors.

    Returns
    -------
    pandas.DataFrame
        The sweep tables one after the other, with ``arch``, ``preset``, ``variant``, ``seed``, ``path``,
        ``status`` and ``seconds``; also written to ``runs_dir/sweep.parquet`` (over the last sweep's own).
    """
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [v for v in names if v not in _CATALOGUE]
    if unknown:
        raise ValueError(f"unknown fusion variant {unknown[0]!r}; choose from {list(_CATALOGUE)}")
    archs = [archs] if isinstance(archs, str) else list(dict.fromkeys(archs))
    if not archs or any(a not in ARCHS for a in archs):
        raise ValueError(f"archs must be some of {list(ARCHS)}, got {archs}")
    if "model__arch" in overrides or "model.arch" in overrides:
        raise ValueError("choose the architecture with " + said("archs=[...]", "--arch") + ", not with a model.arch override")
    bundles = {v: _CATALOGUE[v][1] for v in names}
    tables = []
    for arch in archs:
        table = sweep(fusion_base(preset, steps, model__arch=arch, **overrides), {"seed": list(seeds)}, runs_dir,
                      variants=bundles, backend="loky" if n_jobs > 1 else "serial", n_jobs=n_jobs, progress=progress)
        tables.append(table.assign(arch=arch, preset=preset))
    out = pd.concat(tables, ignore_index=True)
    if len(tables) > 1:  # each sweep wrote its own table to runs_dir/sweep.parquet: keep the whole benchmark's
        with atomic_path(Path(runs_dir) / "sweep.parquet") as tmp:
            out.to_parquet(tmp, index=False)
    return out


def completed_runs(table: pd.DataFrame) -> Iterator[tuple[Any, Any, dict[str, str]]]:
    """``(row, run, about)`` for every completed (or reused) run of a benchmark table, where ``about`` holds the
    run's ``arch`` (from its own config) and ``regime`` (``regime_text``; preset from the table's ``preset``
    column, ``unknown`` without one)."""
    from .regime import regime_of, regime_text

    for row in table[table["status"].isin(["complete", "skipped"])].itertuples(index=False):
        run = load_run(row.path)
        preset = str(getattr(row, "preset", "unknown"))
        yield row, run, {"arch": run.config.model.arch, "regime": regime_text(regime_of([run.config], preset))}


def runs_of_seed(table: pd.DataFrame, seed: int | None = None, variants: Sequence[str] | None = None,
                 arch: str | None = None) -> dict:
    """variant -> Run for one seed (default: the smallest) and one architecture (default: the table's first) of a
    benchmark table, for looking at the dynamics."""
    done = table[table["status"].isin(["complete", "skipped"])]
    if "arch" in done:
        arch = done["arch"].iloc[0] if arch is None else arch
        done = done[done["arch"] == arch]
    elif arch is not None:
        raise ValueError("this table has no arch column; it comes from one architecture")
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


def per_run_scores(table: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """The final validation score of every prediction of every completed run in a benchmark table:
    ``arch, variant, seed, task, branch, metric, value, params, seconds, regime`` (``branch`` a stream name or
    ``ensemble``, ``metric`` the task's, see ``cen_lab.network.tasks.TaskMetrics``; ``arch`` and ``regime`` from the
    run's config). ``extra`` names more metrics of the same predictions (``psnr``, ``ssim`` of translation), each
    a column of its final values (NaN where a run did not log it)."""
    from ..network.tasks import TaskMetrics
    from .training import prediction_names

    rows = []
    for row, run, about in completed_runs(table):
        val = run.metrics[run.metrics["split"] == "val"]
        last = val[val["step"] == val["step"].max()].set_index("name")["value"]
        params = sum(p.numel() for p in run.load_model().parameters())
        streams = list(dict.fromkeys(o.rsplit("/", 1)[-1] for o in run.outputs))
        for task, names in prediction_names(run.tasks, streams).items():
            metric = TaskMetrics.METRIC[task]
            for branch, name in zip(streams + ["ensemble"], names):
                rows.append({"arch": about["arch"], "variant": row.variant, "seed": row.seed, "task": task,
                             "branch": branch, "metric": metric, "value": float(last[f"{metric}/{name}"]),
                             "params": params, "seconds": float(run.manifest.get("train_seconds", float("nan"))),
                             "regime": about["regime"],
                             **{e: float(last.get(f"{e}/{name}", float("nan"))) for e in extra}})
    return pd.DataFrame(rows, columns=["arch", "variant", "seed", "task", "branch", "metric", "value", "params",
                                       "seconds", "regime", *extra])


def by_arch(frame: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """``(arch, rows)`` per architecture of a benchmark frame, in order of appearance (what every comparison and
    every figure panel is taken within); one group with arch None for a frame without an ``arch`` column."""
    if "arch" not in frame:
        return [(None, frame)]
    return list(frame.groupby("arch", sort=False))


def _first(sub: pd.DataFrame, column: str):
    return sub[column].iloc[0] if column in sub else None


def compute_fusion_results(scores: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per (architecture, variant, task, prediction branch) from ``per_run_scores`` of a benchmark table.

    Returns
    -------
    pandas.DataFrame
        ``arch, variant, family, task, branch, metric`` (``miou``, ``accuracy``, ``mae`` or ``f1``), ``n_seeds,
        mean, std, ci_low, ci_high`` (t interval across seeds at ``level``), ``params`` (trainable parameters),
        ``seconds`` (mean wall time of the training loop per run, from the run manifests), ``regime`` (of the
        variant's runs), in architecture and variant order, then the branches in output order with ``ensemble``
        last. Failed runs are left out (``n_seeds`` shows it).
    """
    out = []
    for arch, df in by_arch(scores):
        for (variant, task, branch), sub in df.groupby(["variant", "task", "branch"], sort=False):
            v = sub["value"].to_numpy()
            low, high = _interval(v, level)
            timed = sub["seconds"].dropna()
            out.append({"arch": arch, "variant": variant,
                        "family": _CATALOGUE[variant][0] if variant in _CATALOGUE else "other",
                        "task": task, "branch": branch, "metric": sub["metric"].iloc[0], "n_seeds": len(v),
                        "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                        "ci_low": low, "ci_high": high, "params": int(sub["params"].iloc[0]),
                        "seconds": float(timed.mean()) if len(timed) else float("nan"),
                        "regime": _first(sub, "regime")})
    return pd.DataFrame(out)


def fusion_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (architecture, variant, task): the ensemble (the variant's final prediction) with its interval,
    each branch's mean, parameters, training time and regime; architectures and tasks in order of appearance,
    best ensemble first within each (highest score, lowest MAE)."""
    results = results if "arch" in results else results.assign(arch=None)
    keys = ["arch", "variant", "task"]
    ens = results[results["branch"] == "ensemble"].set_index(keys)
    branches = results[results["branch"] != "ensemble"].pivot(index=keys, columns="branch", values="mean")
    columns = ["family", "metric", "n_seeds", "mean", "ci_low", "ci_high", "params", "seconds"]
    out = ens[columns].join(branches.add_prefix("branch/"))
    if "regime" in ens:
        out = out.join(ens["regime"])  # the long text last
    out = out.reset_index()
    key = np.where(out["metric"].isin(LOWER_IS_BETTER), out["mean"], -out["mean"])
    # architectures, then tasks, in order of appearance
    order = np.lexsort((key, pd.factorize(out["task"])[0], pd.factorize(out["arch"], use_na_sentinel=False)[0]))
    return out.iloc[order].reset_index(drop=True)


def compare_to(scores: pd.DataFrame, reference: str = "cen", level: float = 0.95) -> pd.DataFrame:
    """Ensemble score of ``reference`` minus each other variant's (means over seeds) with a Welch t interval,
    per architecture and task that both predict (never across architectures).

    ``scores`` is ``per_run_scores`` of a benchmark table. Rows: ``arch, variant, task, metric, difference,
    ci_low, ci_high, verdict, regime`` (``better`` / ``worse`` for the reference when the interval excludes 0,
    else ``no clear difference``; for MAE a negative difference is better; ``regime`` that of the reference's
    runs, the variant's differing by what its name says).
    """
    ens = scores[scores["branch"] == "ensemble"]
    if reference not in set(ens["variant"]):
        raise ValueError(f"no completed runs of the reference variant {reference!r}")
    rows = []
    for arch, of_arch in by_arch(ens):
        for task, by_task in of_arch.groupby("task", sort=False):
            per_seed = {v: sub["value"].to_numpy() for v, sub in by_task.groupby("variant", sort=False)}
            if reference not in per_seed:
                continue
            ref, sign = per_seed[reference], -1.0 if by_task["metric"].iloc[0] in LOWER_IS_BETTER else 1.0
            regime = _first(by_task[by_task["variant"] == reference], "regime")
            for variant, v in per_seed.items():
                if variant == reference:
                    continue
                low = high = float("nan")  # no interval from fewer than two seeds, or when both sides never vary
                if len(ref) > 1 and len(v) > 1 and (np.ptp(ref) > 0 or np.ptp(v) > 0):
                    ci = stats.ttest_ind(ref, v, equal_var=False).confidence_interval(level)
                    low, high = float(ci.low), float(ci.high)
                better, worse = (low > 0, high < 0) if sign > 0 else (high < 0, low > 0)
                verdict = "better" if better else "worse" if worse else "no clear difference"
                rows.append({"arch": arch, "variant": variant, "task": task, "metric": by_task["metric"].iloc[0],
                             "difference": float(ref.mean() - v.mean()), "ci_low": low, "ci_high": high,
                             "verdict": verdict, "regime": regime})
    return pd.DataFrame(rows, columns=["arch", "variant", "task", "metric", "difference", "ci_low", "ci_high",
                                       "verdict", "regime"])


def final_exchange_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """``arch, variant, seed, exchange_ratio``: the portion of channels exchanged at the last logged step of every
    completed run of a benchmark table."""
    from .analysis import compute_run_summary

    rows = []
    for row, run, about in completed_runs(table):
        summary = compute_run_summary({row.variant: run}).iloc[0]
        rows.append({"arch": about["arch"], "variant": row.variant, "seed": row.seed,
                     "exchange_ratio": summary.get("exchange_ratio")})
    return pd.DataFrame(rows, columns=["arch", "variant", "seed", "exchange_ratio"])


def compare_switches(scores: pd.DataFrame, exchange: pd.DataFrame | None = None, level: float = 0.95) -> pd.DataFrame:
    """What each reference switch changes: its ensemble score minus that of the variant it changes
    (``SWITCH_BASES``), with a Welch t interval across seeds, per architecture, and with ``exchange``
    (``final_exchange_ratios``) the same for the final exchange ratio.

    Rows: ``arch, switch, base, task, metric, difference, ci_low, ci_high, verdict`` (``better`` / ``worse`` for
    the switch's score, ``higher`` / ``lower`` for its exchange ratio, when the interval excludes 0).
    """
    rows = []
    for arch, of_arch in by_arch(scores):
        ex = None if exchange is None else exchange if arch is None or "arch" not in exchange else \
            exchange[exchange["arch"] == arch]
        for switch, base in SWITCH_BASES.items():
            pair = of_arch[of_arch["variant"].isin([switch, base])]
            if not {switch, base} <= set(pair["variant"]):
                continue
            rows.append(compare_to(pair, reference=switch, level=level).assign(switch=switch, base=base))
            if ex is not None:
                a = ex.loc[ex["variant"] == switch, "exchange_ratio"].dropna().to_numpy(float)
                b = ex.loc[ex["variant"] == base, "exchange_ratio"].dropna().to_numpy(float)
                if not (len(a) and len(b)):  # no exchange ratios of this pair
                    continue
                low = high = float("nan")
                if len(a) > 1 and len(b) > 1 and (np.ptp(a) > 0 or np.ptp(b) > 0):
                    with warnings.catch_warnings():  # one side may be constant (every penalised channel exchanged)
                        warnings.simplefilter("ignore", RuntimeWarning)
                        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
                    low, high = float(ci.low), float(ci.high)
                verdict = "higher" if low > 0 else "lower" if high < 0 else "no clear difference"
                rows.append(pd.DataFrame([{"arch": arch, "switch": switch, "base": base, "task": "-",
                                           "metric": "exchange_ratio", "difference": float(a.mean() - b.mean()),
                                           "ci_low": low, "ci_high": high, "verdict": verdict}]))
    if not rows:
        raise ValueError(f"no completed runs of a switch and its base: {SWITCH_BASES}")
    out = pd.concat(rows, ignore_index=True)
    return out[["arch", "switch", "base", "task", "metric", "difference", "ci_low", "ci_high", "verdict"]]
