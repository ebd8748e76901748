"""The zoo's translation CEN: a small pix2pix-style U-Net generator written the way the reference's
``image2image_translation/`` code writes one (a foreign layout for ``cen_lab.observe`` and
``cen_lab.import_checkpoints``, not an architecture of ``cen_lab.train``).

- ``InstanceNorm2dParallel``: M private affine ``nn.InstanceNorm2d`` children ``insnorm_0 ... insnorm_{M-1}``
  (with running statistics, as the reference's);
- ``TranslatorDown``: an encoder block, a shared 4x4 stride-2 conv, then (except in the first and last block) the
  per-domain norm named ``insnorm_conv`` and the exchange (``cen_lab.network.zoo.Exchange``: ``|gamma| <
  threshold`` takes the other domains' mean), then LeakyReLU(0.2);
- ``TranslatorUp``: a decoder block, a shared 4x4 stride-2 transposed conv, a per-domain norm named ``insnorm``
  that neither exchanges nor is penalised (the reference's filter picks ``insnorm_conv`` only), ReLU, and the
  skip concatenated;
- ``ReferenceStyleTranslator``: the generator, a tanh output per domain and the ensemble of the detached outputs
  weighted by ``softmax(alpha)``;
- ``translator_slim_params``: the penalised gammas as the reference picks them, alternating halves of the
  ``insnorm_conv`` weights in parameter order, and ``insnorm_params``, the list the reference saves each epoch.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .zoo import Exchange, ModuleParallel

__all__ = ["InstanceNorm2dParallel", "TranslatorDown", "TranslatorUp", "ReferenceStyleTranslator",
           "translator_slim_params", "insnorm_params"]


class InstanceNorm2dParallel(nn.Module):
    """A private affine ``nn.InstanceNorm2d`` per domain, as children ``insnorm_0 ... insnorm_{M-1}``."""

    def __init__(self, num_features: int, num_parallel: int):
        super().__init__()
        self.num_parallel = num_parallel
        for i in range(num_parallel):
            setattr(self, f"insnorm_{i}", nn.InstanceNorm2d(num_features, affine=True, track_running_stats=True))

    def norms(self) -> list[nn.InstanceNorm2d]:
        return [getattr(self, f"insnorm_{i}") for i in range(self.num_parallel)]

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [norm(x) for norm, x in zip(self.norms(), xs)]


class TranslatorDown(nn.Module):
    """shared conv (4x4, stride 2) -> [``insnorm_conv`` -> exchange] -> LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, num_parallel: int, threshold: float, norm: bool = True,
                 build_unapplied: bool = False):
        super().__init__()
        self.conv = ModuleParallel(nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm))
        # build_unapplied: the reference builds the norm of a block without one too, and never runs it
        self.insnorm_conv = InstanceNorm2dParallel(cout, num_parallel) if norm or build_unapplied else None
        self.instance_norm = norm
        self.exchange = Exchange()
        self.threshold = threshold

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        ys = self.conv(xs)
        if self.instance_norm:
            ys = self.insnorm_conv(ys)
            if len(ys) > 1:
                ys = self.exchange(ys, self.insnorm_conv.norms(), self.threshold)
        return [F.leaky_relu(y, 0.2) for y in ys]


class TranslatorUp(nn.Module):
    """shared transposed conv (4x4, stride 2) -> per-domain ``insnorm`` -> ReLU, then the skip concatenated."""

    def __init__(self, cin: int, cout: int, num_parallel: int):
        super().__init__()
        self.conv = ModuleParallel(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False))
        self.insnorm = InstanceNorm2dParallel(cout, num_parallel)

    def forward(self, xs: list[torch.Tensor], skips: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat([F.relu(y), s], 1) for y, s in zip(self.insnorm(self.conv(xs)), skips)]


class ReferenceStyleTranslator(nn.Module):
    """A compact translation CEN in the reference code's layout (see the module docstring).

    The encoder has one ``TranslatorDown`` per entry of ``widths`` (each halves the size; the first and the last
    apply no norm, as the reference's; with ``unapplied_norms`` they also build an ``insnorm_conv`` that their
    forward never runs, as the reference's do: a layout whose norms exist but exchange nothing), the decoder mirrors it with skips, and a last shared transposed conv with
    tanh gives each domain's image in [-1, 1]. ``forward(xs)``: list of M ``[N, in_channels, H, W]`` (H divisible
    by ``2 ** len(widths)``) -> (list of M + 1 images ``[N, out_channels, H, W]``, the M domains' then the
    ensemble; ``softmax(alpha)`` ``[M]``).
    """

    def __init__(self, in_channels: int, out_channels: int = 3, num_parallel: int = 2,
                 widths: Sequence[int] = (16, 32, 64, 64), threshold: float = 1e-2, unapplied_norms: bool = False):
        super().__init__()
        if len(widths) < 3:
            raise ValueError(f"widths needs at least 3 encoder blocks (the first and last have no norm), got {widths}")
        self.num_parallel = num_parallel
        last = len(widths) - 1
        self.down = nn.ModuleList(TranslatorDown(cin, cout, num_parallel, threshold, norm=0 < i < last,
                                                 build_unapplied=unapplied_norms)
                                  for i, (cin, cout) in enumerate(zip([in_channels, *widths[:-1]], widths)))
        ups, cin = [], widths[-1]
        for i in reversed(range(last)):
            ups.append(TranslatorUp(cin, widths[i], num_parallel))
            cin = 2 * widths[i]
        self.up = nn.ModuleList(ups)
        self.final = ModuleParallel(nn.ConvTranspose2d(cin, out_channels, 4, 2, 1))
        self.alpha = nn.Parameter(torch.ones(num_parallel))

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for block in self.down:
            xs = block(xs)
            skips.append(xs)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            xs = block(xs, skip)
        out = [torch.tanh(y) for y in self.final(xs)]
        alpha_soft = torch.softmax(self.alpha, 0)
        ens = sum(alpha_soft[i] * o.detach() for i, o in enumerate(out))
        return out + [ens], alpha_soft


def insnorm_params(model: nn.Module) -> list[nn.Parameter]:
    """Every ``insnorm_conv`` weight, in ``named_parameters()`` order: the list the reference saves each epoch
    (``torch.save(insnorm_params, "insnorm_params_XXX.pth")``; layer 0's domains, then layer 1's, ...)."""
    return [p for name, p in model.named_parameters() if "insnorm_conv" in name and name.endswith("weight")]


def translator_slim_params(model: nn.Module) -> list[torch.Tensor]:
    """The penalised gammas as the reference's translation code picks them: the k-th ``insnorm_conv`` weight
    contributes its first half for even k and its second half for odd k (views, so the gradient reaches it)."""
    return [p[:len(p) // 2] if k % 2 == 0 else p[len(p) // 2:] for k, p in enumerate(insnorm_params(model))]
