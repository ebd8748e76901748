"""The shared blocks of cen_lab's networks: a convolution shared by the branches, a BatchNorm private to each, and
the two exchanging blocks built from them (``CENBlock``, the plain architecture's; ``BottleneckBlock``, the
reference's residual shape).

Activations of all B branches travel together as one tensor ``[B, N, C, H, W]``. Every convolution is shared by
the branches (one ``nn.Conv2d`` applied to the ``[B * N, C, H, W]`` view) unless ``share=False``; every
BatchNorm is private: ``ModalBatchNorm2d`` keeps one row of scaling factors, shifts and running statistics per
branch, so gamma is a single ``[B, C]`` parameter per layer. The architectures that assemble these blocks are in
``cen_lab.network.architectures``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .exchange import BranchGrid, channel_exchange

__all__ = ["ModalConv2d", "ModalBatchNorm2d", "CENBlock", "BottleneckBlock", "group_count"]


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


def group_count(channels: int) -> int:
    """The groups of ``model.norm = "group"``: ``gcd(channels, 8)`` (8 groups where the channels allow)."""
    import math

    return math.gcd(channels, 8)


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
    norm : {"batch", "instance", "group"}
        ``"batch"``: BatchNorm, statistics over the batch and space. ``"instance"``: InstanceNorm as the
        reference translation U-Net's (``nn.InstanceNorm2d(affine=True, track_running_stats=True)`` per branch):
        statistics per sample and channel over space in training, the running ones in eval mode. ``"group"``:
        GroupNorm with ``group_count(C)`` groups (``nn.GroupNorm`` per branch: statistics per sample over each
        group's channels and space, in training and eval alike; the running buffers stay unused). The network
        sets it from ``model.norm``.
    """

    norm = "batch"

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
        # instance_norm takes batch_norm's arguments in the same order (use_input_stats: in training)
        if self.norm == "group":
            groups = group_count(self.num_features)
            ys = [F.group_norm(xm, groups, self.weight[m], self.bias[m], self.eps) for m, xm in enumerate(x.unbind(0))]
            return torch.stack(ys) if stacked else ys
        norm = F.instance_norm if self.norm == "instance" else F.batch_norm
        ys = [norm(xm, self.running_mean[m], self.running_var[m], self.weight[m], self.bias[m], self.training,
                   self.momentum, self.eps)
              for m, xm in enumerate(x.unbind(0))]
        return torch.stack(ys) if stacked else ys

    def extra_repr(self) -> str:
        extra = "" if self.norm == "batch" else f", norm={self.norm!r}"
        return f"num_modalities={self.num_modalities}, num_features={self.num_features}{extra}"


class _Exchanging(nn.Module):
    """What a block with one exchanging BN shares: its branch grid, exchange rule and threshold, the random rule's
    channel order, and ``cen_bn``, the attribute name of that BN (its dotted name in the logs)."""

    cen_bn = "bn"

    def _set_exchange(self, grid: BranchGrid, exchange: str, threshold: float, channels: int) -> None:
        self.grid, self.exchange, self.threshold = grid, exchange, threshold
        if exchange == "random":  # a fixed random order of the channels per branch (drawn from torch's RNG)
            self.register_buffer("exchange_rank", torch.stack([torch.randperm(channels) for _ in range(grid.size)]))
        else:
            self.exchange_rank = None

    def _exchange(self, bn: ModalBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        """BN of the branches of ``x``, then the channel exchange: ``[B, N, C, H, W]`` -> the same."""
        return channel_exchange(bn(x, stacked=False), bn.weight, self.threshold, self.exchange, self.exchange_rank,
                                self.grid)


class CENBlock(_Exchanging):
    """conv (shared) -> BN (private) -> exchange -> ReLU."""

    def __init__(self, grid: BranchGrid, cin: int, cout: int, stride: int, share_convs: bool,
                 exchange: str, threshold: float):
        super().__init__()
        self.conv = ModalConv2d(grid.size, cin, cout, 3, stride=stride, share=share_convs)
        self.bn = ModalBatchNorm2d(grid.size, cout)
        self._set_exchange(grid, exchange, threshold, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C_in, H, W] -> [B, N, C_out, H', W']
        return F.relu(self._exchange(self.bn, self.conv(x)))


class BottleneckBlock(_Exchanging):
    """The reference's residual bottleneck, every conv shared and every BN private, with C_out // expansion inner
    channels: 1x1 conv -> bn1 -> ReLU -> 3x3 conv (stride) -> bn2 -> exchange -> ReLU -> 1x1 conv (to C_out) -> bn3,
    plus the input (through ``downsample``, a 1x1 conv with the stride and its own BN, where the shape changes),
    -> ReLU. Only ``bn2`` exchanges and carries the penalty."""

    cen_bn = "bn2"

    def __init__(self, grid: BranchGrid, cin: int, cout: int, stride: int, expansion: int, share_convs: bool,
                 exchange: str, threshold: float):
        super().__init__()
        m, planes = grid.size, cout // expansion
        self.conv1 = ModalConv2d(m, cin, planes, 1, share=share_convs)
        self.bn1 = ModalBatchNorm2d(m, planes)
        self.conv2 = ModalConv2d(m, planes, planes, 3, stride=stride, share=share_convs)
        self.bn2 = ModalBatchNorm2d(m, planes)
        self.conv3 = ModalConv2d(m, planes, cout, 1, share=share_convs)
        self.bn3 = ModalBatchNorm2d(m, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(ModalConv2d(m, cin, cout, 1, stride=stride, share=share_convs),
                                            ModalBatchNorm2d(m, cout))
        self._set_exchange(grid, exchange, threshold, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C_in, H, W] -> [B, N, C_out, H', W']
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self._exchange(self.bn2, self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))
