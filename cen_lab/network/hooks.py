"""Observe BN outputs and their gradients through hooks that are always removed.

Hook points are named by the BN module's dotted name (``blocks.0.bn``), the same names as the ``layer``
column of the run tables.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

__all__ = ["record_bn_output_grad_norms", "is_instance_norm"]


def is_instance_norm(module: nn.Module) -> bool:
    """torch's InstanceNorm, or a ``ModalBatchNorm2d`` with ``norm="instance"``: statistics per sample."""
    from torch.nn.modules.instancenorm import _InstanceNorm

    return isinstance(module, _InstanceNorm) or getattr(module, "norm", "batch") == "instance"


@contextlib.contextmanager
def record_bn_output_grad_norms(
        layers: Sequence[tuple[str, nn.Module | Sequence[nn.Module]]]) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``||dL/dx'||_2`` per branch and channel for each BN layer during the next backward pass: Theorem 1's
    scale of ``dL/dgamma``.

    For an InstanceNorm layer (torch's ``InstanceNorm2d``, or a ``ModalBatchNorm2d`` with ``norm="instance"``) the
    gradient is first centred over each sample's positions: ``x_hat`` sums to zero there, so
    ``dL/dgamma = sum g * x_hat`` sees only ``g`` minus its per-sample spatial mean, and under the theorem's
    independence assumption its standard deviation is the norm of that centred ``g`` (times
    ``sqrt(HW / (HW - 1))``, 1.008 at 8 x 8), not ``||g||``. A BatchNorm's ``x_hat`` sums to zero over the batch
    and space, where the mean of ``g`` is small; its norm is kept plain, as the theorem states it.

    Parameters
    ----------
    layers : sequence of (name, module or modules)
        Either one module whose output ``x'`` is ``[M, N, C, H, W]`` or a list of M ``[N, C, H, W]`` tensors
        (``ModalBatchNorm2d``), or a sequence of M modules, one per branch, each with output ``[N, C, H, W]``
        (the reference code's ``bn_0 ... bn_{M-1}`` children, or any list of per-modality BatchNorms; a LayerNorm's
        channels are its output's last dimension).

    Yields
    ------
    dict of str -> torch.Tensor
        Filled during ``backward()``: name -> ``[M, C]`` L2 norm of the gradient over batch and space (centred
        per sample for InstanceNorm; on the model's device, detached), once every branch's gradient has arrived.
        Forward hooks are removed when the block exits, even on error.
    """
    norms: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str, branch: int | None, count: int, shared: dict[int, torch.Tensor] | None):
        # branch None: one module for every branch; else this module is branch `branch` of `count`, and the
        # layer's modules collect their gradients in `shared`
        def on_forward(module: nn.Module, inputs, output: torch.Tensor | list[torch.Tensor]) -> None:
            found = {} if shared is None else shared
            # output: [M, N, C, H, W], M tensors [N, C, H, W] (ModalBatchNorm2d with stacked=False), or one
            # branch's [N, C, H, W]
            stacked = branch is None and isinstance(output, torch.Tensor)
            parts = [output] if stacked or branch is not None else list(output)
            if not parts[0].requires_grad:
                return
            total = 1 if stacked else (count if branch is not None else len(parts))
            kept = (0, 2) if stacked else (1,)  # branch and channel, or channel
            centred = is_instance_norm(module)
            channels_last = isinstance(module, nn.LayerNorm)  # a LayerNorm's per-channel weight is on the last dim

            # the hooks must not refer to the tensors they sit on: such a cycle keeps the whole autograd graph
            # (every activation) alive until Python's cyclic garbage collector runs
            def make_grad_hook(i: int):
                def on_grad(grad: torch.Tensor) -> None:
                    keep = (grad.dim() - 1,) if channels_last else kept
                    dims = [d for d in range(grad.dim()) if d not in keep]
                    g = grad.detach().float()  # fp32 also when autocast made the gradient bfloat16
                    if centred:  # the part of g that x_hat, summing to zero over each sample's positions, sees
                        g = g - g.mean(dim=(-2, -1), keepdim=True)
                    found[i] = g.pow(2).sum(dim=dims).sqrt()  # [M, C] or [C]
                    if len(found) == total:  # every branch's gradient has arrived
                        norms[name] = found[0] if stacked else torch.stack([found[j] for j in range(total)])
                        found.clear()

                return on_grad

            for i, part in enumerate(parts):
                part.register_hook(make_grad_hook(i if branch is None else branch))

        return on_forward

    try:
        for name, module in layers:
            if isinstance(module, nn.Module):
                handles.append(module.register_forward_hook(make_hook(name, None, 0, None)))
            else:
                found: dict[int, torch.Tensor] = {}  # shared by the branches' modules of this layer
                for b, part in enumerate(module):
                    handles.append(part.register_forward_hook(make_hook(name, b, len(module), found)))
        yield norms
    finally:
        for h in handles:
            h.remove()
