"""Where the L1 penalty on BN scaling factors goes, and the two ways of applying it.

The paper penalises a *disjoint* portion of each modality's gammas: for M modalities the channels are cut
into M contiguous, near-equal chunks (as ``numpy.array_split`` cuts them) and modality m penalises chunk m.

The penalty is ``lam * sum |gamma[mask]|`` over all penalised BN layers, applied once per training step.
(The reference implementation adds it inside its loop over outputs, so it counts M + 1 times per step; the
effective lambda there is (M + 1) times the nominal one. cen_lab applies the nominal value once, or once per
output with ``train.l1_per_output``.)

Update rules
------------
``subgradient``
    add ``lam * sign(gamma)`` to the gradient of each penalised gamma before the optimizer step (what
    autograd gives for ``lam * |gamma|``; 0 at gamma = 0). Gammas hover near zero but rarely hit it exactly.
``proximal``
    take the optimizer step on the data loss only, then soft-threshold:
    ``gamma <- sign(gamma) * max(|gamma| - lr * lam, 0)``. Exact for plain SGD; with momentum or Adam it is
    the usual heuristic (the optimizer's own step is not ``lr * gradient``). Gives exact zeros.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["SPARSITY_SCHEMES", "sparsity_mask", "alternate_halves", "per_step_lam", "l1_penalty", "add_l1_subgradient", "apply_l1_proximal"]

SPARSITY_SCHEMES = ("disjoint", "alternate-halves", "all", "none")


def sparsity_mask(num_channels: int, num_modalities: int, scheme: str = "disjoint", layer_index: int = 0) -> torch.Tensor:
    """Which BN scaling factors carry the L1 penalty.

    Parameters
    ----------
    num_channels : int
        C, channels of the BN layer.
    num_modalities : int
        M, number of modality branches.
    scheme : {"disjoint", "alternate-halves", "all", "none"}
        ``"disjoint"``: modality m penalises the m-th of M contiguous chunks (``numpy.array_split``);
        ``"alternate-halves"``: the reference code's rule (``alternate_halves``, which the observer uses too) with the BN
        tensors in parameter order (layer by layer, branch by branch): the k-th penalises its first ``C // 2``
        channels for even k, the rest for odd k. For M = 2 and even C it equals ``"disjoint"``;
        ``"all"``: every gamma; ``"none"``: no gamma.
    layer_index : int
        The layer's place among the penalised layers (``"alternate-halves"`` only: k = layer_index * M + m).

    Returns
    -------
    torch.Tensor
        bool ``[M, C]``.
    """
    if scheme not in SPARSITY_SCHEMES:
        raise ValueError(f"scheme must be one of {list(SPARSITY_SCHEMES)}, got {scheme!r}")
    if num_modalities < 1 or num_channels < 1:
        raise ValueError(f"need num_channels >= 1 and num_modalities >= 1, got {num_channels}, {num_modalities}")
    mask = np.zeros((num_modalities, num_channels), dtype=bool)
    if scheme == "alternate-halves":
        order = [(li, m) for li in range(layer_index + 1) for m in range(num_modalities)]
        return torch.from_numpy(alternate_halves(order, [(num_modalities, num_channels)] * (layer_index + 1))[-1])
    if scheme == "all":
        mask[:] = True
    elif scheme == "disjoint":
        if num_channels < num_modalities:
            raise ValueError(
                f"'disjoint' needs at least one channel per modality, got C = {num_channels} < M = {num_modalities}"
            )
        for m, chunk in enumerate(np.array_split(np.arange(num_channels), num_modalities)):
            mask[m, chunk] = True
    return torch.from_numpy(mask)


def alternate_halves(order: Sequence[tuple[int, int]], shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """The reference code's penalised rule from gamma tensors in parameter order.

    Parameters
    ----------
    order : sequence of (layer index, branch)
        Every penalisable gamma tensor (one branch of one layer), in the order the reference's loop meets them
        (``named_parameters()`` or state-dict order).
    shapes : sequence of (M, C)
        Each layer's shape.

    Returns
    -------
    list of numpy.ndarray
        bool ``[M, C]`` per layer: the k-th tensor of ``order`` penalises ``[:C // 2]`` for even k and
        ``[C // 2:]`` for odd k.
    """
    masks = [np.zeros(s, dtype=bool) for s in shapes]
    for k, (li, b) in enumerate(order):
        c = shapes[li][1]
        masks[li][b, (slice(None, c // 2) if k % 2 == 0 else slice(c // 2, None))] = True
    return masks



def per_step_lam(reference_lamda: float, num_outputs: int) -> float:
    """The L1 weight per step of the reference code's ``lamda``: it adds ``lamda * L1`` once per output (each of
    the M branch predictions and the ensemble: ``num_outputs = M + 1``), so one step's gradient carries
    ``num_outputs * lamda``. cen_lab's ``lam`` (``observe``, ``import_checkpoints``, the Theorem 1 check) is
    always this per-step weight."""
    if not reference_lamda >= 0 or num_outputs < 1:
        raise ValueError(f"need reference_lamda >= 0 and num_outputs >= 1, got {reference_lamda!r}, {num_outputs!r}")
    return reference_lamda * num_outputs


def l1_penalty(gammas: Iterable[torch.Tensor], masks: Iterable[torch.Tensor], lam: float) -> torch.Tensor:
    """``lam * sum |gamma[mask]|`` over layers; ``gammas`` and ``masks`` are matching ``[M, C]`` tensors."""
    total = None
    for g, mask in zip(gammas, masks, strict=True):
        term = (g.abs() * mask).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return lam * total


@torch.no_grad()
def add_l1_subgradient(weights: Iterable[torch.Tensor], masks: Iterable[torch.Tensor], lam: float) -> None:
    """Add ``lam * sign(w) * mask`` to ``w.grad`` for each penalised weight (in place).

    ``weights`` are parameters whose values view as ``[M, C]`` (see ``ModalBatchNorm2d.weight``).
    """
    for w, mask in zip(weights, masks, strict=True):
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad.add_(lam * torch.sign(w) * mask.view_as(w).to(w.dtype))


@torch.no_grad()
def apply_l1_proximal(weights: Iterable[torch.Tensor], masks: Iterable[torch.Tensor], step: float) -> None:
    """Soft-threshold the penalised entries in place: ``w <- sign(w) * max(|w| - step, 0)``, ``step = lr * lam``."""
    for w, mask in zip(weights, masks, strict=True):
        shrunk = torch.sign(w) * torch.clamp(w.abs() - step, min=0.0)
        w.copy_(torch.where(mask.view_as(w), shrunk, w))
