"""Lower precision as an opt-in: the training forward pass under bfloat16 autocast, and what it changes.

``train.precision = "bf16"`` runs the forward pass of every training step under ``torch.autocast`` with
bfloat16: convolutions (and the other ops autocast lists) compute in bfloat16, while parameters, optimizer
state, the L1 penalty, the logged gammas and the validation passes stay fp32. On CPUs with native bfloat16
dot products (AVX512-BF16 or AMX; ``bf16_native``) the step is faster; elsewhere it runs, emulated and slower,
with a warning. The default stays ``"fp32"``.

bfloat16 keeps 8 bits of mantissa, so the activations and the gradients through them carry relative errors of
about 0.4%. Whether that moves the quantities cen_lab reports is measured, not assumed:
``compare_precisions`` pairs runs that differ only in precision (same seed, same initialisation, same batches)
and reports how far the final gammas move against their spread across seeds, and the difference in final
validation scores with a Welch interval. ``make bench`` (part ``theorem``) runs it on the Theorem 1
networks; the numbers are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from scipy import stats

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "autocast", "bf16_native", "compare_precisions", "name_suffix"]

DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # train.precision -> autocast dtype (None: no autocast)


def name_suffix(precision: str) -> str:
    """What a run name carries for ``train.precision``: ``""`` for fp32, else ``"-bf16"``, so that experiment
    helpers (``theorem_base``, ``fusion_base``) never reuse an fp32 run for a bf16 one, or the reverse."""
    return "" if precision == "fp32" else f"-{precision}"


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (a CUDA device that supports it, or a CPU whose oneDNN
    has bfloat16 kernels: AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def autocast(device: torch.device, precision: str):
    """The context of a training forward pass: ``torch.autocast`` with bfloat16 for ``"bf16"``, nothing for
    ``"fp32"``."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(DTYPES)}")
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compare_precisions(fp32: Mapping[int, object], low: Mapping[int, object], level: float = 0.95) -> pd.DataFrame:
    """What a lower precision changes, from runs that differ only in ``train.precision``.

    Parameters
    ----------
    fp32, low : mapping seed -> Run
        The fp32 runs and the lower-precision runs of the same seeds (``cen_lab.runs.Run``).

    Returns
    -------
    pandas.DataFrame
        One row per quantity: ``quantity, n, difference, ci_low, ci_high, spread, ratio``.

        - ``final gamma``: the paired differences (low minus fp32, same seed, layer, branch and channel) of
          the final gammas; ``difference`` is their mean, ``ci_low/ci_high`` their 2.5% and 97.5% quantiles,
          ``spread`` the typical across-seed standard deviation of an fp32 gamma (the median over channels),
          and ``ratio`` the RMS paired difference over that spread (below 1: the precision moves a gamma less
          than the seed does).
        - ``same gammas at exactly 0 (rate)``, when some final gamma is exactly 0 (the proximal rule): the portion
          of (seed, channel) pairs that are at 0 in both precisions or in neither, as ``difference``, with a
          Wilson interval (the outcome check of Theorem 1 compares which channels end at 0).
        - ``final |gamma| mean``: the mean |gamma| per run, paired by seed, with a t interval of the difference;
          ``ratio`` its mean absolute difference over the fp32 spread across seeds.
        - one row per final validation metric of the ensemble (``final val <metric>/ensemble``): the difference of
          the seed means with a Welch interval, ``spread`` the fp32 standard deviation across seeds.
    """
    seeds = sorted(set(fp32) & set(low))
    if len(seeds) < 2:
        raise ValueError(f"need runs of at least two seeds in both precisions, got {seeds}")
    for s in seeds:  # a pair must differ in precision alone (and its name), or the comparison measures more
        ca, cb = (_setting(r) for r in (fp32[s], low[s]))
        if ca is not None and cb is not None and ca != cb:
            raise ValueError(f"the runs of seed {s} differ in more than train.precision: "
                             f"{sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))}")

    def final_gammas(run) -> pd.Series:
        g = run.gammas
        last = g[g["step"] == g["step"].max()]
        return last.set_index(["layer", "branch", "channel"])["gamma"]

    a = pd.concat({s: final_gammas(fp32[s]) for s in seeds}, axis=1)  # rows: (layer, branch, channel); cols: seeds
    b = pd.concat({s: final_gammas(low[s]) for s in seeds}, axis=1)
    diff = (b - a).to_numpy().ravel()
    spread = float(np.median(a.std(axis=1, ddof=1)))
    rows = [{"quantity": "final gamma", "n": diff.size, "difference": float(diff.mean()),
             "ci_low": float(np.quantile(diff, 0.025)), "ci_high": float(np.quantile(diff, 0.975)),
             "spread": spread, "ratio": float(np.sqrt(np.mean(diff ** 2)) / spread) if spread > 0 else float("nan")}]
    za, zb = (a.to_numpy() == 0), (b.to_numpy() == 0)  # exact zeros: the proximal rule's outcome of Theorem 1
    if za.any() or zb.any():
        same = int((za == zb).sum())
        ci = stats.binomtest(same, za.size).proportion_ci(level, method="wilson")
        rows.append({"quantity": "same gammas at exactly 0 (rate)", "n": za.size, "difference": same / za.size,
                     "ci_low": float(ci.low), "ci_high": float(ci.high), "spread": float("nan"),
                     "ratio": float("nan")})
    ma, mb = a.abs().mean().to_numpy(), b.abs().mean().to_numpy()
    d = mb - ma
    ci = stats.t.interval(level, len(d) - 1, loc=d.mean(), scale=stats.sem(d)) if np.ptp(d) > 0 else (d[0], d[0])
    rows.append({"quantity": "final |gamma| mean", "n": len(d), "difference": float(d.mean()), "ci_low": float(ci[0]),
                 "ci_high": float(ci[1]), "spread": float(ma.std(ddof=1)),
                 "ratio": float(np.abs(d).mean() / ma.std(ddof=1)) if ma.std(ddof=1) > 0 else float("nan")})
    for name in _ensemble_metrics(fp32[seeds[0]]):
        va = np.array([_final_val(fp32[s], name) for s in seeds])
        vb = np.array([_final_val(low[s], name) for s in seeds])
        lo = hi = float("nan")
        if np.ptp(va) > 0 or np.ptp(vb) > 0:
            ci = stats.ttest_ind(vb, va, equal_var=False).confidence_interval(level)
            lo, hi = float(ci.low), float(ci.high)
        sd = float(va.std(ddof=1))
        rows.append({"quantity": f"final val {name}", "n": len(seeds), "difference": float(vb.mean() - va.mean()),
                     "ci_low": lo, "ci_high": hi, "spread": sd,
                     "ratio": float(abs(vb.mean() - va.mean()) / sd) if sd > 0 else float("nan")})
    return pd.DataFrame(rows)


def _setting(run) -> dict | None:
    """A run's config as flat dotted keys, without its name and precision (None for an object without one)."""
    config = getattr(run, "config", None)
    if config is None:
        return None
    flat = pd.json_normalize(config.to_dict(), sep=".").iloc[0].to_dict()
    return {k: v for k, v in flat.items() if k not in ("name", "train.precision")}


def _ensemble_metrics(run) -> list[str]:
    val = run.metrics[run.metrics["split"] == "val"]
    return sorted(n for n in set(val["name"]) if n.endswith("ensemble"))


def _final_val(run, name: str) -> float:
    val = run.metrics[(run.metrics["split"] == "val") & (run.metrics["name"] == name)]
    return float(val.loc[val["step"].idxmax(), "value"])
