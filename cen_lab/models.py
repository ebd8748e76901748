"""Compact Channel-Exchanging Networks for dense prediction and classification.

Activations of all modality branches travel together as one tensor ``[M, N, C, H, W]``. Every convolution is
shared by the branches (one ``nn.Conv2d`` applied to the ``[M * N, C, H, W]`` view) unless
``share_convs=False``; every BatchNorm is private: ``ModalBatchNorm2d`` keeps one row of scaling factors,
shifts and running statistics per modality, so gamma is a single ``[M, C]`` parameter per layer.

Block ``b``: 3x3 conv (stride s_b) -> ModalBatchNorm2d -> channel exchange (if b is a CEN block and the
mode is not "none") -> ReLU. Then a 1x1 conv head per branch (segmentation: upsampled to the input size;
classification: after global average pooling) and an ensemble ``sum_m softmax(alpha)_m * logits_m.detach()``.

Baselines share the code (``ModelConfig.fusion``): ``"late"`` averages the branch logits (with gradient) instead
of the alpha ensemble; ``"aggregate-sum"`` / ``"aggregate-concat"`` merge the streams after block
``fusion_block`` (sum, or concatenation along channels) into one stream with one head; ``"early"`` is a
one-stream network fed the concatenated inputs (``MultimodalDataset.concatenated``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .exchange import channel_exchange
from .sparsity import sparsity_mask

__all__ = ["CENOutput", "ModalConv2d", "ModalBatchNorm2d", "CENBlock", "CENNet", "build_model"]


class CENOutput(NamedTuple):
    logits: torch.Tensor  # [M, N, K, H, W] (seg) or [M, N, K] (cls): one prediction per modality branch
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
    """BatchNorm private to each modality: parameters and running statistics of shape ``[M, C]``.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [M, N, C, H, W] -> same
        # running_mean[m] is a contiguous row view, so batch_norm's in-place update lands in the buffer
        return torch.stack([
            F.batch_norm(x[m], self.running_mean[m], self.running_var[m], self.weight[m], self.bias[m],
                         self.training, self.momentum, self.eps)
            for m in range(self.num_modalities)
        ])

    def extra_repr(self) -> str:
        return f"num_modalities={self.num_modalities}, num_features={self.num_features}"


class CENBlock(nn.Module):
    """conv (shared) -> BN (private) -> exchange -> ReLU."""

    def __init__(self, num_modalities: int, cin: int, cout: int, stride: int, share_convs: bool,
                 exchange: str, threshold: float):
        super().__init__()
        self.conv = ModalConv2d(num_modalities, cin, cout, 3, stride=stride, share=share_convs)
        self.bn = ModalBatchNorm2d(num_modalities, cout)
        self.exchange, self.threshold = exchange, threshold
        if exchange == "random":  # a fixed random order of the channels per modality (drawn from torch's RNG)
            self.register_buffer("exchange_rank", torch.stack([torch.randperm(cout) for _ in range(num_modalities)]))
        else:
            self.exchange_rank = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y = channel_exchange(y, self.bn.weight, self.threshold, self.exchange, self.exchange_rank)
        return F.relu(y)


class CENNet(nn.Module):
    """A compact CEN (see the module docstring).

    Parameters
    ----------
    num_modalities : int
        M >= 1 (M = 1 gives the unimodal network of the same architecture).
    in_channels : int
        Input channels (modalities are zero-padded to the widest one).
    num_classes : int
        K.
    task : {"seg", "cls"}
    config : ModelConfig
    sparsity : {"disjoint", "all", "none"}
        Which gammas of the CEN blocks carry the penalty (``penalty_mask``).
    """

    def __init__(self, num_modalities: int, in_channels: int, num_classes: int, task: str,
                 config: ModelConfig, sparsity: str = "disjoint"):
        super().__init__()
        if task not in ("seg", "cls"):
            raise ValueError(f"task must be 'seg' or 'cls', got {task!r}")
        self.num_modalities, self.task, self.config = num_modalities, task, config
        cen = set(config.cen_blocks)
        aggregate = config.fusion.startswith("aggregate") and num_modalities > 1
        self.merge_after = config.fusion_block if aggregate else None  # streams merged after this block
        blocks, cin, streams = [], in_channels, num_modalities
        for b, (width, stride) in enumerate(zip(config.widths, config.strides)):
            mode = config.exchange if (b in cen and streams > 1) else "none"
            blocks.append(CENBlock(streams, cin, width, stride, config.share_convs, mode, config.threshold))
            nn.init.constant_(blocks[-1].bn.weight, config.gamma_init)
            if b in cen:
                blocks[-1].bn.penalty_mask.copy_(sparsity_mask(width, streams, sparsity))
            cin = width
            if b == self.merge_after:
                cin = width * streams if config.fusion == "aggregate-concat" else width
                streams = 1
        self.blocks = nn.ModuleList(blocks)
        self.outputs = streams  # prediction branches: M, or 1 once the streams are merged
        self.head = ModalConv2d(streams, cin, num_classes, 1, bias=True, share=config.share_convs)
        self.alpha = nn.Parameter(torch.ones(streams))

    def forward(self, x: torch.Tensor) -> CENOutput:
        """``x``: ``[M, N, C_in, H, W]``."""
        size = x.shape[-2:]
        for b, block in enumerate(self.blocks):
            x = block(x)
            if b == self.merge_after:  # [M, N, C, h, w] -> [1, N, C or M*C, h, w]
                x = x.sum(0, keepdim=True) if self.config.fusion == "aggregate-sum" else x.transpose(0, 1).flatten(1, 2).unsqueeze(0)
        if self.task == "cls":
            x = x.mean(dim=(-2, -1), keepdim=True)  # [M, N, C, 1, 1]
            logits = self.head(x).flatten(2)  # [M, N, K]
        else:
            logits = self.head(x)  # [M, N, K, h, w]
            if logits.shape[-2:] != size:
                m, n = logits.shape[:2]
                logits = F.interpolate(logits.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
                logits = logits.view(m, n, *logits.shape[1:])
        if self.config.fusion == "late":  # late fusion: the prediction is the average of the branch logits
            return CENOutput(logits, logits.mean(0))
        w = torch.softmax(self.alpha, 0).view(-1, *([1] * (logits.dim() - 1)))
        ensemble = (w * logits.detach()).sum(0)
        return CENOutput(logits, ensemble)

    def cen_layers(self) -> list[tuple[str, ModalBatchNorm2d]]:
        """(dotted name, module) of every penalised, exchange-capable BN layer, in depth order."""
        cen = set(self.config.cen_blocks)
        return [(f"blocks.{b}.bn", blk.bn) for b, blk in enumerate(self.blocks) if b in cen]


def build_model(config: ModelConfig, num_modalities: int, in_channels: int, num_classes: int, task: str,
                sparsity: str = "disjoint") -> CENNet:
    """Construct a ``CENNet`` (parameters drawn from torch's global RNG: seed it first)."""
    return CENNet(num_modalities, in_channels, num_classes, task, config, sparsity)
