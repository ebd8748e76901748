"""A small CEN written the way the reference code and the codebases that copy it write one: the zoo of foreign
layouts.

This is an example of the *foreign* layout that ``cen_lab.observe`` reads, kept small and tested; it is not a
second architecture for ``cen_lab.train``. Its pieces follow the reference code's pattern:

- ``ModuleParallel``: one shared module run on each modality's tensor of a list;
- ``BatchNorm2dParallel``: M private ``nn.BatchNorm2d`` children named ``bn_0 ... bn_{M-1}``;
- ``Exchange``: after ``bn2`` of each bottleneck, channel c of modality m keeps its own output where
  ``|gamma| >= threshold``, else takes the other modality's (for M > 2: the mean of the others);
- ``Bottleneck``: 1x1 -> 3x3 (stride) -> 1x1 convolutions with expansion 4 and a residual path, the downsample
  branch a shared 1x1 convolution and a private ``BatchNorm2dParallel``;
- ``reference_slim_params`` and ``reference_l1``: the penalised gammas picked by parameter name (``'bn2' in
  name``), alternating the first and the second half of each BN weight in parameter order, and the L1 term
  added to the loss once per output (M + 1 times per step), as the reference does.

The plain training loop that a user of such a codebase would write is ``cen_lab.experiments.zoo_example``;
``cen_lab.zoo`` gathers both.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .penalty import per_step_lam

__all__ = ["ModuleParallel", "BatchNorm2dParallel", "Exchange", "Bottleneck", "ReferenceStyleCEN",
           "reference_slim_params", "reference_l1", "segmentation_loss", "without_exchange", "effective_lam",
           "PassThrough"]


class ModuleParallel(nn.Module):
    """Run one shared module on every modality: list of M ``[N, C, H, W]`` -> list of M tensors."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.module(x) for x in xs]


class BatchNorm2dParallel(nn.Module):
    """A private ``nn.BatchNorm2d`` per modality, as children ``bn_0 ... bn_{M-1}``."""

    def __init__(self, num_features: int, num_parallel: int):
        super().__init__()
        self.num_parallel = num_parallel
        for i in range(num_parallel):
            setattr(self, f"bn_{i}", nn.BatchNorm2d(num_features))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [getattr(self, f"bn_{i}")(x) for i, x in enumerate(xs)]


class Exchange(nn.Module):
    """Channel exchange after a ``BatchNorm2dParallel``: modality m keeps channel c where
    ``|gamma_m[c]| >= threshold``, else takes the mean of the other modalities' channel c."""

    def forward(self, xs: list[torch.Tensor], bns: Sequence[nn.BatchNorm2d], threshold: float) -> list[torch.Tensor]:
        m = len(xs)
        total = torch.stack(xs).sum(0)  # [N, C, H, W]
        out = []
        for i, (x, bn) in enumerate(zip(xs, bns)):
            keep = (bn.weight.abs() >= threshold).view(1, -1, 1, 1)  # [1, C, 1, 1]
            others = (total - x) / (m - 1)
            out.append(torch.where(keep, x, others))
        return out


class PassThrough(nn.Module):
    """An exchange taken out: ``forward(xs, *args, **kwargs)`` returns ``xs`` itself, whatever else it is given.

    In the place of the reference's ``Exchange`` it gives the outputs of a threshold of 0 (every ``|gamma| >= 0``
    kept) bit for bit, without the exchange's ``torch.where`` over the branches' mean, which links every branch to
    every other in the autograd graph although nothing is exchanged."""

    def forward(self, xs, *args, **kwargs):
        return xs


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> ModuleParallel:
    return ModuleParallel(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias))


class Bottleneck(nn.Module):
    """The residual bottleneck of the reference: exchange after ``bn2`` (the identity path keeps each
    modality's own features)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, num_parallel: int, threshold: float, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = BatchNorm2dParallel(planes, num_parallel)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = BatchNorm2dParallel(planes, num_parallel)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = BatchNorm2dParallel(planes * self.expansion, num_parallel)
        self.relu = ModuleParallel(nn.ReLU())
        self.exchange = Exchange()
        self.threshold = threshold
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(_conv(inplanes, planes * self.expansion, 1, stride),
                                            BatchNorm2dParallel(planes * self.expansion, num_parallel))

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if len(x) > 1:
            out = self.exchange(out, [getattr(self.bn2, f"bn_{i}") for i in range(len(x))], self.threshold)
        out = self.bn3(self.conv3(self.relu(out)))
        return self.relu([o + r for o, r in zip(out, residual)])


class ReferenceStyleCEN(nn.Module):
    """A compact segmentation CEN in the reference code's layout.

    stem (shared 3x3 conv, private BN, ReLU) -> one bottleneck per entry of ``planes`` (stride 1, then 2) ->
    a shared 1x1 classifier upsampled to the input size; the ensemble is ``sum_m softmax(alpha)_m *
    logits_m.detach()``.

    ``forward(xs)``: list of M ``[N, in_channels, H, W]`` -> (list of M + 1 logits ``[N, K, H, W]``, the M
    branches then the ensemble; ``softmax(alpha)`` ``[M]``), as the reference returns ``(outputs, alpha_soft)``.
    """

    def __init__(self, in_channels: int, num_classes: int, num_parallel: int = 2, stem: int = 16,
                 planes: Sequence[int] = (8, 16), threshold: float = 2e-2, dropout: float = 0.0):
        super().__init__()
        # before the classifier, as the reference's RefineNet (p = 0.5 there); 0: none, the default here
        self.dropout = ModuleParallel(nn.Dropout(dropout)) if dropout > 0 else None
        self.num_parallel = num_parallel
        self.conv1 = _conv(in_channels, stem, 3)
        self.bn1 = BatchNorm2dParallel(stem, num_parallel)
        self.relu = ModuleParallel(nn.ReLU())
        blocks, cin = [], stem
        for i, p in enumerate(planes):
            blocks.append(nn.Sequential(Bottleneck(cin, p, num_parallel, threshold, stride=1 if i == 0 else 2)))
            cin = p * Bottleneck.expansion
        self.layers = nn.ModuleList(blocks)
        self.clf_conv = _conv(cin, num_classes, 1, bias=True)
        self.alpha = nn.Parameter(torch.ones(num_parallel))

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        size = xs[0].shape[-2:]
        x = self.relu(self.bn1(self.conv1(xs)))
        for layer in self.layers:
            x = layer(x)
        if self.dropout is not None:
            x = self.dropout(x)
        out = [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in self.clf_conv(x)]
        alpha_soft = torch.softmax(self.alpha, 0)
        ens = sum(alpha_soft[i] * o.detach() for i, o in enumerate(out))
        return out + [ens], alpha_soft


def without_exchange(model: ReferenceStyleCEN) -> ReferenceStyleCEN:
    """A copy of ``model`` whose bottlenecks never exchange, the setting of Theorem 1; ``model`` itself is unchanged.

    Each bottleneck's threshold is set to 0 (every ``|gamma| >= 0`` is kept) and its ``exchange`` is replaced by a
    ``PassThrough``: the same outputs and gradients, bit for bit, but the branches are no longer linked in the
    autograd graph, so Theorem 1's local check can reuse every branch but the zeroed channel's
    (``cen_lab.theory.prefix_cache``). The copy has the same ``state_dict`` keys (the exchange holds no parameter).
    """
    import copy

    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, Bottleneck):
            module.threshold = 0.0
            module.exchange = PassThrough()
    return twin


def effective_lam(lam: float, num_parallel: int) -> float:
    """The L1 weight per step of ``hand_written_loop``: the reference adds ``lam * L1`` once per output, M + 1
    times (``cen_lab.network.penalty.per_step_lam``)."""
    return per_step_lam(lam, num_parallel + 1)


def reference_slim_params(model: nn.Module) -> list[torch.Tensor]:
    """The penalised gammas as the reference code picks them: every parameter that requires grad, ends with
    ``weight`` and has ``bn2`` in its name, in ``named_parameters()`` order; the k-th contributes its first half
    for even k and its second half for odd k (views, so the penalty's gradient reaches the parameter)."""
    slim = []
    for name, p in model.named_parameters():
        if p.requires_grad and name.endswith("weight") and "bn2" in name:
            slim.append(p[:len(p) // 2] if len(slim) % 2 == 0 else p[len(p) // 2:])
    return slim


def reference_l1(slim_params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum |gamma|`` over the slim parameters (multiply by lambda)."""
    return sum(p.abs().sum() for p in slim_params)


def segmentation_loss(model: nn.Module, batch: tuple[list[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The data loss of one batch ``(inputs, labels)``: cross-entropy of every output (branches and ensemble),
    summed, without the penalty. A ``loss_fn`` for ``cen_lab.theorem.local_check_model``."""
    xs, y = batch
    outputs, _ = model(xs)
    return sum(F.cross_entropy(o, y) for o in outputs)
