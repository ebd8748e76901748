"""Observe BN outputs and their gradients through hooks that are always removed.

Hook points are named by the BN module's dotted name (``blocks.0.bn``), the same names as the ``layer``
column of the run tables.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

__all__ = ["record_bn_output_grad_norms"]


@contextlib.contextmanager
def record_bn_output_grad_norms(layers: Sequence[tuple[str, nn.Module]]) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``||dL/dx'||_2`` per modality and channel for each BN layer during the next backward pass.

    Parameters
    ----------
    layers : sequence of (name, module)
        BN modules whose output ``x'`` has shape ``[M, N, C, H, W]``.

    Yields
    ------
    dict of str -> torch.Tensor
        Filled during ``backward()``: name -> ``[M, C]`` L2 norm of the gradient over batch and space
        (on the model's device, detached). Forward hooks are removed when the block exits, even on error.
    """
    norms: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def on_forward(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if output.requires_grad:
                dims = [d for d in range(output.dim()) if d not in (0, 2)]  # all but modality and channel

                def on_grad(grad: torch.Tensor) -> None:
                    norms[name] = grad.detach().pow(2).sum(dim=dims).sqrt()  # [M, C]

                output.register_hook(on_grad)

        return on_forward

    try:
        for name, module in layers:
            handles.append(module.register_forward_hook(make_hook(name)))
        yield norms
    finally:
        for h in handles:
            h.remove()
