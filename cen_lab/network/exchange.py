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
    """``donor_matrix`` computed once per (rule, grid): ``exchange_sources`` and the run path of
    ``channel_exchange`` (through ``_donor_terms``) ask for it. Read-only."""
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
    rule = "mean" if mode == "random" else mode
    if not cuda and rule in _LINEAR_RULES:
        runs = _keep_runs(keep.tolist())
        if len(runs) * _RUN_MIN_ELEMENTS <= first.numel():
            terms = _donor_terms(rule, grid if grid is not None else BranchGrid(m))
            return _ExchangeRuns.apply(runs, terms, *(x.unbind(0) if parts is None else parts))
    x = x if parts is None else torch.stack(parts)
    keep = keep.view(m, 1, shape[2], *([1] * (len(shape) - 3)))  # [M, 1, C, 1, ...]
    if m == 2 and (grid is None or grid.groups() == "all"):
        return _ExchangeTwo.apply(x, keep)
    return torch.where(keep, x, _donors(x, rule, grid))


# the built-in rules are linear in x: branch b's donor is sum_k W[b, k] x[k] with W = donor_matrix(rule, grid)
_LINEAR_RULES = ("mean", "cyclic")
# The run path costs a few torch calls (~40 us on 2 CPU cores, forward and backward) per run and branch and
# then moves less data than masked passes; it pays when runs span at least this many elements of a branch on
# average (measured in benchmarks/; with the disjoint penalty's few long runs it always does).
_RUN_MIN_ELEMENTS = 20_000


def _keep_runs(keep: list[list[bool]]) -> list[tuple[int, int, tuple[bool, ...]]]:
    """Maximal runs of channels with the same keep column ``(keep[0][c], ..., keep[M-1][c])``:
    ``(start, end, column)``."""
    cols = list(zip(*keep))
    runs, start = [], 0
    for c in range(1, len(cols) + 1):
        if c == len(cols) or cols[c] != cols[start]:
            runs.append((start, c, cols[start]))
            start = c
    return runs


@functools.lru_cache(maxsize=64)
def _donor_terms(rule: str, grid: BranchGrid) -> tuple[tuple[tuple[int, float], ...], tuple[tuple[int, float], ...]]:
    """The nonzero entries of ``donor_matrix``: row b as ``((k, W[b, k]), ...)`` (who gives to b), and column k
    as ``((b, W[b, k]), ...)`` (whom k gives to, which is where k's gradient comes from)."""
    w = _donor_weights(rule, grid).tolist()
    rows = tuple(tuple((k, v) for k, v in enumerate(row) if v) for row in w)
    cols = tuple(tuple((b, w[b][k]) for b in range(len(w)) if w[b][k]) for k in range(len(w)))
    return rows, cols


def _combine(out: torch.Tensor, terms: list[tuple[torch.Tensor, float]]) -> None:
    """``out = sum(w * t for t, w in terms)`` in place, in as few passes as possible (zero when no terms)."""
    if not terms:
        out.zero_()
        return
    (t0, w0), rest = terms[0], terms[1:]
    if w0 == 1.0 and rest:
        torch.add(t0, rest[0][0], alpha=rest[0][1], out=out)
        rest = rest[1:]
    elif w0 == 1.0:
        out.copy_(t0)
    else:
        torch.mul(t0, w0, out=out)
    for t, w in rest:
        out.add_(t, alpha=w)


class _ExchangeRuns(torch.autograd.Function):
    """Exchange with a built-in (linear) rule on the CPU, as slice operations over runs of channels with the
    same keep column. Same values and gradients as ``torch.where(keep, x, W @ x)`` (W the donor matrix).

    The penalty's disjoint portions make the exchanged channels come in few long runs, so each run and branch
    is one strided copy or weighted sum of the donors' slices, forward and backward, instead of masked passes
    over the whole tensor: about 2x faster than ``_ExchangeTwo`` (M = 2, the training step's pattern) and than
    the ``where`` path (M = 3) on the CPU (``benchmarks/``). The branches' outputs come in unstacked, so no
    stack copy either. Each run costs a few torch calls, hence ``_RUN_MIN_ELEMENTS``.
    """

    @staticmethod
    def forward(ctx, runs: list[tuple[int, int, tuple[bool, ...]]], terms, *parts: torch.Tensor) -> torch.Tensor:
        # parts: B tensors [N, C, ...] -> [B, N, C, ...]; the branches' outputs go straight into the result
        gives_to_b, _ = terms
        out = parts[0].new_empty((len(parts), *parts[0].shape))
        outs = out.unbind(0)  # narrow() on these views: the cheapest slicing per call, which matters per run
        for s, e, col in runs:
            for b, kept in enumerate(col):
                donors = [(parts[b], 1.0)] if kept else [(parts[k], w) for k, w in gives_to_b[b]]
                _combine(outs[b].narrow(1, s, e - s), [(t.narrow(1, s, e - s), w) for t, w in donors])
        ctx.runs, ctx.terms = runs, terms
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        _, k_gives_to = ctx.terms
        grads, gx = grad.unbind(0), torch.empty_like(grad).unbind(0)  # B views each
        for s, e, col in ctx.runs:
            for k, kept in enumerate(col):
                # branch k's gradient: its own where it kept the channel, plus W[b, k] g[b] from each branch b
                # that took this channel from it
                terms = ([(grads[k], 1.0)] if kept else []) + [(grads[b], w) for b, w in k_gives_to[k] if not col[b]]
                _combine(gx[k].narrow(1, s, e - s), [(t.narrow(1, s, e - s), w) for t, w in terms])
        return (None, None, *gx)


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
