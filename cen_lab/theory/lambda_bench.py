"""Validation of ``predict_exchange`` on held-out lambdas and seeds: ``cen-lab bench-lambda``.

For every architecture and budget (``CASES``): probes (``probe_steps`` of the budget's training at each of
``PROBE_LAMS``, seed ``probe_seed``, gradients logged), and full runs at lambdas and seeds the probes never saw.
Every full run's final portion of penalised gammas under the threshold is compared with the prediction from all
probes (``predicted``), from the one probe at ``SINGLE_LAM`` alone (``single``), and with plain Theorem 1's. ``lambda_summary`` gives the mean absolute error over the held-out runs with a
t interval, the coverage of the prediction's intervals, and whether the goal (mean absolute error <= 0.05) holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .._util.atomic import atomic_path
from ..config import ARCHS, ExperimentConfig, dotted
from ..experiments.diagnosis import diagnose
from ..experiments.fusion import _interval
from ..experiments.sweeps import sweep
from ..experiments.training import train
from ..runs.reader import Run, load_run
from .lambda_choice import predict_exchange

__all__ = ["CASES", "GOAL", "PROBE_LAMS", "SINGLE_LAM", "lambda_config", "probe_config", "obtain_probe", "final_portion", "run_lambda_benchmark",
           "lambda_summary", "write_summary", "EXAMPLE_SIZES", "LambdaExample", "lambda_example"]

PROBE_LAMS = (7e-4, 2e-3, 7e-3)  # none of them a held-out lambda
SINGLE_LAM = 2e-3  # the default's lam: the one probe a user would run first
GOAL = 0.05  # mean absolute error of the predicted final portion on held-out lambdas
# budget -> (probe steps, held-out lambdas, held-out seeds); the paper's 2e-4 at a budget where it can settle
CASES = {600: (150, (5e-4, 1e-3, 3e-3, 5e-3), (1, 2)), 10_000: (300, (2e-4,), (1,))}


def lambda_config(preset: str = "default", arch: str = "plain", budget: int = 600, **overrides) -> ExperimentConfig:
    """The full run of the benchmark: ``preset`` on ``arch`` for ``budget`` steps, named
    ``lambda-<preset>-<arch>-T<budget>`` (no gradients: only the final gammas are compared)."""
    base = {"model.arch": arch, "train.steps": budget, "log.grads": False,
            "name": f"lambda-{preset}-{arch}-T{budget}"}
    base.update(dotted(overrides))
    return ExperimentConfig.preset(preset).override(base)


def probe_config(preset: str = "default", arch: str = "plain", budget: int = 600, lam: float = 2e-3,
                 seed: int = 0, **overrides) -> ExperimentConfig:
    """The probe: the full run's config at ``lam`` and ``seed`` with gradients logged, named
    ``probe-<preset>-<arch>-T<budget>-lam<lam>-s<seed>`` (it is trained with ``stop_at``)."""
    return lambda_config(preset, arch, budget, **overrides).override(
        {"train.lam": lam, "seed": seed, "log.grads": True, "name": f"probe-{preset}-{arch}-T{budget}-lam{lam:g}-s{seed}"})


def obtain_probe(cfg: ExperimentConfig, probe_steps: int, runs_dir: str | Path, progress: bool = True
                 ) -> tuple[Run, float]:
    """Train the probe ``cfg`` for ``probe_steps`` steps in ``runs_dir/<cfg.name>``, or reuse it when it is there
    with at least that many steps. Returns the run and the seconds its training took (NaN when reused)."""
    path = Path(runs_dir) / cfg.name
    if (path / "manifest.json").exists():
        run = load_run(path)
        if run.config == cfg and run.manifest["last_step"] >= probe_steps:
            return run, float("nan")
    start = time.perf_counter()
    run = train(cfg, path, overwrite=True, progress=progress, stop_at=probe_steps)
    return run, time.perf_counter() - start


def final_portion(run: Run) -> float:
    """The portion of penalised gammas under the run's threshold at its last logged step."""
    g = run.gammas[run.gammas["penalised"]]
    last = g[g["step"] == g["step"].max()]
    return float((last["gamma"].abs() < np.float32(run.threshold)).mean())


def run_lambda_benchmark(runs_dir: str | Path, *, preset: str = "default", archs: Sequence[str] = ARCHS,
                         cases: dict[int, tuple[int, Sequence[float], Sequence[int]]] | None = None,
                         probe_lams: Sequence[float] = PROBE_LAMS, single_lam: float = SINGLE_LAM,
                         probe_seed: int = 0, n_jobs: int = 2, progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) the probes and the held-out full runs in ``runs_dir``, predict, and compare.

    Returns one row per held-out run: ``arch, budget, probe_steps, probe_lams, lam, seed, predicted, low, high,
    predicted_state, single, single_low, single_high, theorem1, actual, abs_error, single_abs_error,
    theorem1_abs_error, in_interval, diagnosis, probe_seconds (all probes, NaN when reused), full_seconds,
    regime``; also written to ``runs_dir/lambda_validation.csv``.
    """
    cases = CASES if cases is None else cases
    archs = list(dict.fromkeys(archs))
    if not archs or any(a not in ARCHS for a in archs):
        raise ValueError(f"archs must be some of {list(ARCHS)}, got {archs}")
    for budget, (probe_steps, lams, seeds) in cases.items():
        if probe_steps >= budget:
            raise ValueError(f"the probe ({probe_steps} steps) must be shorter than the budget ({budget})")
        if probe_seed in seeds:
            raise ValueError(f"seed {probe_seed} is the probe's; held-out seeds must differ")
        if set(probe_lams) & set(lams):
            raise ValueError(f"probe lambdas {sorted(set(probe_lams) & set(lams))} are held-out lambdas too")
    if single_lam not in probe_lams:
        raise ValueError(f"single_lam {single_lam} must be one of probe_lams {list(probe_lams)}")
    rows = []
    for arch in archs:
        for budget, (probe_steps, lams, seeds) in cases.items():
            probes = {lam: obtain_probe(probe_config(preset, arch, budget, lam, probe_seed), probe_steps, runs_dir,
                                        progress) for lam in probe_lams}
            probe_seconds = float(sum(sec for _, sec in probes.values()))
            prediction = predict_exchange([run for run, _ in probes.values()], list(lams), budget)
            fit = next(f for f in prediction.fits if f.lam == probes[single_lam][0].lam_per_step)  # fitted once
            single = predict_exchange(fit, list(lams), budget).table.set_index("lam")
            table = sweep(lambda_config(preset, arch, budget), {"train.lam": list(lams), "seed": list(seeds)},
                          runs_dir, backend="loky" if n_jobs > 1 else "serial", n_jobs=n_jobs, progress=progress)
            pred = prediction.table.set_index("lam")
            for r in table.to_dict("records"):
                if r["status"] not in ("complete", "skipped"):
                    continue
                run = load_run(r["path"])
                lam = float(r["train.lam"])
                at = int(np.argmin(np.abs(pred.index.to_numpy() - lam)))
                p, one = pred.iloc[at], single.iloc[at]
                actual = final_portion(run)
                rows.append({"arch": arch, "budget": budget, "probe_steps": probe_steps,
                             "probe_lams": ", ".join(f"{x:g}" for x in probe_lams),
                             "lam": lam, "seed": int(r["seed"]), "predicted": p["predicted"], "low": p["low"],
                             "high": p["high"], "predicted_state": p["state"], "single": one["predicted"],
                             "single_low": one["low"], "single_high": one["high"], "theorem1": p["theorem1"],
                             "actual": actual, "abs_error": abs(p["predicted"] - actual),
                             "single_abs_error": abs(one["predicted"] - actual),
                             "theorem1_abs_error": abs(p["theorem1"] - actual),
                             "in_interval": bool(p["low"] <= actual <= p["high"]), "diagnosis": diagnose(run).state,
                             "probe_seconds": probe_seconds, "full_seconds": float(r["seconds"]),
                             "regime": prediction.regime})
    out = pd.DataFrame(rows)
    with atomic_path(Path(runs_dir) / "lambda_validation.csv") as tmp:
        out.to_csv(tmp, index=False)
    return out


def lambda_summary(validation: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per architecture and budget: held-out runs, the mean absolute error of the prediction from all probes, from
    the single probe and of plain Theorem 1 (with ``level`` t intervals over runs), the largest error, the
    intervals' coverage, and whether the goal (mean absolute error <= ``GOAL``, all probes) holds."""
    rows = []
    for (arch, budget), sub in validation.groupby(["arch", "budget"], sort=False):
        err, th = sub["abs_error"].to_numpy(float), sub["theorem1_abs_error"].to_numpy(float)
        one = sub["single_abs_error"].to_numpy(float)
        lo, hi = _interval(err, level)
        tlo, thi = _interval(th, level)
        slo, shi = _interval(one, level)
        rows.append({"arch": arch, "budget": int(budget), "probe steps": int(sub["probe_steps"].iloc[0]),
                     "probe lambdas": sub["probe_lams"].iloc[0],
                     "probes' steps over the budget": float(sub["probe_steps"].iloc[0] * len(sub["probe_lams"].iloc[0]
                                                                                    .split(",")) / budget),
                     "held-out runs": len(sub), "lambdas": ", ".join(f"{x:g}" for x in sorted(sub["lam"].unique())),
                     "mean abs error": float(err.mean()), "error low": lo, "error high": hi,
                     "max abs error": float(err.max()),
                     "single probe mean abs error": float(one.mean()), "single low": slo, "single high": shi,
                     "theorem1 mean abs error": float(th.mean()), "theorem1 low": tlo, "theorem1 high": thi,
                     "coverage": f"{int(sub['in_interval'].sum())} of {len(sub)}",
                     f"goal: mean error <= {GOAL}": bool(err.mean() <= GOAL),
                     "goal met by the interval's upper end": bool(hi <= GOAL),
                     "regime": sub["regime"].iloc[0]})
    return pd.DataFrame(rows)


def write_summary(validation: pd.DataFrame, runs_dir: str | Path) -> pd.DataFrame:
    """``lambda_summary`` written to ``runs_dir/lambda_summary.csv``."""
    summary = lambda_summary(validation)
    with atomic_path(Path(runs_dir) / "lambda_summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    return summary


# the choose_lambda notebook's sizes: "default" (the README's regime), "tiny" a smoke test (no evidence)
EXAMPLE_SIZES: dict[str, dict] = {
    "default": {"budget": 600, "probe_steps": 150, "probe_lams": PROBE_LAMS, "held_out": (5e-4, 1e-3, 3e-3, 5e-3),
                "seeds": (1,), "grid": tuple(np.geomspace(1e-4, 1e-2, 11)), "no_sparsity_lam": 1e-4},
    "tiny": {"budget": 40, "probe_steps": 24, "probe_lams": (5e-4, 2e-3), "held_out": (1e-3,), "seeds": (1,),
             "grid": (1e-4, 1e-3, 1e-2), "no_sparsity_lam": 1e-5},
}


@dataclass
class LambdaExample:
    """What ``notebooks/choose_lambda.ipynb`` shows: three diagnosed runs, a prediction, held-out runs."""

    runs: dict[str, Run]  # "collapsing" (the collapse preset), "no sparsity" (a tiny lambda), "good" (the default)
    diagnoses: dict[str, Any]
    comparison: pd.DataFrame  # compare_diagnoses of the three
    prediction: Any  # ExchangePrediction from the probes
    validation: pd.DataFrame  # lam, seed, actual: the held-out full runs' final portions
    regime: pd.DataFrame  # setting, value


def lambda_example(preset: str = "default", arch: str = "plain", runs_dir: str | Path = "runs/lambda",
                   n_jobs: int = 2, progress: bool = True) -> LambdaExample:
    """Train (or reuse, in ``runs_dir``; the same runs as ``cen-lab bench-lambda`` where the sizes agree) the
    notebook's runs at the size ``EXAMPLE_SIZES[preset]`` and diagnose, probe and predict."""
    from ..config import COLLAPSE_TRAIN
    from ..experiments.diagnosis import compare_diagnoses, diagnose_runs
    from ..experiments.regime import evidence, optimiser

    if preset not in EXAMPLE_SIZES:
        raise ValueError(f"preset must be one of {sorted(EXAMPLE_SIZES)}, got {preset!r}")
    size = EXAMPLE_SIZES[preset]
    budget, seeds = size["budget"], list(size["seeds"])
    base = lambda_config(preset, arch, budget)
    backend = "loky" if n_jobs > 1 else "serial"
    grads = {"log.grads": True}  # the diagnosis's importance needs them
    variants = {"collapsing": {**COLLAPSE_TRAIN, **grads}, "no-sparsity": {"train.lam": size["no_sparsity_lam"], **grads},
                "good": grads}
    three = sweep(base, {"seed": seeds[:1]}, runs_dir, variants=variants, backend=backend, n_jobs=n_jobs,
                  progress=progress)
    runs = {v.replace("-", " "): load_run(p) for v, p in zip(three["variant"], three["path"])}
    diagnoses = diagnose_runs(runs)
    probes = [obtain_probe(probe_config(preset, arch, budget, lam), size["probe_steps"], runs_dir, progress)[0]
              for lam in size["probe_lams"]]
    prediction = predict_exchange(probes, list(size["grid"]), budget)
    held = sweep(base, {"train.lam": list(size["held_out"]), "seed": seeds}, runs_dir, backend=backend,
                 n_jobs=n_jobs, progress=progress)
    validation = pd.DataFrame({"lam": held["train.lam"].astype(float), "seed": held["seed"],
                               "actual": [final_portion(load_run(p)) for p in held["path"]]})
    rows = {"preset": preset, "architecture": arch, "budget (steps)": budget,
            "probes": f"{size['probe_steps']} steps at lam {', '.join(f'{x:g}' for x in size['probe_lams'])}, seed 0",
            "held-out runs": f"lam {', '.join(f'{x:g}' for x in size['held_out'])}; seeds {seeds}",
            "optimiser": optimiser(runs["good"].config), "lam of the good run": f"{runs['good'].config.train.lam:g}",
            "evidence": evidence(preset)}
    regime = pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]})
    return LambdaExample(runs, diagnoses, compare_diagnoses(diagnoses), prediction, validation, regime)
