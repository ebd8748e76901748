"""Theorem 1's local check on any model (``cen_lab.observe``'s layouts) with the user's own loss: how its
BatchNorms run during the check (``bn_mode``), and how its exchange is turned off, with a check that it is.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .._util.progress import progress_bar
from ..errors import ObserveError
from ..network.blocks import ModalBatchNorm2d
from ..network.layouts import unwrap
from ..network.zoo import PassThrough
from ..runs.observer import penalised_masks, resolve_layers
from .zeroing import _local_frame, _zeroed_gradients

__all__ = ["BN_MODES", "local_check_model", "set_attribute", "bypass", "exchange_is_off"]

BN_MODES = ("train", "eval", "as-is")


def set_attribute(attr: str = "threshold", value: Any = 0.0) -> Callable[[torch.nn.Module], None]:
    """An ``exchange_off`` recipe: set ``attr`` to ``value`` on every module that has such a number.

    The reference layout keeps its exchange threshold as a plain attribute of each bottleneck (``threshold``);
    with it at 0 every ``|gamma| >= 0`` is kept and nothing is exchanged: ``exchange_off=set_attribute()``.
    """

    def apply(model: torch.nn.Module) -> None:
        found = [m for m in model.modules() if isinstance(getattr(m, attr, None), (int, float))
                 and not isinstance(getattr(m, attr), bool)]
        if not found:
            raise ObserveError(f"exchange_off=set_attribute({attr!r}): no module of {type(model).__name__} has a "
                               f"number {attr!r}; give your own callable that turns the exchange off")
        for m in found:
            setattr(m, attr, value)

    apply.__qualname__ = f"set_attribute({attr!r}, {value!r})"
    return apply


def bypass(name: str = "exchange") -> Callable[[torch.nn.Module], None]:
    """An ``exchange_off`` recipe: replace every submodule called ``name`` with a ``PassThrough``, which returns its
    first argument (the branches' outputs) unchanged.

    Both of the reference code's layouts call their exchange as a child module, ``self.exchange(out, bns,
    threshold)``, after ``bn2`` of each bottleneck (segmentation) or after each encoder norm (translation):
    ``exchange_off=bypass("exchange")``. It gives the numbers of ``set_attribute("threshold", 0.0)`` (the reference's
    own attribute is ``bn_threshold``) bit for bit, and a faster check: an exchange left in place at threshold 0
    still mixes the branches (``where(keep, own, others)``), so each pass computes and back-propagates every branch
    after the zeroed layer, while without it the other branches are computed once per minibatch
    (``cen_lab.theory.prefix_cache``).
    """

    def apply(model: torch.nn.Module) -> None:
        found = [(parent, child) for parent in model.modules() for child, m in parent.named_children()
                 if child == name and not isinstance(m, PassThrough)]
        if not found:
            raise ObserveError(f"exchange_off=bypass({name!r}): {type(model).__name__} has no submodule called "
                               f"{name!r}; name the module that exchanges, or give your own callable that turns the "
                               "exchange off")
        for parent, child in found:
            setattr(parent, child, PassThrough())

    apply.__qualname__ = f"bypass({name!r})"
    return apply


def _bn_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The norms with running statistics that ``bn_mode="eval"`` freezes: BatchNorms, InstanceNorms (the
    reference's translation CEN tracks them too) and cen_lab's own private norms."""
    from torch.nn.modules.instancenorm import _InstanceNorm

    return [m for m in model.modules() if isinstance(m, (_BatchNorm, _InstanceNorm, ModalBatchNorm2d))]


def _set_bn_mode(model: torch.nn.Module, bn_mode: str) -> None:
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {list(BN_MODES)}, got {bn_mode!r}")
    if bn_mode == "as-is":
        return
    model.train()  # the rest of the model trains as in a training step...
    for module in model.modules():  # ...but without dropout: g is then a gradient of the loss, not of one mask
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.eval()
    if bn_mode == "eval":  # BatchNorm frozen, as the reference trains: running statistics, not the batch's
        for bn in _bn_modules(model):
            bn.eval()


@torch.no_grad()
def _silenced_copy(model: torch.nn.Module, layers, masks) -> tuple[torch.nn.Module, list]:
    """A copy with every penalised gamma at 0 and its beta at 1: where the exchange is on, those channels are
    replaced by another branch's and get no gradient at all; where it is off, a ReLU after the BN passes beta = 1."""
    twin = copy.deepcopy(model)
    found = resolve_layers(twin, [la.name for la in layers])
    for la, mask in zip(found, masks):
        for b, (g, beta) in enumerate(zip(la.gammas(), la.betas())):
            row = torch.as_tensor(mask if la.stacked else mask[b], device=g.device)
            g.masked_fill_(row, 0.0)
            beta.masked_fill_(row, 1.0)
    return twin, found


def exchange_is_off(model: torch.nn.Module, loss_fn, batch, *, layers: Any = None,
                    penalised: str | Mapping[str, Any] | None = None) -> tuple[bool, pd.DataFrame]:
    """Whether ``model`` exchanges no channel: every penalised gamma of a copy is set to 0 (its beta to 1, so that
    a ReLU after the BN does not silence it) and one backward of ``loss_fn(copy, batch)`` is made. A channel that
    is exchanged takes another branch's output, so its own BN output gets no gradient (``||dL/dx'|| = 0``).

    Returns ``(off, per-layer table)``: ``off`` is False when any layer has a zeroed channel with no gradient;
    the table has ``layer, channels, no_gradient``.
    """
    from ..network.hooks import record_bn_output_grad_norms

    found = resolve_layers(unwrap(model), layers)
    _, masks = penalised_masks(found, penalised, unwrap(model))
    twin, twin_layers = _silenced_copy(unwrap(model), found, masks)
    with record_bn_output_grad_norms([(la.name, la.hook_point()) for la in twin_layers]) as norms:
        loss_fn(twin, batch).backward()
    rows = []
    for la, mask in zip(twin_layers, masks):
        norm = norms.get(la.name)
        dead = int(((norm.cpu().numpy() == 0) & mask).sum()) if norm is not None else int(mask.sum())
        rows.append({"layer": la.name, "channels": int(mask.sum()), "no_gradient": dead})
    table = pd.DataFrame(rows)
    return bool((table["no_gradient"] == 0).all()), table


def local_check_model(model: torch.nn.Module, loss_fn, batches: Sequence, lam: float, *, layers: Any = None,
                      penalised: str | Mapping[str, Any] | None = None, max_channels: int | None = None,
                      step: int = 0, name: str = "model", seed: int = 0, progress: bool = True,
                      bn_mode: str | None = None, exchange_off: Callable[[torch.nn.Module], None] | None = None,
                      run: Any = None, reuse_prefix: bool = True) -> pd.DataFrame:
    """Theorem 1's local check on any model (``cen_lab.observe``'s layouts), with the user's own loss.

    A copy of ``model`` (the model itself, its gammas and BN running statistics are left untouched) is put in
    the BatchNorm mode ``bn_mode``. For every penalised channel (or ``max_channels`` of them, drawn with
    ``seed``) and every batch, that channel's gamma is set to 0, ``loss_fn(copy, batch).backward()`` gives
    ``g = dL/dgamma`` and ``||dL/dx'||`` (x' the output of that branch's BN), and the gamma is restored. One
    channel is zeroed per pass, because the branches of a model that exchanges interact.

    Parameters
    ----------
    model : nn.Module
    loss_fn : callable
        ``loss_fn(model, batch) -> scalar tensor``: the *data* loss of one batch (without the L1 penalty, whose
        gradient at gamma = 0 is the subgradient interval the theorem reasons about).
    batches : sequence
        Minibatches as ``loss_fn`` takes them (move them to the model's device yourself).
    lam : float
        The L1 weight per step: the weight with which the penalty enters one step's gradient. The reference
        code adds ``lamda * L1`` once per output (M + 1 times a step), so its per-step weight is
        ``(M + 1) * lamda`` (``cen_lab.zoo.effective_lam``); an observed run records it as ``lam_per_step``.
    layers, penalised
        As for ``cen_lab.observe``.
    max_channels : int, optional
        Check a random subset of the penalised channels (for large models).
    step, name : int, str
        The ``step`` and ``run`` columns of the result.
    bn_mode : {"train", "eval", "as-is"}, optional
        How the copy's BatchNorms run: ``"train"`` (batch statistics; the rest of the model in training mode
        too), ``"eval"`` (BatchNorm frozen on its running statistics, as the reference code trains, the rest in
        training mode), or ``"as-is"`` (each module as ``model`` has it). Default: what ``run`` (the model's
        observed run) recorded as its ``bn_mode``, else ``"train"``. In ``"train"`` and ``"eval"`` every dropout
        module is off (eval mode), so that two identical calls give the same numbers bit for bit: with dropout on,
        each pass would draw another mask, and ``g`` would change between calls (even its sign); ``"as-is"`` leaves
        dropout as the model has it.
    exchange_off : callable, optional
        ``fn(copy)`` that turns the copy's exchange off, as the theorem assumes. For the reference layouts:
        ``bypass("exchange")``, which takes the exchange module out (the fastest check), or
        ``set_attribute("bn_threshold", 0.0)``, which leaves it in place at threshold 0 (the same numbers; the zoo's
        models call the attribute ``threshold``, and ``zoo.without_exchange`` does both). It is then checked
        (``exchange_is_off`` on the first batch): a recipe that leaves the exchange on is an error.
    run : Run or path, optional
        The model's observed run (or its directory), whose recorded ``bn_mode`` is the default.
    reuse_prefix : bool
        Compute what a zeroed channel cannot change (the model up to its layer, and every module whose inputs do
        not depend on it) once per batch instead of once per pass, with the same numbers
        (``cen_lab.theory.prefix_cache``). Turn it off for a model whose modules have side effects or randomness
        other than dropout in their forward, or read a BatchNorm's gamma through a plain attribute (neither a child
        module nor an argument of their forward).

    Returns
    -------
    pandas.DataFrame
        The columns of ``local_check``; ``calibration_summary``, ``calibration_frame`` and
        ``cen_lab.plots.plot_reliability`` take it as they take a cen_lab network's. ``df.attrs["bn_mode"]`` says
        the BatchNorm mode used.

    Warns
    -----
    UserWarning
        When at least half of the rows have ``||dL/dx'|| = 0``: those channels get no gradient at gamma = 0,
        so the check is vacuous for them (``predicted`` 1, ``attracted`` True). Besides exchange (below), a ReLU
        after the BN does this to a channel whose beta is <= 0: at gamma = 0 it outputs beta everywhere.

    Notes
    -----
    The theorem is stated for a network trained with the penalty but *without* exchange. In a model that
    exchanges, a gamma set to 0 is below the threshold, so the channel is replaced by the other branches' output
    and its own BN output reaches nothing: ``g = 0`` and ``||dL/dx'|| = 0`` exactly. Check such a model with its
    exchange turned off (``exchange_off=``).
    """
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    if not len(batches):
        raise ValueError("local_check_model needs at least one batch")
    if isinstance(run, (str, os.PathLike)):
        from ..runs.reader import load_run

        run = load_run(run)
    recorded = (run.manifest.get("bn_mode") if run is not None else None)
    bn_mode = bn_mode or (recorded if recorded in BN_MODES else "train")
    twin = copy.deepcopy(unwrap(model))  # the layer names of observe, however the model is wrapped
    _set_bn_mode(twin, bn_mode)
    found = resolve_layers(twin, layers)
    _, masks = penalised_masks(found, penalised, twin)
    if exchange_off is not None:
        exchange_off(twin)
        off, table = exchange_is_off(twin, loss_fn, batches[0], layers=[la.name for la in found],
                                     penalised={la.name: m for la, m in zip(found, masks)})
        if not off:
            on = table[table["no_gradient"] > 0]
            raise ObserveError(f"exchange_off={getattr(exchange_off, '__qualname__', exchange_off)} leaves the "
                               f"exchange on: with the penalised gammas at 0, layers {on['layer'].tolist()} still "
                               f"have {on['no_gradient'].tolist()} channel(s) replaced by another branch (no gradient)")
    items = [(li, int(m), int(c)) for li, mask in enumerate(masks) for m, c in zip(*np.nonzero(mask))]
    if not items:
        raise ValueError("no penalised channel to check: penalised= selects none")
    if max_channels is not None and max_channels < len(items):
        pick = np.random.default_rng(seed).choice(len(items), max_channels, replace=False)
        items = [items[i] for i in sorted(pick)]
    bar = progress_bar(total=len(batches) * len(items), desc=f"local check {name} ({len(items)} channels x "
                       f"{len(batches)} batches)", unit="pass", disable=not progress, leave=False)
    rows = _zeroed_gradients(twin, found, [[i] for i in items], batches, loss_fn, bar, per_pass=True,
                             reuse_prefix=reuse_prefix)
    bar.close()
    df = _local_frame(rows, name, float(lam), step=step)
    df.attrs["bn_mode"] = bn_mode
    dead = float((df["norm"] == 0).mean())
    if dead >= 0.5:
        warnings.warn(f"{dead:.0%} of the checked channels get no gradient at gamma = 0 (||dL/dx'|| = 0), so the "
                      "check says nothing about them: a model that exchanges discards a channel whose gamma is below "
                      "its threshold (check it with exchange_off=...), and a ReLU after the BN silences a zeroed "
                      "channel whose beta is <= 0", UserWarning, stacklevel=2)
    return df
