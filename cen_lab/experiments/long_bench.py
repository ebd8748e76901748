"""The long-regime benchmark: the paper's lam 2e-4 over a budget long enough to settle, on data that does not run out.

The ``long`` preset trains the default network and optimiser (Adam, lr 5e-3, cosine decay over the budget) for
10,000 steps at the paper's ``lam = 2e-4``, on a pool of 65,536 fresh training scenes (``data.train_pool``;
``cen_lab.data.pool``), so that each scene is seen about 5 times instead of 625 times, and validates on the
canonical split. ``run_long_benchmark`` trains (or reuses, or resumes) its variants over architectures, lams and
seeds with gradients logged:

- ``pool``: the ``long`` preset;
- ``finite``: the same on the canonical 512 training scenes (what memorised in the earlier 10,000-step runs);
- ``default``: the 600-step default preset (``regime_config``'s runs, shared with ``cen-lab bench-regime``), the
  reference the long runs are compared with.

``cascade`` reads each run's portion of penalised gammas under the threshold at fractions of its budget;
``long_summary`` aggregates runs per variant, architecture and lam with t intervals over seeds. The measured results
are in the README; ``cen-lab bench-long`` prints and writes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .._util.atomic import atomic_path
from ..config import ARCHS, ExperimentConfig
from ..runs.reader import load_run
from .fusion import _interval
from .regime_bench import per_run_regime, regime_config
from .sweeps import sweep

__all__ = ["LONG_LAMS", "DATA_VARIANTS", "FRACTIONS", "size_overrides", "runs_by_variant", "variant_label", "prepare_pool",
           "run_long_benchmark", "cascade", "long_per_run", "long_summary"]

LONG_LAMS = (2e-4, 2e-3)  # the paper's lam, and one a decade up
DATA_VARIANTS = ("pool", "finite", "default")
FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8)  # of the budget, where the cascade is read


def size_overrides(size: str = "long") -> dict[str, Any]:
    """The overrides of ``run_long_benchmark`` for a size: none for ``"long"``; for ``"tiny"``, the tiny preset's
    scenes and network, 16 steps (9 logged states: enough for a forecast) and a 64-scene pool (a smoke test of the
    machinery: its numbers carry no evidence)."""
    if size == "long":
        return {}
    if size != "tiny":
        raise ValueError(f"size must be 'long' or 'tiny', got {size!r}")
    tiny = ExperimentConfig.preset("tiny")
    scene = {f"data.scene.{k}": v for k, v in dataclasses.asdict(tiny.data.scene).items()}
    return {"data.source": "generate", **scene, "data.train_pool": 64, "model.widths": list(tiny.model.widths),
            "model.strides": list(tiny.model.strides), "train.steps": 16,
            "train.batch_size": tiny.train.batch_size, "train.ckpt_every": tiny.train.ckpt_every,
            "log.every": tiny.log.every, "log.eval_every": tiny.log.eval_every}


def runs_by_variant(table: pd.DataFrame) -> dict[str, Any]:
    """``{label: Run}`` of the complete runs of a ``run_long_benchmark`` table, labelled by variant (and by
    architecture, lam and seed where the table holds several), in the table's order."""
    done = table[table["status"].isin(["complete", "skipped"])]
    several = [c for c in ("arch", "seed") if done[c].nunique() > 1]
    out = {}
    for row in done.itertuples(index=False):
        label = row.preset + "".join(f", {c} {getattr(row, c)}" for c in several)
        out[label] = load_run(row.path)
    return out


def variant_label(data: str, lam: float | None = None) -> str:
    """The ``preset`` column of the benchmark's tables: ``long lam 0.0002``, ``long finite lam 0.002``, ``default``."""
    if data == "default":
        return "default"
    return f"long{'' if data == 'pool' else ' finite'} lam {lam:g}"


def prepare_pool(config: ExperimentConfig | None = None, n_jobs: int = 2, progress: bool = True) -> Path:
    """Build the pool of ``config`` (default: the ``long`` preset) in the cache when absent (``n_jobs`` processes),
    before any worker needs it; returns its path."""
    from ..data.pool import build_pool, pool_path, source_generator

    d = (config or ExperimentConfig.preset("long")).data
    params = source_generator(d.source, d.scene)
    path = pool_path(params, d.train_pool)
    if not path.is_file():
        build_pool(params, d.train_pool, n_jobs=n_jobs, progress=progress)
    return path


def run_long_benchmark(runs_dir: str | Path, *, data: Sequence[str] = DATA_VARIANTS, archs: Sequence[str] = ARCHS,
                       lams: Sequence[float] = LONG_LAMS, seeds: Sequence[int] = range(3), n_jobs: int = 2,
                       progress: bool = True, train: bool = True,
                       overrides: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Train, reuse or resume every run of the chosen variants in ``runs_dir``; returns the sweep tables with
    ``data``, ``arch``, ``lam`` and ``preset`` (``variant_label``) columns (also ``runs_dir/long_sweep.parquet``).
    Complete runs are reused and incomplete ones resumed, so the command can be stopped and run again.
    ``train=False`` trains nothing: the table lists the complete runs as ``skipped`` and the others as
    ``missing`` (to read what a benchmark still training elsewhere has finished). ``overrides`` (dotted keys) change
    every variant's config alike (the tests shrink the runs with them)."""
    unknown = [d for d in data if d not in DATA_VARIANTS]
    if unknown or not data:
        raise ValueError(f"data variants must be some of {list(DATA_VARIANTS)}, got {list(data)}")
    if not archs or any(a not in ARCHS for a in archs):
        raise ValueError(f"archs must be some of {list(ARCHS)}, got {list(archs)}")
    if any(not lam > 0 for lam in lams) or not lams:
        raise ValueError(f"lams must be positive, got {list(lams)}")
    overrides = dict(overrides or {})
    long = ExperimentConfig.preset("long").override(overrides)
    if "pool" in data and train:
        prepare_pool(long, n_jobs=n_jobs, progress=progress)
    run = _sweep if train else _existing
    tables = []
    # one sweep over every long variant and architecture, so that both workers stay busy across them; a variant's
    # runs are named long-<arch>-<grid point> (the pool) and long-finite-<arch>-<grid point>
    bundles = {f"{'' if d == 'pool' else 'finite-'}{arch}": {"model.arch": arch,
                                                             "data.train_pool": long.data.train_pool if d == "pool" else 0}
               for d in data if d != "default" for arch in archs}
    if bundles:
        t = run(long, {"train.lam": list(lams), "seed": list(seeds)}, runs_dir,
                bundles, n_jobs, progress)
        t["data"] = ["finite" if v.startswith("finite-") else "pool" for v in t["variant"]]
        t["arch"] = [v.removeprefix("finite-") for v in t["variant"]]
        t["lam"] = t["train.lam"].astype(float)
        t["preset"] = [variant_label(d, lam) for d, lam in zip(t["data"], t["lam"])]
        tables.append(t.drop(columns=["variant", "train.lam"]))
    if "default" in data:
        for arch in archs:
            default = regime_config("default", arch).override({**overrides, "data.train_pool": 0})  # canonical data
            t = run(default, {"seed": list(seeds)}, runs_dir, None, n_jobs, progress)
            tables.append(t.assign(data="default", arch=arch, lam=ExperimentConfig().override(overrides).train.lam,
                                   preset="default"))
    out = pd.concat(tables, ignore_index=True)
    if train:
        with atomic_path(Path(runs_dir) / "long_sweep.parquet") as tmp:
            out.to_parquet(tmp, index=False)
    return out


def _sweep(base, grid, runs_dir, variants, n_jobs, progress) -> pd.DataFrame:
    return sweep(base, grid, runs_dir, variants=variants, backend="loky" if n_jobs > 1 else "serial", n_jobs=n_jobs,
                 progress=progress)


def _existing(base, grid, runs_dir, variants, n_jobs, progress) -> pd.DataFrame:
    """The table ``sweep`` would return, from what ``runs_dir`` holds now: ``skipped`` (complete) or ``missing``."""
    from .sweeps import _already_complete, grid_points, run_name

    rows = []
    for variant, overrides in (variants or {None: {}}).items():
        for point in grid_points(grid):
            name = run_name(base.name if variant is None else f"{base.name}-{variant}", point)
            path = Path(runs_dir) / name
            done = _already_complete(path, base.override({**overrides, **point, "name": name}))
            rows.append({**({} if variant is None else {"variant": variant}), **point, "name": name, "path": str(path),
                         "status": "skipped" if done else "missing", "error": None, "seconds": 0.0})
    return pd.DataFrame(rows)


def cascade(run, fractions: Sequence[float] = FRACTIONS) -> dict[str, float]:
    """The portion of penalised gammas under the threshold at each fraction of the run's budget (the training log's
    ``sparsity/below_threshold`` at the last logged step at or before ``fraction * steps``), as
    ``{"at 10%": ..., ...}``."""
    m = run.metrics
    curve = m[(m["split"] == "train") & (m["name"] == "sparsity/below_threshold")].sort_values("step")
    steps, values = curve["step"].to_numpy(), curve["value"].to_numpy(float)
    total = int(run.manifest.get("total_steps") or run.config.train.steps)
    out = {}
    for f in fractions:
        i = np.searchsorted(steps, f * total, side="right") - 1
        out[f"at {f:.0%}"] = float(values[i]) if i >= 0 else float("nan")
    return out


def long_per_run(table: pd.DataFrame) -> pd.DataFrame:
    """``per_run_regime``'s row of each completed run (diagnosis, scores, output gaps) with its ``data`` and ``lam``,
    the cascade (``cascade``), and the weakest branch's final score."""
    per_run = per_run_regime(table)
    if per_run.empty:
        return per_run
    keys = table[["path", "data", "lam"]].astype({"path": str})
    per_run = per_run.merge(keys, on="path", how="left")
    per_run = per_run.join(pd.DataFrame([cascade(load_run(p)) for p in per_run["path"]], index=per_run.index))
    branch = [c for c in per_run.columns if c.startswith("score/") and not c.endswith("ensemble")]
    per_run["score/weakest branch"] = per_run[branch].min(axis=1)
    return per_run


def long_summary(per_run: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per variant, architecture and lam: runs, states, the ensemble's and the weakest branch's final score, the
    final portion under the threshold and the importance correlation of the crossing order (means with ``level``
    t intervals over seeds), and the mean portion at each fraction of the budget."""
    rows = []
    for (label, arch), sub in per_run.groupby(["preset", "arch"], sort=False):
        row = {"variant": label, "arch": arch, "runs": len(sub),
               "states": ", ".join(f"{k} x{v}" for k, v in sub["state"].value_counts().items()),
               "settled runs": int(sub["settled"].sum())}
        for name, col in (("ensemble", "score/ensemble"), ("weakest branch", "score/weakest branch"),
                          ("final portion", "final"), ("spearman", "rho")):
            values = sub[col].to_numpy(float)
            values = values[np.isfinite(values)]
            low, high = _interval(values, level)
            row.update({name: float(values.mean()) if len(values) else float("nan"), f"{name} low": low,
                        f"{name} high": high})
        row.update({c: float(sub[c].mean()) for c in sub.columns if c.startswith("at ")})
        row["regime"] = f"{sub['regime'].iloc[0]}; {len(sub)} seeds"
        rows.append(row)
    return pd.DataFrame(rows)
