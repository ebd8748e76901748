"""Compact Channel-Exchanging Networks for dense prediction and classification, single- or multitask.

Activations of all branches travel together as one tensor ``[B, N, C, H, W]``. With one task the branches
are the M modalities; with T tasks (``DataConfig.tasks``) there are B = M * T branches, branch
``b = m * T + t`` reading modality m for task t (``cen_lab.exchange.BranchGrid``). Every convolution is shared
by the branches (one ``nn.Conv2d`` applied to the ``[B * N, C, H, W]`` view) unless ``share_convs=False``;
every BatchNorm is private: ``ModalBatchNorm2d`` keeps one row of scaling factors, shifts and running
statistics per branch, so gamma is a single ``[B, C]`` parameter per layer.

Block ``b`` (``ModelConfig.arch = "plain"``): 3x3 conv (stride s_b) -> ModalBatchNorm2d -> channel exchange (if b
is a CEN block and the mode is not "none") -> ReLU. With ``arch = "bottleneck"`` (the reference's shape): a stem
(3x3 conv, BN, ReLU), then residual bottlenecks (``BottleneckBlock``: 1x1, 3x3 and 1x1 convs with expansion, a
downsample conv and BN where the shape changes), each exchanging and penalised at its ``bn2`` only, while the
identity path keeps each branch's own features. Then, per task, a 1x1 conv head shared by that task's branches (dense tasks:
upsampled to the input size; classification: after global average pooling) and an ensemble
``sum_m softmax(alpha[t])_m * logits_m.detach()`` over the task's modality branches.

Baselines share the code (``ModelConfig.fusion``): ``"late"`` averages the branch logits (with gradient) instead
of the alpha ensemble; ``"aggregate-sum"`` / ``"aggregate-concat"`` merge the streams after block
``fusion_block`` (sum, or concatenation along channels) into one stream with one head (single task only);
``"early"`` is a one-stream network fed the concatenated inputs (``MultimodalDataset.concatenated``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, resolve_between
from .base import CENBase, CENOutput
from .blocks import BottleneckBlock, CENBlock, ModalBatchNorm2d, ModalConv2d
from .exchange import BranchGrid
from .tasks import task_specs
from .unet import UNetCEN

__all__ = ["CENOutput", "ModalConv2d", "ModalBatchNorm2d", "CENBlock", "BottleneckBlock", "CENNet", "build_model"]


class CENNet(CENBase):
    """A compact CEN (see the module docstring).

    Parameters
    ----------
    num_modalities : int
        M >= 1 input streams (M = 1 gives the unimodal network of the same architecture).
    in_channels : int
        Input channels (modalities are zero-padded to the widest one).
    num_classes : int
        K, classes of the ``seg`` / ``cls`` labels.
    tasks : str or sequence of str
        The task (``"seg"``, ``"cls"``) or tasks (also ``"depth"``, ``"edges"``; see ``cen_lab.network.tasks``).
    config : ModelConfig
    sparsity : {"disjoint", "alternate-halves", "all", "none"}
        Which gammas of the CEN blocks carry the penalty (``penalty_mask``); ``"disjoint"`` cuts the channels
        into one chunk per branch (M * T chunks).

    Attributes
    ----------
    grid : BranchGrid
        Arrangement of the branches and which of them exchange.
    outputs : int
        Prediction branches per task: M, or 1 once the streams are merged.
    """

    def __init__(self, num_modalities: int, in_channels: int, num_classes: int, tasks: str | Sequence[str],
                 config: ModelConfig, sparsity: str = "disjoint"):
        super().__init__()
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        self.specs = task_specs(tasks, num_classes)
        self.num_modalities, self.tasks, self.config = num_modalities, tasks, config
        t = len(tasks)
        cen = set(config.cen_blocks)
        aggregate = config.fusion.startswith("aggregate") and num_modalities > 1
        if aggregate and t > 1:
            raise ValueError(f"fusion {config.fusion!r} is defined for a single task, got tasks {list(tasks)}")
        self.merge_after = config.fusion_block if aggregate else None  # streams merged after this block
        self.grid = BranchGrid(num_modalities, t, resolve_between(num_modalities, t, config.exchange_between))
        blocks, cin, grid = [], in_channels, self.grid
        bottleneck = config.arch == "bottleneck"
        self.stem = None
        if bottleneck:  # conv -> private BN -> ReLU, no exchange, no penalty
            self.stem = nn.Sequential(ModalConv2d(grid.size, cin, config.stem_width, 3, share=config.share_convs),
                                      ModalBatchNorm2d(grid.size, config.stem_width))
            cin = config.stem_width
        for b, (width, stride) in enumerate(zip(config.widths, config.strides)):
            mode = config.exchange if (b in cen and grid.size > 1) else "none"
            if bottleneck:
                block = BottleneckBlock(grid, cin, width, stride, config.expansion, config.share_convs, mode,
                                        config.threshold)
            else:
                block = CENBlock(grid, cin, width, stride, config.share_convs, mode, config.threshold)
            self._init_cen_norm(getattr(block, block.cen_bn), b, grid.size, sparsity)  # exchanges, may be penalised
            blocks.append(block)
            cin = width
            if b == self.merge_after:
                cin = width * grid.modalities if config.fusion == "aggregate-concat" else width
                grid = BranchGrid(1)
        self.blocks = nn.ModuleList(blocks)
        self.outputs = grid.modalities
        self.heads = nn.ModuleList(
            ModalConv2d(self.outputs, cin, spec.channels, 1, bias=True, share=config.share_convs) for spec in self.specs
        )
        self.alpha = nn.Parameter(torch.ones(t, self.outputs))  # [T, M] ensemble weights (before softmax)
        self._set_norm_family()

    def forward_tasks(self, x: torch.Tensor) -> dict[str, CENOutput]:
        """``x``: ``[M, N, C_in, H, W]`` -> task name -> ``CENOutput``."""
        size = x.shape[-2:]
        t = len(self.tasks)
        if t > 1:
            x = x.repeat_interleave(t, dim=0)  # [M * T, N, C_in, H, W]: branch m * T + t reads modality m
        if self.stem is not None:
            x = F.relu(self.stem(x))
        for b, block in enumerate(self.blocks):
            x = block(x)
            if b == self.merge_after:  # [M, N, C, h, w] -> [1, N, C or M*C, h, w]
                x = x.sum(0, keepdim=True) if self.config.fusion == "aggregate-sum" else x.transpose(0, 1).flatten(1, 2).unsqueeze(0)
        feats = x.view(self.outputs, t, *x.shape[1:])  # [M, T, N, C, h, w]
        out = {}
        for i, (spec, head) in enumerate(zip(self.specs, self.heads)):
            f = feats[:, i]  # [M, N, C, h, w]
            if not spec.dense:
                logits = head(f.mean(dim=(-2, -1), keepdim=True)).flatten(2)  # [M, N, K]
            else:
                logits = head(f)  # [M, N, K, h, w]
                if logits.shape[-2:] != size:
                    m, n = logits.shape[:2]
                    logits = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
                    logits = logits.view(m, n, *logits.shape[1:])
            out[spec.name] = self._task_output(i, spec, logits)
        return out


def build_model(config: ModelConfig, num_modalities: int, in_channels: int, num_classes: int,
                tasks: str | Sequence[str], sparsity: str = "disjoint") -> CENBase:
    """Construct a ``CENNet``, or for ``config.arch = "unet"`` a ``cen_lab.network.unet.UNetCEN``; parameters are
    drawn from torch's global RNG: seed it first."""
    if config.arch == "unet":
        return UNetCEN(num_modalities, in_channels, num_classes, tasks, config, sparsity)
    return CENNet(num_modalities, in_channels, num_classes, tasks, config, sparsity)
