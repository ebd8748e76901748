"""A compact CEN U-Net for translation (``ModelConfig.arch = "unet"``): the toy analogue of the reference's
pix2pix-style generator (``image2image_translation/`` of yikaiw/CEN).

Activations of all branches travel together as ``[B, N, C, H, W]``, as in ``CENNet``. Every convolution is shared by
the branches; every norm is private to one (``ModalBatchNorm2d``, of the family ``model.norm``: InstanceNorm in the
``translate`` preset, as the reference's).

- **Encoder**, one ``DownBlock`` per entry of ``model.widths``: 3x3 conv (stride ``model.strides[b]``) -> private
  norm -> channel exchange -> LeakyReLU(0.2). Its norms are the ones penalised and exchanging (``cen_layers``), as
  the reference's ``insnorm_conv`` layers after each encoder conv.
- **Decoder**, from the deepest level up: upsample (bilinear) to the next shallower level's size, concatenate that
  level's encoder output (the skip), 3x3 conv -> private norm (no exchange, no penalty) -> ReLU. Last, upsample to
  the input size and concatenate the input itself.
- **Heads**, one per task: a 3x3 conv shared by the task's branches, then a sigmoid for image tasks (``shade``):
  each branch predicts an image, and the ensemble is ``sum_m softmax(alpha)_m * image_m.detach()`` as in the
  reference. ``fusion = "late"`` averages the branch images instead.

What the toy leaves out of the reference, and why: the first and last encoder blocks of the reference have no
norm because its 256-pixel images reach 1 x 1 at the bottleneck, where an InstanceNorm is undefined; at 32 pixels
and three levels the deepest map is 4 x 4, so every encoder block keeps its norm. The reference's 4x4 strided
convs and transposed convs become 3x3 convs with bilinear upsampling (no checkerboard at this size), and its decoder
dropout (pix2pix's noise source for the adversarial loss) is not used; the optional adversarial term
(``train.gan_weight``, ``cen_lab.network.patchgan``) trains without it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, resolve_between
from .base import CENBase, CENOutput
from .blocks import CENBlock, ModalBatchNorm2d, ModalConv2d
from .exchange import BranchGrid
from .tasks import task_specs

__all__ = ["DownBlock", "UpBlock", "UNetCEN"]


class DownBlock(CENBlock):
    """An encoder block: conv (shared) -> norm (private) -> exchange -> LeakyReLU(0.2), as the reference's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self._exchange(self.bn, self.conv(x)), 0.2)


class UpBlock(nn.Module):
    """A decoder block: upsample to the skip's size, concatenate the skip, conv (shared) -> norm (private) -> ReLU."""

    def __init__(self, branches: int, cin: int, cskip: int, cout: int, share_convs: bool):
        super().__init__()
        self.conv = ModalConv2d(branches, cin + cskip, cout, 3, share=share_convs)
        self.bn = ModalBatchNorm2d(branches, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(torch.cat([_resize(x, skip.shape[-2:]), skip], 2))))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``[B, N, C, h, w]`` to ``size`` (a no-op at that size already)."""
    if x.shape[-2:] == tuple(size):
        return x
    y = F.interpolate(x.flatten(0, 1), size=tuple(size), mode="bilinear", align_corners=False)
    return y.view(*x.shape[:3], *y.shape[-2:])


class UNetCEN(CENBase):
    """A CEN U-Net (see the module docstring). Same constructor, outputs and attributes as
    ``cen_lab.network.architectures.CENNet``:
    ``forward_tasks`` gives task -> ``CENOutput`` of ``[M, N, K, H, W]`` branch predictions and their ensemble,
    ``cen_layers`` the encoder norms, ``blocks`` the encoder blocks.
    """

    def __init__(self, num_modalities: int, in_channels: int, num_classes: int, tasks: str | Sequence[str],
                 config: ModelConfig, sparsity: str = "disjoint"):
        super().__init__()
        tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
        self.specs = task_specs(tasks, num_classes)
        not_dense = [s.name for s in self.specs if not s.dense]
        if not_dense:
            raise ValueError(f"model.arch='unet' predicts per pixel; task {not_dense[0]!r} is per image")
        if config.fusion.startswith("aggregate"):
            raise ValueError(f"model.arch='unet' has no fusion {config.fusion!r}: use cen, early or late")
        self.num_modalities, self.tasks, self.config = num_modalities, tasks, config
        t = len(tasks)
        cen = set(config.cen_blocks)
        self.merge_after, self.stem = None, None
        self.grid = grid = BranchGrid(num_modalities, t, resolve_between(num_modalities, t, config.exchange_between))
        blocks, cin = [], in_channels
        for b, (width, stride) in enumerate(zip(config.widths, config.strides)):
            mode = config.exchange if (b in cen and grid.size > 1) else "none"
            block = DownBlock(grid, cin, width, stride, config.share_convs, mode, config.threshold)
            self._init_cen_norm(block.bn, b, grid.size, sparsity)
            blocks.append(block)
            cin = width
        self.blocks = nn.ModuleList(blocks)
        widths = config.widths
        self.ups = nn.ModuleList(UpBlock(grid.size, widths[b + 1], widths[b], widths[b], config.share_convs)
                                 for b in reversed(range(len(widths) - 1)))
        self.outputs = grid.modalities
        self.heads = nn.ModuleList(ModalConv2d(grid.size, widths[0] + in_channels, spec.channels, 3, bias=True,
                                               share=config.share_convs) for spec in self.specs)
        self.alpha = nn.Parameter(torch.ones(t, self.outputs))
        self._set_norm_family()

    def forward_tasks(self, x: torch.Tensor) -> dict[str, CENOutput]:
        """``x``: ``[M, N, C_in, H, W]`` -> task name -> ``CENOutput``."""
        t = len(self.tasks)
        if t > 1:
            x = x.repeat_interleave(t, dim=0)  # branch m * T + t reads modality m
        skips, y = [], x
        for block in self.blocks:
            y = block(y)
            skips.append(y)
        for up, skip in zip(self.ups, reversed(skips[:-1])):
            y = up(y, skip)
        y = torch.cat([_resize(y, x.shape[-2:]), x], 2)  # [B, N, widths[0] + C_in, H, W]
        out = {}
        for i, (spec, head) in enumerate(zip(self.specs, self.heads)):
            out[spec.name] = self._task_output(i, spec, head(y.view(self.outputs, t, *y.shape[1:])[:, i]))
        return out
