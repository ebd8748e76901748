"""Compact Channel-Exchanging Networks for dense prediction and classification, single- or multitask.

Activations of all branches travel together as one tensor ``[B, N, C, H, W]``. With one task the branches
are the M modalities; with T tasks (``DataConfig.tasks``) there are B = M * T branches, branch
``b = m * T + t`` reading modality m for task t (``cen_lab.exchange.BranchGrid``). Every convolution is shared
by the branches (one ``nn.Conv2d`` applied to the ``[B * N, C, H, W]`` view) unless ``share_convs=False``;
every BatchNorm is private: ``ModalBatchNorm2d`` keeps one row of scaling factors, shifts and running
statistics per branch, so gamma is a single ``[B, C]`` parameter per layer.

Block ``b``: 3x3 conv (stride s_b) -> ModalBatchNorm2d -> channel exchange (if b is a CEN block and the
mode is not "none") -> ReLU. Then, per task, a 1x1 conv head shared by that task's branches (dense tasks:
upsampled to the input size; classification: after global average pooling) and an ensemble
``sum_m softmax(alpha[t])_m * logits_m.detach()`` over the task's modality branches.

Baselines share the code (``ModelConfig.fusion``): ``"late"`` averages the branch logits (with gradient) instead
of the alpha ensemble; ``"aggregate-sum"`` / ``"aggregate-concat"`` merge the streams after block
``fusion_block`` (sum, or concatenation along channels) into one stream with one head (single task only);
``"early"`` is a one-stream network fed the concatenated inputs (``MultimodalDataset.concatenated``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, resolve_between
from .exchange import BranchGrid, channel_exchange
from .sparsity import sparsity_mask
from .tasks import task_specs

__all__ = ["CENOutput", "ModalConv2d", "ModalBatchNorm2d", "CENBlock", "CENNet", "build_model"]


class CENOutput(NamedTuple):
    """One task's predictions."""

    logits: torch.Tensor  # [M, N, K, H, W] (dense) or [M, N, K] (cls): one prediction per modality branch
    ensemble: torch.Tensor  # [N, K, ...]: softmax(alpha)-weighted sum of the detached branch logits


class ModalConv2d(nn.Module):
    """A convolution applied to every modality branch: one shared kernel, or one per branch."""

    def __init__(self, num_modalities: int, cin: int, cout: int, kernel: int, stride: int = 1,
                 bias: bool = False, share: bool = True):
        super().__init__()
        n = 1 if share else num_modalities
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias) for _ in range(n)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, N, C, H, W] -> [M, N, C', H', W']
        m, n = x.shape[:2]
        if len(self.convs) == 1:
            y = self.convs[0](x.reshape(m * n, *x.shape[2:]))
            return y.view(m, n, *y.shape[1:])
        return torch.stack([conv(x[i]) for i, conv in enumerate(self.convs)])


class ModalBatchNorm2d(nn.Module):
    """BatchNorm private to each branch (modality, or modality x task): parameters and running statistics of
    shape ``[M, C]``, M the number of branches.

    Attributes
    ----------
    weight : nn.Parameter
        gamma, ``[M, C]``. ``weight[m, c]`` scales channel c of modality m.
    bias : nn.Parameter
        beta, ``[M, C]``.
    penalty_mask : torch.Tensor
        bool ``[M, C]``, which gammas carry the L1 penalty (all False outside CEN blocks).
    """

    def __init__(self, num_modalities: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_modalities, self.num_features, self.eps, self.momentum = num_modalities, num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_modalities, num_features))
        self.bias = nn.Parameter(torch.zeros(num_modalities, num_features))
        self.register_buffer("running_mean", torch.zeros(num_modalities, num_features))
        self.register_buffer("running_var", torch.ones(num_modalities, num_features))
        self.register_buffer("penalty_mask", torch.zeros(num_modalities, num_features, dtype=torch.bool),
                             persistent=False)

    def forward(self, x: torch.Tensor, stacked: bool = True) -> torch.Tensor | list[torch.Tensor]:
        """``[M, N, C, H, W]`` -> the same shape, or with ``stacked=False`` the M branches' outputs
        ``[N, C, H, W]`` as a list (the exchange then writes them into one tensor without a stack copy)."""
        # running_mean[m] is a contiguous row view, so batch_norm's in-place update lands in the buffer.
        # unbind, not x[m]: the backward of M selects zero-fills and adds M full-size gradients; unbind's stacks once
        ys = [F.batch_norm(xm, self.running_mean[m], self.running_var[m], self.weight[m], self.bias[m],
                           self.training, self.momentum, self.eps)
              for m, xm in enumerate(x.unbind(0))]
        return torch.stack(ys) if stacked else ys

    def extra_repr(self) -> str:
        return f"num_modalities={self.num_modalities}, num_features={self.num_features}"


class CENBlock(nn.Module):
    """conv (shared) -> BN (private) -> exchange -> ReLU."""

    def __init__(self, grid: BranchGrid, cin: int, cout: int, stride: int, share_convs: bool,
                 exchange: str, threshold: float):
        super().__init__()
        self.conv = ModalConv2d(grid.size, cin, cout, 3, stride=stride, share=share_convs)
        self.bn = ModalBatchNorm2d(grid.size, cout)
        self.grid, self.exchange, self.threshold = grid, exchange, threshold
        if exchange == "random":  # a fixed random order of the channels per branch (drawn from torch's RNG)
            self.register_buffer("exchange_rank", torch.stack([torch.randperm(cout) for _ in range(grid.size)]))
        else:
            self.exchange_rank = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C_in, H, W] -> [B, N, C_out, H', W']
        ys = self.bn(self.conv(x), stacked=False)
        y = channel_exchange(ys, self.bn.weight, self.threshold, self.exchange, self.exchange_rank, self.grid)
        return F.relu(y)


class CENNet(nn.Module):
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
        The task (``"seg"``, ``"cls"``) or tasks (also ``"depth"``, ``"edges"``; see ``cen_lab.tasks``).
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
        for b, (width, stride) in enumerate(zip(config.widths, config.strides)):
            mode = config.exchange if (b in cen and grid.size > 1) else "none"
            blocks.append(CENBlock(grid, cin, width, stride, config.share_convs, mode, config.threshold))
            nn.init.constant_(blocks[-1].bn.weight, config.gamma_init)
            if b in cen:
                penalised_before = sum(1 for k in range(b) if k in cen)  # this layer's place among penalised ones
                blocks[-1].bn.penalty_mask.copy_(sparsity_mask(width, grid.size, sparsity, penalised_before))
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

    @property
    def task(self) -> str:
        """The task of a single-task network."""
        if len(self.tasks) != 1:
            raise AttributeError(f"this network has {len(self.tasks)} tasks {list(self.tasks)}; use .tasks")
        return self.tasks[0]

    def forward_tasks(self, x: torch.Tensor) -> dict[str, CENOutput]:
        """``x``: ``[M, N, C_in, H, W]`` -> task name -> ``CENOutput``."""
        size = x.shape[-2:]
        t = len(self.tasks)
        if t > 1:
            x = x.repeat_interleave(t, dim=0)  # [M * T, N, C_in, H, W]: branch m * T + t reads modality m
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
            if self.config.fusion == "late":  # late fusion: the prediction is the average of the branch logits
                out[spec.name] = CENOutput(logits, logits.mean(0))
                continue
            w = torch.softmax(self.alpha[i], 0).view(-1, *([1] * (logits.dim() - 1)))
            out[spec.name] = CENOutput(logits, (w * logits.detach()).sum(0))
        return out

    def forward(self, x: torch.Tensor) -> CENOutput:
        """``x``: ``[M, N, C_in, H, W]`` -> the ``CENOutput`` of a single-task network (``forward_tasks`` for
        several tasks)."""
        if len(self.tasks) != 1:
            raise TypeError(f"this network has {len(self.tasks)} tasks {list(self.tasks)}; call forward_tasks(x)")
        return self.forward_tasks(x)[self.tasks[0]]

    def cen_layers(self) -> list[tuple[str, ModalBatchNorm2d]]:
        """(dotted name, module) of every penalised, exchange-capable BN layer, in depth order."""
        cen = set(self.config.cen_blocks)
        return [(f"blocks.{b}.bn", blk.bn) for b, blk in enumerate(self.blocks) if b in cen]


def build_model(config: ModelConfig, num_modalities: int, in_channels: int, num_classes: int,
                tasks: str | Sequence[str], sparsity: str = "disjoint") -> CENNet:
    """Construct a ``CENNet`` (parameters drawn from torch's global RNG: seed it first)."""
    return CENNet(num_modalities, in_channels, num_classes, tasks, config, sparsity)
