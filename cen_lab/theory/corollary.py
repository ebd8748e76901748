"""Corollary 1 checked on trained networks.

Corollary 1 (NeurIPS 2020): if the optimum drives gamma to 0, exchanging that channel (assuming no cross-modal
parameter sharing) can only lower the training loss, given enough capacity. ``corollary_check`` trains a
network without exchange, then fine-tunes it from the same weights with and without exchange (the control),
with shared and with unshared convolutions; ``corollary_summary`` gives the verdicts with t intervals.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ..config import ExperimentConfig
from ..data import load_data
from ..experiments.training import data_losses, train
from ..network.architectures import build_model
from .networks import theorem_config

__all__ = ["training_loss", "corollary_check", "corollary_summary"]


@torch.no_grad()
def training_loss(model: torch.nn.Module, cfg: ExperimentConfig, batch_size: int | None = None,
                  data: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Mean data loss over the training split, BN in training mode (batch statistics) on a copy of the model,
    in fixed order with the last partial batch dropped. ``data`` is the training split ``(x, y)`` as
    ``MultimodalDataset.stacked(0)`` gives it, to skip loading ``cfg.data`` again."""
    if data is None:
        x_np, y_np = load_data(cfg.data).stacked(0)
        data = (torch.from_numpy(x_np), torch.from_numpy(y_np))
    x, y = data
    m = copy.deepcopy(model).train()
    bs = batch_size or cfg.train.batch_size
    losses = []
    for start in range(0, x.shape[1] - bs + 1, bs):
        out = m(x[:, start:start + bs])
        branch, ens = data_losses(out.logits, out.ensemble, y[start:start + bs])
        losses.append(float(branch.sum() + ens))
    return float(np.mean(losses))


def corollary_check(seeds: Sequence[int], runs_dir: str | Path, *, preset: str = "default", lam: float = 2e-2,
                    base_steps: int = 400, finetune_steps: int = 100, shares: Sequence[bool] = (True, False),
                    checkpoints: int = 4, progress: bool = True, **overrides) -> pd.DataFrame:
    """Corollary 1: train without exchange, then fine-tune from the same weights with and without exchange.

    For each ``share_convs`` setting and seed: the base run (``theorem_config``: no exchange, L1 on), then two
    fine-tunings of
    ``finetune_steps`` from its final weights, one with exchange switched on and one without (the control:
    same extra training, no exchange). Training losses are measured with ``training_loss``.

    Returns
    -------
    pandas.DataFrame
        ``share_convs, seed, exchanged_channels`` (portion exchanged when switched on), ``loss_base``,
        ``loss_switched`` (exchange on, no fine-tuning), ``loss_exchange`` (after fine-tuning with exchange),
        ``loss_control`` (after fine-tuning without), ``delta`` (``loss_exchange - loss_control``).
    """
    rows, data = [], None
    for share in shares:
        for seed in seeds:
            # the base run is the theorem run of the same settings, so the two checks share it
            base_cfg = theorem_config(preset, lam, seed, base_steps, "proximal", checkpoints,
                                      model__share_convs=share, **overrides)
            base = train(base_cfg, Path(runs_dir) / base_cfg.name, resume=True, progress=progress)
            if data is None:  # every run here trains on the same data (only model and training settings vary)
                x_np, y_np = load_data(base_cfg.data).stacked(0)
                data = (torch.from_numpy(x_np), torch.from_numpy(y_np))
            tuned = {}
            for mode in ("mean", "none"):
                cfg = base_cfg.override({"name": f"{base_cfg.name}-finetune-{mode}", "model.exchange": mode,
                                         "train.steps": finetune_steps, "train.init_from": str(base.path.resolve()),
                                         "train.ckpt_every": finetune_steps})
                tuned[mode] = train(cfg, Path(runs_dir) / cfg.name, resume=True, progress=progress)
            model = base.load_model()
            switched_cfg = base_cfg.override({"model.exchange": "mean"})
            m = base.manifest
            switched = build_model(switched_cfg.model, len(m["modalities"]), m["in_channels"], m["num_classes"],
                                   m["task"], switched_cfg.train.sparsity)
            switched.load_state_dict(model.state_dict())  # the same weights, exchange switched on
            ex = tuned["mean"].exchange
            rows.append({
                "share_convs": share, "seed": seed,
                "exchanged_channels": float(ex[ex["step"] == 0]["exchanged"].mean()),
                "loss_base": training_loss(model, base_cfg, data=data),
                "loss_switched": training_loss(switched, switched_cfg, data=data),
                "loss_exchange": training_loss(tuned["mean"].load_model(), tuned["mean"].config, data=data),
                "loss_control": training_loss(tuned["none"].load_model(), tuned["none"].config, data=data),
            })
    df = pd.DataFrame(rows)
    df["delta"] = df["loss_exchange"] - df["loss_control"]
    return df


def corollary_summary(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Corollary 1's direction (exchange does not raise the training loss) per ``share_convs``, two ways:

    - ``after fine-tuning``: ``loss_exchange - loss_control`` (same extra training, with and without exchange);
    - ``immediately``: ``loss_switched - loss_base`` (exchange switched on, weights unchanged).

    Each row: the mean difference with a t interval across seeds, how many seeds were lower with exchange, and
    the verdict: ``holds`` when the interval lies at or below 0, ``does not hold`` when it lies above 0, else
    ``inconclusive`` (also with fewer than two seeds).
    """
    rows = []
    for share, sub in df.groupby("share_convs", sort=False):
        for comparison, d in (("after fine-tuning", sub["loss_exchange"] - sub["loss_control"]),
                              ("immediately", sub["loss_switched"] - sub["loss_base"])):
            d = d.to_numpy()
            mean = float(d.mean())
            if len(d) > 1 and d.std(ddof=1) > 0:
                low, high = (float(v) for v in stats.t.interval(level, len(d) - 1, loc=mean, scale=stats.sem(d)))
            else:
                low = high = float("nan")
            verdict = "inconclusive"
            if np.isfinite(high) and high <= 0:
                verdict = "holds"
            elif np.isfinite(low) and low > 0:
                verdict = "does not hold"
            rows.append({"share_convs": bool(share), "comparison": comparison, "n_seeds": len(d), "mean_delta": mean,
                         "ci_low": low, "ci_high": high, "seeds_lower_with_exchange": int((d < 0).sum()),
                         "verdict": verdict})
    return pd.DataFrame(rows)
