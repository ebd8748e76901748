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

Branches: modalities x tasks
----------------------------
In a multitask CEN the first dimension holds *branches*, not modalities: branch ``b = m * T + t`` carries
modality m for task t (``BranchGrid``). Which branches exchange with which is ``BranchGrid.between``:

- ``"modalities"``: branch (m, t) exchanges with the other modalities of the same task (T groups of M);
  with T = 1 this is the paper's multimodal fusion;
- ``"tasks"``: with the other tasks of the same modality (M groups of T); with M = 1 this is multitask learning
  on one input (the TPAMI extension's multitask scenario);
- ``"both"``: with the union of the two, i.e. every branch that shares its modality or its task (never one
  that shares neither); only the mean rule (and "random", which uses it) is defined on this union.

The rule is applied within each group exactly as it is for modalities. ``donor_matrix`` gives the resulting
``[B, B]`` weights, computed by the same code path, so the logged sources always match the forward pass.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import torch

__all__ = ["EXCHANGE_MODES", "DONOR_RULES", "BranchGrid", "channel_exchange", "exchange_keep", "exchange_sources",
           "donor_matrix"]

# source code of a channel that receives the mean of all other modalities (only when M > 2)
SOURCE_MEAN_OF_OTHERS = -1


def _mean_of_others(x: torch.Tensor) -> torch.Tensor:
    m = x.shape[0]
    return (x.sum(dim=0, keepdim=True) - x) / (m - 1)  # one reduction instead of M gathers


def _next_modality(x: torch.Tensor) -> torch.Tensor:
    return x.roll(shifts=-1, dims=0)  # donors[m] = x[(m + 1) % M]


DONOR_RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"mean": _mean_of_others, "cyclic": _next_modality}
EXCHANGE_MODES = ("mean", "cyclic", "random", "none")
BETWEEN = ("modalities", "tasks", "both")


class BranchGrid(NamedTuple):
    """The branches of a layer: ``modalities * tasks`` of them, branch ``b = m * tasks + t``, and which of them
    exchange (``between``; see the module docstring). ``BranchGrid(M)`` is plain multimodal fusion."""

    modalities: int
    tasks: int = 1
    between: str = "modalities"

    @property
    def size(self) -> int:
        return self.modalities * self.tasks

    def groups(self) -> str:
        """``between`` reduced to what it means for this grid: ``"all"`` when every branch is in one group."""
        m, t, between = self.modalities, self.tasks, self.between
        if between == "both" and (m == 1 or t == 1):
            between = "tasks" if m == 1 else "modalities"
        if (between == "modalities" and t == 1) or (between == "tasks" and m == 1):
            return "all"
        return between


def _donors(x: torch.Tensor, rule: str, grid: BranchGrid | None) -> torch.Tensor:
    """Apply DONOR_RULES[rule] within each group of branches: ``x`` ``[B, N, C, ...]`` -> donors, same shape."""
    fn = DONOR_RULES[rule]
    groups = "all" if grid is None else grid.groups()
    if groups == "all":
        return fn(x)
    m, t, n = grid.modalities, grid.tasks, x.shape[1]
    if groups == "modalities":  # [M, T*N, C, ...]: the modality axis first, tasks folded into the batch
        return fn(x.reshape(m, t * n, *x.shape[2:])).view_as(x)
    if groups == "tasks":  # [T, M*N, C, ...]
        by_task = x.view(m, t, *x.shape[1:]).transpose(0, 1).reshape(t, m * n, *x.shape[2:])
        return fn(by_task).view(t, m, *x.shape[1:]).transpose(0, 1).reshape(x.shape)
    if rule != "mean":
        raise ValueError(f"exchange_between='both' is defined for the mean rule only, not {rule!r}")
    # mean over the union of the two groups (they share only the branch itself)
    across_mod = _donors(x, rule, grid._replace(between="modalities"))
    across_task = _donors(x, rule, grid._replace(between="tasks"))
    return (across_mod * (m - 1) + across_task * (t - 1)) / (m + t - 2)


def donor_matrix(mode: str, grid: BranchGrid) -> torch.Tensor:
    """float64 ``[B, B]``: row b holds the weights with which branch b's exchanged channels mix the branches'
    outputs (zero on the diagonal; rows sum to 1). ``"random"`` uses the mean rule's weights."""
    if mode not in EXCHANGE_MODES or mode == "none":
        raise ValueError(f"mode must be one of {list(EXCHANGE_MODES[:-1])}, got {mode!r}")
    return _donor_weights("mean" if mode == "random" else mode, grid).clone()


@functools.lru_cache(maxsize=64)
def _donor_weights(rule: str, grid: BranchGrid) -> torch.Tensor:
    """``donor_matrix`` computed once per (rule, grid): the logger asks for it at every logged step. Read-only."""
    b = grid.size
    eye = torch.eye(b, dtype=torch.float64).view(b, 1, b)  # branch k's "output" is the indicator of k
    return _donors(eye, rule, grid).view(b, b)


def _check(shape: tuple[int, ...], gamma: torch.Tensor, threshold: float, mode: str, rank: torch.Tensor | None,
           grid: BranchGrid | None) -> None:
    if grid is not None:
        if grid.between not in BETWEEN:
            raise ValueError(f"grid.between must be one of {list(BETWEEN)}, got {grid.between!r}")
        if grid.size != shape[0]:
            raise ValueError(f"grid has {grid.modalities} x {grid.tasks} branches but x has {shape[0]}")
        if mode == "cyclic" and grid.groups() == "both":
            raise ValueError("mode 'cyclic' is defined within one group; with between='both' use 'mean' or 'random'")
    if mode not in EXCHANGE_MODES:
        raise ValueError(f"mode must be one of {list(EXCHANGE_MODES)}, got {mode!r}")
    if len(shape) < 3:
        raise ValueError(f"x must have shape [M, N, C, ...], got {tuple(shape)}")
    if gamma.shape != (shape[0], shape[2]):
        raise ValueError(f"gamma must have shape [M, C] = {[shape[0], shape[2]]}, got {list(gamma.shape)}")
    if mode != "none" and shape[0] < 2:
        raise ValueError(f"exchange needs M >= 2 branches, got M = {shape[0]}")
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


def channel_exchange(x: torch.Tensor | Sequence[torch.Tensor], gamma: torch.Tensor, threshold: float,
                     mode: str = "mean", rank: torch.Tensor | None = None,
                     grid: BranchGrid | None = None) -> torch.Tensor:
    """Exchange channels whose BN scaling factor is small.

    Parameters
    ----------
    x : torch.Tensor or sequence of torch.Tensor
        BN outputs ``[M, N, C, *spatial]``: M modalities, batch N, C channels; or the M branches' outputs
        ``[N, C, *spatial]`` unstacked (what ``ModalBatchNorm2d(..., stacked=False)`` gives), which spares a copy.
    gamma : torch.Tensor
        BN scaling factors ``[M, C]`` of the same layer (only their absolute values are read; no gradient
        flows through the choice).
    threshold : float
        Channels with ``|gamma| < threshold`` are replaced.
    mode : {"mean", "cyclic", "random", "none"}
        The rule (see the module docstring); ``"none"`` returns ``x`` unchanged.
    rank : torch.Tensor, optional
        For ``"random"``: ``[M, C]`` places of the channels in a fixed random order.
    grid : BranchGrid, optional
        When the first dimension holds modality x task branches: their arrangement and which exchange
        (default: all M are modalities of one task).

    Returns
    -------
    torch.Tensor
        ``[M, N, C, *spatial]`` (``x`` itself when a stacked ``x`` has nothing exchanged on the CPU). Gradients
        flow to whichever branch supplied each value.
    """
    parts = None if isinstance(x, torch.Tensor) else list(x)
    first = x if parts is None else parts[0]
    shape = tuple(x.shape) if parts is None else (len(parts), *first.shape)
    _check(shape, gamma, threshold, mode, rank, grid)
    m, cuda = shape[0], first.is_cuda
    keep = exchange_keep(gamma, threshold, mode, rank)
    # nothing exchanged (checking would cost a host sync on a GPU)
    if mode == "none" or (not cuda and bool(keep.all())):
        return x if parts is None else torch.stack(parts)
    if m == 2 and not cuda and (grid is None or grid.groups() == "all"):  # every rule gives the other branch
        return _ExchangeTwoRuns.apply(*(x.unbind(0) if parts is None else parts), _channel_runs(keep.tolist()))
    x = x if parts is None else torch.stack(parts)
    keep = keep.view(m, 1, shape[2], *([1] * (len(shape) - 3)))  # [M, 1, C, 1, ...]
    if m == 2 and (grid is None or grid.groups() == "all"):
        return _ExchangeTwo.apply(x, keep)
    donors = _donors(x, "mean" if mode == "random" else mode, grid)
    return torch.where(keep, x, donors)


def _channel_runs(keep: list[list[bool]]) -> list[tuple[int, int, bool, bool]]:
    """Maximal runs of channels with the same (keep[0][c], keep[1][c]): ``(start, end, keep0, keep1)``."""
    pairs = list(zip(keep[0], keep[1]))
    runs, start = [], 0
    for c in range(1, len(pairs) + 1):
        if c == len(pairs) or pairs[c] != pairs[start]:
            runs.append((start, c, *pairs[start]))
            start = c
    return runs


class _ExchangeTwoRuns(torch.autograd.Function):
    """Exchange for M = 2 on the CPU as slice copies over runs of channels (same values and gradients as
    ``torch.where(keep, x, x.flip(0))``).

    The penalty's disjoint halves make the exchanged channels come in few long runs, so each run is one strided
    copy (or one add in backward) instead of a masked pass over the whole tensor: about 2x faster than
    ``_ExchangeTwo`` on the CPU (``benchmarks/``).
    """

    @staticmethod
    def forward(ctx, x0: torch.Tensor, x1: torch.Tensor, runs: list[tuple[int, int, bool, bool]]) -> torch.Tensor:
        # x0, x1 [N, C, ...] -> [2, N, C, ...]: the two branches' outputs go straight into the exchanged result
        x = (x0, x1)
        out = x0.new_empty((2, *x0.shape))
        for s, e, k0, k1 in runs:
            out[0, :, s:e] = x[0 if k0 else 1][:, s:e]
            out[1, :, s:e] = x[1 if k1 else 0][:, s:e]
        ctx.runs = runs
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gx = torch.empty_like(grad)  # [2, N, C, ...]; returned as two views
        for s, e, k0, k1 in ctx.runs:
            # gx[0] = (k0 ? g[0] : 0) + (k1 ? 0 : g[1]); gx[1] = (k1 ? g[1] : 0) + (k0 ? 0 : g[0])
            if k0 and k1:
                gx[:, :, s:e] = grad[:, :, s:e]
            elif not (k0 or k1):  # swapped
                gx[0, :, s:e] = grad[1, :, s:e]
                gx[1, :, s:e] = grad[0, :, s:e]
            else:  # one branch supplies both outputs of these channels; the other is unused
                used = 0 if k0 else 1
                torch.add(grad[0, :, s:e], grad[1, :, s:e], out=gx[used, :, s:e])
                gx[1 - used, :, s:e].zero_()
        return gx[0], gx[1], None


class _ExchangeTwo(torch.autograd.Function):
    """Exchange for M = 2 on a GPU, without a host sync; same values and gradients as
    ``torch.where(keep, x, x.flip(0))``.

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
                     rank: torch.Tensor | None = None, grid: BranchGrid | None = None) -> torch.Tensor:
    """Where each channel's value comes from after ``channel_exchange``.

    Returns
    -------
    torch.Tensor
        int64 ``[M, C]`` (M branches): ``m`` itself when kept; when exchanged, the donor branch's index when
        there is a single donor (M = 2, the ``"cyclic"`` rule, groups of two) or ``-1`` for a mean of several
        branches (``donor_matrix`` tells which). With ``mode="none"`` every channel is its own.
    """
    if mode not in EXCHANGE_MODES:
        raise ValueError(f"mode must be one of {list(EXCHANGE_MODES)}, got {mode!r}")
    m, c = gamma.shape
    own = torch.arange(m, device=gamma.device).view(m, 1).expand(m, c)
    keep = exchange_keep(gamma, threshold, mode, rank)
    if mode == "none" or m < 2:
        return own.clone()
    weights = _donor_weights("mean" if mode == "random" else mode, grid if grid is not None else BranchGrid(m))
    single = (weights > 0).sum(1) == 1  # [M]: exactly one donor branch
    donor = torch.where(single, weights.argmax(1), torch.full((m,), SOURCE_MEAN_OF_OTHERS)).to(gamma.device)
    return torch.where(keep, own, donor.view(m, 1).expand(m, c))
