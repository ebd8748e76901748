"""Channel exchange between modality branches (Wang et al., NeurIPS 2020).

After a penalised BatchNorm, channel ``c`` of modality ``m`` keeps its own output where
``|gamma[m, c]| >= threshold``; otherwise it is replaced by the mean of the other modalities' BN outputs
for that channel (for M = 2: the other modality's). A gamma exactly at the threshold is kept.
"""

from __future__ import annotations

import torch

__all__ = ["EXCHANGE_MODES", "channel_exchange", "exchange_sources"]

EXCHANGE_MODES = ("mean", "none")

# source code of a channel that receives the mean of all other modalities (only when M > 2)
SOURCE_MEAN_OF_OTHERS = -1


def _check(x: torch.Tensor, gamma: torch.Tensor, threshold: float, mode: str) -> None:
    if mode not in EXCHANGE_MODES:
        raise ValueError(f"mode must be one of {list(EXCHANGE_MODES)}, got {mode!r}")
    if x.dim() < 3:
        raise ValueError(f"x must have shape [M, N, C, ...], got {tuple(x.shape)}")
    if gamma.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"gamma must have shape [M, C] = {[x.shape[0], x.shape[2]]}, got {list(gamma.shape)}")
    if mode != "none" and x.shape[0] < 2:
        raise ValueError(f"exchange needs M >= 2 modalities, got M = {x.shape[0]}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")


def channel_exchange(x: torch.Tensor, gamma: torch.Tensor, threshold: float, mode: str = "mean") -> torch.Tensor:
    """Exchange channels whose BN scaling factor is small.

    Parameters
    ----------
    x : torch.Tensor
        BN outputs ``[M, N, C, *spatial]``: M modalities, batch N, C channels.
    gamma : torch.Tensor
        BN scaling factors ``[M, C]`` of the same layer (only their absolute values are read; no gradient
        flows through the choice).
    threshold : float
        Channels with ``|gamma| < threshold`` are replaced.
    mode : {"mean", "none"}
        ``"mean"``: replace by the mean of the other modalities' outputs; ``"none"``: return ``x`` unchanged.

    Returns
    -------
    torch.Tensor
        Same shape as ``x``. Gradients flow to whichever branch supplied each value.
    """
    _check(x, gamma, threshold, mode)
    if mode == "none":
        return x
    m = x.shape[0]
    keep = (gamma.detach().abs() >= threshold).view(m, 1, x.shape[2], *([1] * (x.dim() - 3)))  # [M, 1, C, 1, ...]
    if m == 2:
        others = x.flip(0)  # exact: the other modality
    else:
        idx = torch.tensor([[j for j in range(m) if j != i] for i in range(m)], device=x.device)  # [M, M-1]
        others = x[idx].mean(dim=1)  # [M, M-1, N, C, ...] -> [M, N, C, ...]
    return torch.where(keep, x, others)


def exchange_sources(gamma: torch.Tensor, threshold: float, mode: str = "mean") -> torch.Tensor:
    """Where each channel's value comes from after ``channel_exchange``.

    Parameters
    ----------
    gamma : torch.Tensor
        ``[M, C]`` BN scaling factors.

    Returns
    -------
    torch.Tensor
        int64 ``[M, C]``: ``m`` itself when kept; the other modality's index when exchanged and M = 2;
        ``-1`` (mean of all others) when exchanged and M > 2. With ``mode="none"`` every channel is its own.
    """
    m, c = gamma.shape
    own = torch.arange(m, device=gamma.device).view(m, 1).expand(m, c)
    if mode == "none":
        return own.clone()
    if mode not in EXCHANGE_MODES:
        raise ValueError(f"mode must be one of {list(EXCHANGE_MODES)}, got {mode!r}")
    keep = gamma.detach().abs() >= threshold
    donor = own.flip(0) if m == 2 else torch.full_like(own, SOURCE_MEAN_OF_OTHERS)
    return torch.where(keep, own, donor)
