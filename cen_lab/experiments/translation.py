"""The translation scenario: predicting the ``shade`` rendering from rgb (albedo) and depth (shape) with the CEN
U-Net (``model.arch = "unet"``, preset ``translate``), its benchmark against single-domain generators and the
usual fusions, and the image distance the paper reports beside L1, PSNR and SSIM.

The benchmark (``run_translation_benchmark``, ``cen-lab bench-translation``) is the fusion benchmark's machinery
(``cen_lab.experiments.fusion``: one sweep of named override bundles over seeds, the same per-run scores,
t intervals and Welch comparisons) on the ``translate`` preset with ``TRANSLATION_VARIANTS``. Scores are L1
(lower is better), with PSNR and SSIM beside it.

The paper's FID and KID compare Inception-v3 features of generated and real images. Those weights cannot be
downloaded here, so cen_lab reports no FID or KID of its own; ``kid_distance`` computes the KID statistic (an
unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets; torchmetrics' implementation) on the
features of any network the user supplies, such as an Inception they have on disk.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from ..config import ExperimentConfig, dotted
from .fusion import compare_to, compute_fusion_results, fusion_summary, per_run_scores
from .sweeps import sweep

__all__ = ["TRANSLATION_VARIANTS", "SIZES", "translation_base", "run_translation_benchmark", "translation_scores",
           "translation_summary", "translation_examples", "kid_distance"]

from ..config.variants import TRANSLATION_VARIANTS  # noqa: E402  (defined beside the configs: no torch)

FAMILIES = {name: family for name, (family, _) in TRANSLATION_VARIANTS.items()}


# the benchmark's sizes: "default" the translate preset's, "tiny" a smoke test (the tiny preset's data and widths;
# its numbers carry no evidence, and its runs are named tiny-translation so that their regime says so)
SIZES: dict[str, dict[str, Any]] = {
    "default": {"name": "translation"},
    "tiny": {"name": "tiny-translation", "data.source": "generate", "data.scene.image_size": 16,
             "data.scene.n_train": 64, "data.scene.n_val": 32, "data.scene.max_objects": 2,
             "model.widths": [8, 8], "model.strides": [2, 2], "train.batch_size": 16},
}


def translation_base(steps: int = 600, size: str = "default", **overrides) -> ExperimentConfig:
    """The ``translate`` preset at ``size`` (``SIZES``) with ``steps`` steps, ten validation passes (for the
    learning curves) and one checkpoint; ``overrides`` use ``__`` for dots (``train__lam=1e-3``)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    base = {**SIZES[size], "train.steps": steps, "train.ckpt_every": steps,
            "log.eval_every": max(1, steps // 10), "log.every": max(1, steps // 30)}
    base.update(dotted(overrides))
    return ExperimentConfig.preset("translate").override(base)


def run_translation_benchmark(runs_dir: str | Path, *, variants: Sequence[str] | None = None,
                              seeds: Sequence[int] = range(5), steps: int = 600, size: str = "default",
                              n_jobs: int = 2, progress: bool = True, **overrides) -> pd.DataFrame:
    """Train (or reuse) every variant of ``TRANSLATION_VARIANTS`` (default: all) for every seed with
    ``cen_lab.sweep``, on ``translation_base(steps, size, **overrides)``.

    Returns
    -------
    pandas.DataFrame
        The sweep table (``variant``, ``seed``, ``path``, ``status``, ``seconds``) with ``preset``:
        ``translate``, or ``tiny`` at the tiny size (so that every regime says it is a smoke test); also in
        ``runs_dir/sweep.parquet``.
    """
    names = list(TRANSLATION_VARIANTS) if variants is None else list(variants)
    unknown = [v for v in names if v not in TRANSLATION_VARIANTS]
    if unknown:
        raise ValueError(f"unknown translation variant {unknown[0]!r}; choose from {list(TRANSLATION_VARIANTS)}")
    table = sweep(translation_base(steps, size, **overrides), {"seed": list(seeds)}, runs_dir,
                  variants={v: TRANSLATION_VARIANTS[v][1] for v in names},
                  backend="loky" if n_jobs > 1 else "serial", n_jobs=n_jobs, progress=progress)
    return table.assign(preset="tiny" if size == "tiny" else "translate")


def translation_scores(table: pd.DataFrame) -> pd.DataFrame:
    """``per_run_scores`` of a translation benchmark table (the L1 of every prediction), with the same run's
    final ``psnr`` and ``ssim`` of that prediction as two more columns."""
    return per_run_scores(table, extra=("psnr", "ssim"))


def translation_summary(table: pd.DataFrame, level: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, comparison)`` of a translation benchmark table.

    ``summary``: ``fusion_summary`` (one row per variant: the final prediction's L1 with its t interval across
    seeds, each branch's mean L1, parameters, seconds, regime; best first) with the mean ``psnr`` and ``ssim`` of
    the final prediction. ``comparison``: ``compare_to(scores, "cen")``, CEN's L1 minus each other variant's with a
    Welch interval (negative: CEN better).
    """
    scores = translation_scores(table)
    results = compute_fusion_results(scores, level=level)
    results["family"] = results["variant"].map(FAMILIES).fillna(results["family"])
    summary = fusion_summary(results)
    final = scores[scores["branch"] == "ensemble"].groupby("variant")[["psnr", "ssim"]].mean()
    summary = summary.join(final, on="variant")
    columns = [c for c in summary.columns if c != "regime"] + ["regime"]
    return summary[columns], compare_to(scores, "cen", level=level)


@torch.no_grad()
def translation_examples(run, samples: Sequence[int] = (0, 1, 2, 3), step: int | None = None) -> dict[str, Any]:
    """A translation run's inputs, target and predictions for some validation images, on the CPU.

    Parameters
    ----------
    run : cen_lab.Run
        A run of cen_lab's own that predicts ``shade`` (its model is rebuilt from its checkpoint).
    samples : sequence of int
        Indices into the validation split.
    step : int, optional
        The checkpoint (default: the latest).

    Returns
    -------
    dict
        ``inputs``: modality -> float ``[n, C, H, W]``; ``target``: ``[n, 3, H, W]``; ``predictions``: name ->
        ``[n, 3, H, W]`` (each branch's by its stream name, then ``ensemble``); all numpy, in [0, 1]; and ``step``.
    """
    from ..network.tasks import load_task_data, task_targets
    from .evaluation import prediction_names

    cfg = run.config
    if cfg is None or "shade" not in run.tasks:
        raise ValueError(f"{run.path}: not a translation run of cen_lab's (its tasks are {list(run.tasks)}); "
                         "train one with the 'translate' preset")
    full, ds = load_task_data(cfg.data)
    n_val = int((ds.split == 1).sum())
    bad = [i for i in samples if not 0 <= i < n_val]
    if bad or not len(samples):
        raise ValueError(f"samples must be indices into the {n_val} validation images, got {list(samples)}")
    idx = list(samples)
    x, _ = ds.concatenated(1) if cfg.model.fusion == "early" else ds.stacked(1)
    model = run.load_model(step)
    out = model.forward_tasks(torch.from_numpy(x[:, idx]))["shade"]
    streams = list(dict.fromkeys(o.rsplit("/", 1)[-1] for o in run.outputs))
    names = prediction_names(["shade"], streams)["shade"]
    preds = [*out.logits, out.ensemble]
    rows = ds.split == 1
    return {"inputs": {m: ds.inputs[m][rows][idx] for m in ds.modalities},
            "target": task_targets(full, ["shade"], 1)["shade"][idx],
            "predictions": {name: p.numpy() for name, p in zip(names, preds)},
            "step": run.checkpoint_steps[-1] if step is None else step}


def kid_distance(extractor: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, subset_size: int = 50,
                 subsets: int = 100) -> tuple[float, float]:
    """KID-style distance between two image sets, on ``extractor``'s features.

    Parameters
    ----------
    extractor : torch.nn.Module
        Maps images ``[N, C, H, W]`` in [0, 1] to features ``[N, D]``. It is run in eval mode without gradients.
    real, fake : torch.Tensor
        Images ``[N, C, H, W]`` in [0, 1] (the counts may differ).
    subset_size : int
        Images per random subset; each set needs at least this many.
    subsets : int
        Number of random subsets the MMD is averaged over.

    Returns
    -------
    (mean, std) : tuple of float
        KID's mean over subsets and its standard deviation (torchmetrics' convention). Not comparable with the
        paper's KID unless ``extractor`` is the same Inception network.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    smallest = min(len(real), len(fake))
    if subset_size > smallest:
        raise ValueError(f"subset_size={subset_size} is larger than the smaller image set ({smallest} images)")
    extractor = extractor.eval()
    with warnings.catch_warnings():  # torchmetrics warns that features are kept in memory: that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=extractor, subsets=subsets, subset_size=subset_size, normalize=True)
        with torch.no_grad():
            metric.update(real.float(), real=True)
            metric.update(fake.float(), real=False)
            mean, std = metric.compute()
    return float(mean), float(std)
