"""Scoring a CEN's predictions: every branch's and every ensemble's validation loss and metric, under the names
the metrics table uses (``prediction_names``)."""

from __future__ import annotations

import torch

from ..network.architectures import CENNet
from ..network.tasks import TaskMetrics

__all__ = ["evaluate", "prediction_names"]


def prediction_names(tasks: list[str] | tuple[str, ...], outputs: list[str]) -> dict[str, list[str]]:
    """task -> names of its predictions in the metrics: the ``outputs`` (stream names) and ``ensemble``, each
    prefixed ``<task>/`` when there are several tasks (``seg/rgb``, ``depth/ensemble``)."""
    prefix = (lambda t: f"{t}/") if len(tasks) > 1 else (lambda t: "")
    return {t: [f"{prefix(t)}{o}" for o in list(outputs) + ["ensemble"]] for t in tasks}



@torch.no_grad()
def evaluate(model: CENNet, x: torch.Tensor, y: torch.Tensor | dict[str, torch.Tensor], outputs: list[str],
             num_classes: int, batch_size: int = 256) -> dict[str, float]:
    """Validation loss and metric of every prediction: mIoU (seg), accuracy (cls), MAE (depth), F1 (edges), L1,
    PSNR and SSIM (shade).

    ``y`` is the target tensor of a single-task model or a dict task -> targets; ``outputs`` names the
    prediction streams (see ``prediction_names``). mIoU averages the IoU over classes that occur in the labels
    or the predictions of the split.
    """
    was_training = model.training
    model.eval()
    targets = y if isinstance(y, dict) else {model.task: y}
    names = prediction_names(model.tasks, outputs)
    acc = {t: TaskMetrics(t, len(names[t]), num_classes) for t in model.tasks}
    n = x.shape[1]
    for start in range(0, n, batch_size):
        outs = model.forward_tasks(x[:, start:start + batch_size])
        for t, out in outs.items():
            preds = torch.cat([out.logits, out.ensemble.unsqueeze(0)])  # [M+1, N, K, ...]
            acc[t].update(preds, targets[t][start:start + batch_size])
    model.train(was_training)
    metrics = {}
    for t in model.tasks:
        metrics.update(acc[t].result(names[t]))
    return metrics
