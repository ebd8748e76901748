"""Theorem 1's local check on the zoo's example (``cen_lab.experiments.zoo_example``): the reference-style model,
exchange off, at the per-step L1 weight of its loop."""

from __future__ import annotations

import torch

from ..experiments.zoo_example import EXAMPLE_PRESETS, ZooRun
from ..network.zoo import effective_lam, segmentation_loss, without_exchange
from .local_checks import calibration_summary, local_check_model, minibatch_indices

__all__ = ["training_batches", "check_theorem"]


def training_batches(data, n_batches: int = 8, batch_size: int = 32, seed: int = 0) -> list:
    """``n_batches`` training minibatches ``(inputs, labels)`` as ``segmentation_loss`` takes them."""
    x_np, y_np = data.stacked(0)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    return [([x[m, idx] for m in range(x.shape[0])], y[idx])
            for idx in minibatch_indices(x.shape[1], batch_size, n_batches, seed)]


def check_theorem(zoo_run: ZooRun, preset: str = "default", seed: int = 0, progress: bool = True):
    """Theorem 1's local check on the example's trained model, exchange off (the theorem's setting), at the
    per-step L1 weight of its loop (``effective_lam``). Returns ``(local frame, calibration_summary)``."""
    p = EXAMPLE_PRESETS[preset]
    m = zoo_run.model.num_parallel
    batches = training_batches(zoo_run.data, p["check_batches"], p["batch_size"], seed)
    local = local_check_model(without_exchange(zoo_run.model), segmentation_loss, batches,
                              effective_lam(zoo_run.settings["lam"], m), layers="*.bn2", penalised="alternate-halves",
                              max_channels=p["max_channels"], step=zoo_run.run.manifest["last_step"],
                              run=zoo_run.run,
                              name=zoo_run.run.path.name, seed=seed, progress=progress)
    return local, calibration_summary(local)
