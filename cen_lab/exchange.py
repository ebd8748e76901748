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
        Same shape as ``x`` (``x`` itself when nothing is exchanged on the CPU). Gradients flow to whichever
        branch supplied each value.
    """
    _check(x, gamma, threshold, mode)
    if mode == "none":
        return x
    m = x.shape[0]
    keep = (gamma.detach().abs() >= threshold).view(m, 1, x.shape[2], *([1] * (x.dim() - 3)))  # [M, 1, C, 1, ...]
    if not x.is_cuda and bool(keep.all()):  # nothing exchanged (checking would cost a host sync on a GPU)
        return x
    if m == 2:
        return _ExchangeTwo.apply(x, keep)
    # mean of the others as (sum - own) / (M - 1): one reduction instead of M gathers
    others = (x.sum(dim=0, keepdim=True) - x) / (m - 1)
    return torch.where(keep, x, others)


class _ExchangeTwo(torch.autograd.Function):
    """Exchange for M = 2 with a lean backward (same values and gradients as ``torch.where(keep, x, x.flip(0))``).

    Forward writes each modality's ``where`` straight into one output. Backward gives each modality its own
    gradient where it kept the channel, then adds, for the exchanged channels of the *other* modality only, the
    gradient that flowed through them (an ``index_add_`` over those channels).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # x [2, N, C, ...], keep [2, 1, C, 1...]
        out = torch.empty_like(x)
        torch.where(keep[0], x[0], x[1], out=out[0])
        torch.where(keep[1], x[1], x[0], out=out[1])
        ctx.save_for_backward(keep)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        grad = grad.contiguous()
        gx = torch.empty_like(grad)
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        for i in (0, 1):
            torch.where(keep[i], grad[i], zero, out=gx[i])
        for i in (0, 1):
            # channels that modality 1 - i took from modality i: the gradient of out[1 - i] there flows to x[i]
            if grad.is_cuda:  # a full masked pass, but no host sync
                gx[i].add_(torch.where(keep[1 - i], zero, grad[1 - i]))
                continue
            donated = torch.nonzero(~keep[1 - i].flatten()).flatten()
            if donated.numel():
                gx[i].index_add_(1, donated, grad[1 - i].index_select(1, donated))
        return gx, None


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
