"""What every cen_lab network shares: its output per task (``CENOutput``) and the methods that read only the
attributes each architecture sets (``tasks``, ``config``, ``blocks``): ``CENBase``. The architectures are
``cen_lab.network.architectures.CENNet`` (plain and bottleneck) and ``cen_lab.network.unet.UNetCEN``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .blocks import ModalBatchNorm2d
from .penalty import sparsity_mask

__all__ = ["CENOutput", "CENBase"]


class CENOutput(NamedTuple):
    """One task's predictions."""

    logits: torch.Tensor  # [M, N, K, H, W] (dense) or [M, N, K] (cls): one prediction per modality branch
    ensemble: torch.Tensor  # [N, K, ...]: softmax(alpha)-weighted sum of the detached branch logits


class CENBase(nn.Module):
    """The methods shared by cen_lab's networks. A subclass sets ``tasks`` (tuple of task names), ``config``
    (``ModelConfig``), ``alpha`` (``[T, M]`` ensemble weights) and ``blocks`` (the blocks, each with ``cen_bn``
    naming its exchanging norm), and defines ``forward_tasks(x) -> {task: CENOutput}``; its constructor uses
    ``_init_cen_norm`` and ``_set_norm_family``, its forward ``_task_output``."""

    @property
    def task(self) -> str:
        """The task of a single-task network."""
        if len(self.tasks) != 1:
            raise AttributeError(f"this network has {len(self.tasks)} tasks {list(self.tasks)}; use .tasks")
        return self.tasks[0]

    def forward(self, x: torch.Tensor) -> CENOutput:
        """``x``: ``[M, N, C_in, H, W]`` -> the ``CENOutput`` of a single-task network (``forward_tasks`` for
        several tasks)."""
        if len(self.tasks) != 1:
            raise TypeError(f"this network has {len(self.tasks)} tasks {list(self.tasks)}; call forward_tasks(x)")
        return self.forward_tasks(x)[self.tasks[0]]

    def _init_cen_norm(self, bn: ModalBatchNorm2d, block: int, branches: int, sparsity: str) -> None:
        """Block ``block``'s exchanging norm: gammas at ``config.gamma_init``, and, if the block is a CEN block,
        its penalty mask by ``sparsity`` (its place among the penalised layers counts for the alternating rules)."""
        nn.init.constant_(bn.weight, self.config.gamma_init)
        cen = set(self.config.cen_blocks)
        if block in cen:
            penalised_before = sum(1 for k in range(block) if k in cen)
            bn.penalty_mask.copy_(sparsity_mask(bn.num_features, branches, sparsity, penalised_before))

    def _set_norm_family(self) -> None:
        """Every private norm, exchanging or not, of the family ``config.norm`` names."""
        for module in self.modules():
            if isinstance(module, ModalBatchNorm2d):
                module.norm = self.config.norm

    def _task_output(self, i: int, spec, pred: torch.Tensor) -> CENOutput:
        """Task ``i``'s ``CENOutput`` from its branch predictions ``pred`` ``[M, N, K, ...]``: a sigmoid for an
        image task; the ensemble ``sum_m softmax(alpha[i])_m * pred_m.detach()``, or with ``fusion = "late"`` the
        average of the branch predictions (with gradient)."""
        if spec.image:  # translation: each branch predicts an image in [0, 1]
            pred = torch.sigmoid(pred)
        if self.config.fusion == "late":
            return CENOutput(pred, pred.mean(0))
        w = torch.softmax(self.alpha[i], 0).view(-1, *([1] * (pred.dim() - 1)))
        return CENOutput(pred, (w * pred.detach()).sum(0))

    def cen_layers(self) -> list[tuple[str, ModalBatchNorm2d]]:
        """(dotted name, module) of every penalised, exchange-capable BN layer, in depth order."""
        cen = set(self.config.cen_blocks)
        return [(f"blocks.{b}.{blk.cen_bn}", getattr(blk, blk.cen_bn)) for b, blk in enumerate(self.blocks) if b in cen]
