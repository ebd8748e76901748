"""Channel exchange between modality branches (Wang et al., NeurIPS 2020).

After a penalised BatchNorm, channel ``c`` of modality ``m`` keeps its own output where
``|gamma[m, c]| >= threshold`` (a gamma exactly at the threshold is kept); otherwise it receives another
branch's output for that channel. Which one is the *rule*:

- ``"mean"`` (the paper's): the mean of the other modalities' outputs (for M = 2: the other modality's);
- ``"cyclic"``: modality m receives from modality (m + 1) mod M. The TPAMI paper's cycle-fusion rule is not
  public in code; this is cen_lab's reading of it (for M = 2 it equals ``"mean"``);
- ``"random"``: the mean rule applied to as many channels as the gamma criterion selects, but chosen by a fixed
  random order instead of by gamma (a control: is the gamma criterion better than chance?);
- ``"none"``: nothing is exchanged.

A rule is one small function ``(x [M, N, C, ...]) -> donors [M, N, C, ...]`` in ``DONOR_RULES``; add one there
to try another. ``channel_exchange`` then keeps ``x`` where ``keep`` and takes the donors elsewhere.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["EXCHANGE_MODES", "DONOR_RULES", "channel_exchange", "exchange_keep", "exchange_sources"]

# source code of a channel that receives the mean of all other modalities (only when M > 2)
SOURCE_MEAN_OF_OTHERS = -1


def _mean_of_others(x: torch.Tensor) -> torch.Tensor:
    m = x.shape[0]
    return (x.sum(dim=0, keepdim=True) - x) / (m - 1)  # one reduction instead of M gathers


def _next_modality(x: torch.Tensor) -> torch.Tensor:
    return x.roll(shifts=-1, dims=0)  # donors[m] = x[(m + 1) % M]


DONOR_RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"mean": _mean_of_others, "cyclic": _next_modality}
EXCHANGE_MODES = ("mean", "cyclic", "random", "none")


def _check(x: torch.Tensor, gamma: torch.Tensor, threshold: float, mode: str, rank: torch.Tensor | None) -> None:
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
    if mode == "random" and (rank is None or rank.shape != gamma.shape):
        raise ValueError("mode 'random' needs rank, an [M, C] tensor of each channel's place in a random order")


def exchange_keep(gamma: torch.Tensor, threshold: float, mode: str = "mean",
                  rank: torch.Tensor | None = None) -> torch.Tensor:
    """bool ``[M, C]``: which channels keep their own output.

    For ``"random"``, modality m exchanges as many channels as ``|gamma[m]| < threshold`` selects, namely those
    with the smallest ``rank[m]`` (a fixed random permutation of ``0..C-1`` per modality).
    """
    if mode == "none":
        return torch.ones_like(gamma, dtype=torch.bool)
    keep = gamma.detach().abs() >= threshold
    if mode == "random":
        count = (~keep).sum(dim=1, keepdim=True)  # [M, 1] channels to exchange per modality
        keep = rank >= count
    return keep


def channel_exchange(x: torch.Tensor, gamma: torch.Tensor, threshold: float, mode: str = "mean",
                     rank: torch.Tensor | None = None) -> torch.Tensor:
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
    mode : {"mean", "cyclic", "random", "none"}
        The rule (see the module docstring); ``"none"`` returns ``x`` unchanged.
    rank : torch.Tensor, optional
        For ``"random"``: ``[M, C]`` places of the channels in a fixed random order.

    Returns
    -------
    torch.Tensor
        Same shape as ``x`` (``x`` itself when nothing is exchanged on the CPU). Gradients flow to whichever
        branch supplied each value.
    """
    _check(x, gamma, threshold, mode, rank)
    if mode == "none":
        return x
    m = x.shape[0]
    keep = exchange_keep(gamma, threshold, mode, rank)
    if not x.is_cuda and bool(keep.all()):  # nothing exchanged (checking would cost a host sync on a GPU)
        return x
    keep = keep.view(m, 1, x.shape[2], *([1] * (x.dim() - 3)))  # [M, 1, C, 1, ...]
    if m == 2:  # every rule gives the other modality
        return _ExchangeTwo.apply(x, keep)
    donors = DONOR_RULES["mean" if mode == "random" else mode](x)
    return torch.where(keep, x, donors)


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


def exchange_sources(gamma: torch.Tensor, threshold: float, mode: str = "mean",
                     rank: torch.Tensor | None = None) -> torch.Tensor:
    """Where each channel's value comes from after ``channel_exchange``.

    Returns
    -------
    torch.Tensor
        int64 ``[M, C]``: ``m`` itself when kept; when exchanged, the donor modality's index (M = 2, or the
        ``"cyclic"`` rule) or ``-1`` for the mean of all others (M > 2). With ``mode="none"`` every channel is
        its own.
    """
    if mode not in EXCHANGE_MODES:
        raise ValueError(f"mode must be one of {list(EXCHANGE_MODES)}, got {mode!r}")
    m, c = gamma.shape
    own = torch.arange(m, device=gamma.device).view(m, 1).expand(m, c)
    keep = exchange_keep(gamma, threshold, mode, rank)
    if m == 2 or mode == "cyclic":
        donor = (own + 1) % m
    else:
        donor = torch.full_like(own, SOURCE_MEAN_OF_OTHERS)
    return torch.where(keep, own, donor)
