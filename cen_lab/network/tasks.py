"""Prediction tasks: what each head predicts, its target, its loss and its validation metrics.

A network predicts one or more tasks (``DataConfig.tasks``); every task has one head per modality branch and
one ensemble. The toy scenes give four:

=========  ===========================  ============================================  ==========================
task       head output                  target                                        loss / validation metric
=========  ===========================  ============================================  ==========================
``seg``    ``[N, K, H, W]`` logits       the labels, int ``[N, H, W]``                 cross-entropy / mIoU
``cls``    ``[N, K]`` logits             the labels, int ``[N]``                       cross-entropy / accuracy
``depth``  ``[N, 1, H, W]`` depth        the ``depth`` array, float in [0, 1]; sensor  L1 over valid pixels /
                                         holes (value 0) are ignored                   MAE (same units)
``edges``  ``[N, 1, H, W]`` logits       ``edges >= 0.5``: the object boundaries       class-balanced binary
                                         (the ``edges`` array is boundary + noise)     cross-entropy / F1 of
                                                                                       ``logit > 0``
``shade``  ``[N, 3, H, W]`` image in     the ``shade`` array: the scene rendered with  L1 / L1 (``l1``), PSNR
           [0, 1] (a sigmoid ends the    shading, from the albedo (rgb) and the shape  and SSIM (``psnr``,
           head)                         (depth): translation (``cen_lab.data.scenes``) ``ssim``; torchmetrics)
=========  ===========================  ============================================  ==========================

Boundary pixels are a small minority, so plain cross-entropy learns to predict "no edge" everywhere. The edge
loss is balanced as in HED (Xie and Tu, 2015): within a batch, boundary pixels weigh ``1 - p`` and the others
``p``, ``p`` the portion of boundary pixels (normalised by the total weight).

``depth`` and ``edges`` take their targets from the dataset's arrays of those names, whether or not they are
also input modalities (predicting depth while reading depth is allowed but easy). ``shade`` is a translation
target and may not also be an input (``DataConfig`` refuses it).

PSNR and SSIM are computed per image with ``data_range=1`` (torchmetrics' defaults otherwise: SSIM's 11-pixel
Gaussian window with sigma 1.5) and averaged over images. The paper's translation metrics, FID and KID, need
Inception weights that cannot be downloaded here; ``cen_lab.experiments.translation.kid_distance``
computes the KID statistic on the features of a network the user supplies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["TaskSpec", "resolve_tasks", "task_specs", "target_modalities", "task_targets", "task_loss",
           "image_scores", "TaskMetrics", "load_task_data"]

TARGET_ARRAY = {"depth": "depth", "edges": "edges", "shade": "shade"}  # task -> the dataset array its target comes from
EDGE_LEVEL = 0.5  # an edges pixel at or above this intensity is a boundary


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task.

    Attributes
    ----------
    name : str
        ``"seg"``, ``"cls"``, ``"depth"`` or ``"edges"``.
    channels : int
        Output channels of the head (K classes for seg/cls, 1 otherwise).
    dense : bool
        Per-pixel prediction (upsampled to the input size) rather than one per image (after global pooling).
    image : bool
        The head ends in a sigmoid: each branch predicts an image in [0, 1], and the ensemble averages images.
    """

    name: str
    channels: int
    dense: bool
    image: bool = False


def resolve_tasks(tasks: Sequence[str] | None, label_task: str) -> tuple[str, ...]:
    """``DataConfig.tasks`` with ``None`` resolved to the dataset's labels, checked against the dataset."""
    if tasks is None:
        return (label_task,)
    other = {"seg": "cls", "cls": "seg"}[label_task]
    if other in tasks:
        raise ConfigError(f"data.tasks asks for {other!r} but the dataset's labels are for {label_task!r}")
    return tuple(tasks)


def task_specs(tasks: Sequence[str], num_classes: int) -> list[TaskSpec]:
    """The heads that ``tasks`` need (``num_classes`` is K of the labels)."""
    table = {"seg": TaskSpec("seg", num_classes, True), "cls": TaskSpec("cls", num_classes, False),
             "depth": TaskSpec("depth", 1, True), "edges": TaskSpec("edges", 1, True),
             "shade": TaskSpec("shade", 3, True, image=True)}
    unknown = [t for t in tasks if t not in table]
    if unknown:
        raise ConfigError(f"unknown task {unknown[0]!r}; choose from {list(table)}")
    return [table[t] for t in tasks]


def target_modalities(tasks: Sequence[str]) -> list[str]:
    """The dataset arrays the tasks' targets are read from (beyond the labels)."""
    return [TARGET_ARRAY[t] for t in tasks if t in TARGET_ARRAY]


def load_task_data(data_cfg):
    """``(full, ds)``: the dataset a ``DataConfig`` names with the arrays its tasks' targets come from (``full``),
    and the same restricted to its input modalities (``ds``). The check that a target is not also an input holds
    for ``data_cfg``, not for this loading view."""
    import dataclasses

    from ..data import load_data

    extra = [m for m in target_modalities(data_cfg.tasks or ()) if m not in data_cfg.modalities]
    full = load_data(dataclasses.replace(data_cfg, modalities=tuple(data_cfg.modalities) + tuple(extra), tasks=None))
    return full, full.select(data_cfg.modalities)


def task_targets(dataset, tasks: Sequence[str], split: int) -> dict[str, np.ndarray]:
    """Targets of one split: task -> labels int64 ``[N, ...]`` or float32 ``[N, 1, H, W]``.

    ``dataset`` is a ``MultimodalDataset`` holding the arrays of ``target_modalities(tasks)``.
    """
    rows = dataset.split == split
    out = {}
    for t in tasks:
        if t in ("seg", "cls"):
            out[t] = dataset.labels[rows]
            continue
        name = TARGET_ARRAY[t]
        if name not in dataset.inputs:
            raise ConfigError(f"task {t!r} needs the dataset array {name!r}; the dataset has {list(dataset.inputs)}")
        a = dataset.inputs[name][rows]
        out[t] = np.ascontiguousarray((a >= EDGE_LEVEL) if t == "edges" else a, dtype=np.float32)
    return out


def task_loss(task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean loss of one prediction ``[N, ...]`` (see the module table)."""
    if task in ("seg", "cls"):
        return F.cross_entropy(pred, target)
    if task == "edges":
        total, weight = _balanced_bce(pred, target)
        return total / weight
    if task == "shade":
        return (pred - target).abs().mean()
    valid = (target > 0).to(pred.dtype)  # depth: sensor holes carry no target
    return ((pred - target).abs() * valid).sum() / valid.sum().clamp(min=1.0)


def image_scores(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) and SSIM of each image: ``[N, C, H, W]`` twice, intensities in [0, 1] -> ``[N, 2]``.

    torchmetrics' functional metrics with ``data_range=1``; PSNR of an exact prediction is infinite.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    pred, target = pred.float(), target.float()
    psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    return torch.stack([psnr, ssim], 1)


def _balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of the per-pixel binary cross-entropy (boundary pixels weigh ``1 - p``, others ``p``) and
    the sum of the weights."""
    p = target.mean()
    w = torch.where(target > 0.5, 1.0 - p, p)
    return (w * F.binary_cross_entropy_with_logits(logits, target, reduction="none")).sum(), w.sum()


class TaskMetrics:
    """Accumulates one task's validation loss and metric over minibatches, for several predictions at once.

    ``update(preds [P, N, ...], target [N, ...])``, then ``result(names)`` -> ``{"loss/<name>": ...,
    "<metric>/<name>": ...}`` with ``<metric>`` ``miou``, ``accuracy``, ``mae``, ``f1``, or for ``shade``
    ``l1``, ``psnr`` and ``ssim`` (``l1`` first: it is the task's metric in summaries).
    """

    METRIC = {"seg": "miou", "cls": "accuracy", "depth": "mae", "edges": "f1", "shade": "l1"}

    def __init__(self, task: str, num_predictions: int, num_classes: int):
        self.task, self.k = task, num_classes
        p = num_predictions
        self.loss = torch.zeros(p, dtype=torch.float64)
        self.count = torch.zeros(p, dtype=torch.float64)  # loss denominators (samples, pixels, valid pixels)
        if task in ("seg", "cls"):
            self.conf = torch.zeros(p, num_classes, num_classes, dtype=torch.int64)
        elif task == "edges":
            self.tp_fp_fn = torch.zeros(p, 3, dtype=torch.float64)
        elif task == "shade":
            self.images = torch.zeros(p, 2, dtype=torch.float64)  # sums over images of PSNR and SSIM
            self.n_images = torch.zeros(p, dtype=torch.float64)

    @torch.no_grad()
    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        for i, pred in enumerate(preds):
            if self.task in ("seg", "cls"):
                self.loss[i] += F.cross_entropy(pred, target, reduction="sum").double().cpu()
                self.count[i] += target.numel()
                # max(1).indices: argmax's result (the first maximum; NaN counts as the maximum) several times faster
                # over the class dimension of [N, K, H, W] (25 ms against 4 ms for 256 x 5 x 32 x 32 on one thread)
                idx = target.flatten() * self.k + pred.max(1).indices.flatten()
                self.conf[i] += torch.bincount(idx, minlength=self.k**2).view(self.k, self.k).cpu()
            elif self.task == "edges":
                total, weight = _balanced_bce(pred, target)
                self.loss[i] += total.double().cpu()
                self.count[i] += weight.double().cpu()
                hit, truth = pred > 0, target > 0.5
                self.tp_fp_fn[i] += torch.stack([(hit & truth).sum(), (hit & ~truth).sum(),
                                                 (~hit & truth).sum()]).double().cpu()
            elif self.task == "shade":
                self.loss[i] += (pred - target).abs().sum().double().cpu()
                self.count[i] += target.numel()
                self.images[i] += image_scores(pred, target).sum(0).double().cpu()
                self.n_images[i] += target.shape[0]
            else:
                valid = target > 0
                self.loss[i] += (pred - target).abs()[valid].sum().double().cpu()
                self.count[i] += valid.sum().double().cpu()

    def result(self, names: Sequence[str]) -> dict[str, float]:
        out = {}
        metric = self.METRIC[self.task]
        for i, name in enumerate(names):
            loss = float(self.loss[i] / self.count[i].clamp(min=1.0))
            out[f"loss/{name}"] = loss
            if self.task == "seg":  # mIoU over classes that occur in the labels or the predictions
                c = self.conf[i].double()
                inter = c.diag()
                union = c.sum(0) + c.sum(1) - inter
                present = union > 0
                out[f"{metric}/{name}"] = float((inter[present] / union[present]).mean())
            elif self.task == "cls":
                c = self.conf[i].double()
                out[f"{metric}/{name}"] = float(c.diag().sum() / c.sum())
            elif self.task == "edges":
                tp, fp, fn = self.tp_fp_fn[i].tolist()
                out[f"{metric}/{name}"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else float("nan")
            else:
                out[f"{metric}/{name}"] = loss  # the L1 loss (over valid pixels for depth) is the MAE / L1
            if self.task == "shade":
                psnr, ssim = (self.images[i] / self.n_images[i].clamp(min=1.0)).tolist()
                out[f"psnr/{name}"], out[f"ssim/{name}"] = psnr, ssim
        return out
