"""What every cen_lab network shares: its output per task (``CENOutput``) and the methods that read only the
attributes each architecture sets (``tasks``, ``config``, ``blocks``): ``CENBase``. The architectures are
``cen_lab.network.architectures.CENNet`` (plain and bottleneck) and ``cen_lab.network.unet.UNetCEN``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .blocks import ModalBatchNorm2d

__all__ = ["CENOutput", "CENBase"]


class CENOutput(NamedTuple):
    """One task's predictions."""

    logits: torch.Tensor  # [M, N, K, H, W] (dense) or [M, N, K] (cls): one prediction per modality branch
    ensemble: torch.Tensor  # [N, K, ...]: softmax(alpha)-weighted sum of the detached branch logits


class CENBase(nn.Module):
    """The methods shared by cen_lab's networks. A subclass sets ``tasks`` (tuple of task names), ``config``
    (``ModelConfig``) and ``blocks`` (the blocks, each with ``cen_bn`` naming its exchanging norm), and defines
    ``forward_tasks(x) -> {task: CENOutput}``."""

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

    def cen_layers(self) -> list[tuple[str, ModalBatchNorm2d]]:
        """(dotted name, module) of every penalised, exchange-capable BN layer, in depth order."""
        cen = set(self.config.cen_blocks)
        return [(f"blocks.{b}.{blk.cen_bn}", getattr(blk, blk.cen_bn)) for b, blk in enumerate(self.blocks) if b in cen]
