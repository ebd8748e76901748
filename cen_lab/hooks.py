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
        BN modules whose output ``x'`` has shape ``[M, N, C, H, W]`` (or is a list of M ``[N, C, H, W]``).

    Yields
    ------
    dict of str -> torch.Tensor
        Filled during ``backward()``: name -> ``[M, C]`` L2 norm of the gradient over batch and space
        (on the model's device, detached). Forward hooks are removed when the block exits, even on error.
    """
    norms: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def on_forward(module: nn.Module, inputs, output: torch.Tensor | list[torch.Tensor]) -> None:
            # output: [M, N, C, H, W], or M tensors [N, C, H, W] (ModalBatchNorm2d with stacked=False)
            stacked = isinstance(output, torch.Tensor)
            parts = [output] if stacked else list(output)
            if not parts[0].requires_grad:
                return
            count = len(parts)
            kept = (0, 2) if stacked else (1,)  # branch and channel, or channel
            found: dict[int, torch.Tensor] = {}

            # the hooks must not refer to the tensors they sit on: such a cycle keeps the whole autograd graph
            # (every activation) alive until Python's cyclic garbage collector runs
            def make_grad_hook(i: int):
                def on_grad(grad: torch.Tensor) -> None:
                    dims = [d for d in range(grad.dim()) if d not in kept]
                    found[i] = grad.detach().pow(2).sum(dim=dims).sqrt()  # [M, C] or [C]
                    if len(found) == count:  # every branch's gradient has arrived
                        norms[name] = found[0] if stacked else torch.stack([found[j] for j in range(count)])

                return on_grad

            for i, part in enumerate(parts):
                part.register_hook(make_grad_hook(i))

        return on_forward

    try:
        for name, module in layers:
            handles.append(module.register_forward_hook(make_hook(name)))
        yield norms
    finally:
        for h in handles:
            h.remove()
