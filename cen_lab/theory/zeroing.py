"""The core of Theorem 1's local check: set chosen gammas of a model to 0, back-propagate the data loss, and read
``g = dL/dgamma`` and ``||dL/dx'||`` of each (``_zeroed_gradients``), then the check's table (``_local_frame``).
Used by the check on cen_lab's networks (``local_checks``) and on any model (``foreign``)."""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..network.hooks import record_bn_output_grad_norms
from ..runs.observer import BNLayer
from .formula import attraction_probability
from .prefix_cache import passing, reusing_outputs

__all__ = ["minibatch_indices"]


def minibatch_indices(n: int, batch_size: int, n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """``n_batches`` index tensors of ``batch_size`` distinct samples out of ``n``, drawn with ``seed``: the
    minibatches of the local checks."""
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.choice(n, batch_size, replace=False)) for _ in range(n_batches)]


def _gamma_at(layer: BNLayer, m: int, c: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The parameter holding gamma[m, c] of ``layer`` and its index there."""
    return (layer.modules[0].weight, (m, c)) if layer.stacked else (layer.modules[m].weight, (c,))


def _zeroed_gradients(model: torch.nn.Module, layers: Sequence[BNLayer],
                      groups: Sequence[Sequence[tuple[int, int, int]]],
                      batches: Sequence, loss_fn, bar=None, per_pass: bool = False,
                      stop_at_layer: bool = True, reuse_prefix: bool = True) -> list[tuple]:
    """For every batch and every group of channels ``(layer index, branch, channel)``: set those gammas to 0,
    back-propagate ``loss_fn(model, batch)``, read ``g = dL/dgamma`` and ``||dL/dx'||`` of each, and restore them.

    ``stop_at_layer``: back-propagate only as far as the group's layers (``torch.autograd.grad`` with the gamma
    tensors that hold the group's channels as the inputs: for a per-branch layer, the group's branches' only), not
    down to the input: the gradients below them are never used. ``reuse_prefix`` (with
    ``stop_at_layer``): compute what the zeroed gammas cannot change once per minibatch, not once per pass
    (``cen_lab.theory.prefix_cache``). The numbers are those of a full ``backward()`` either way (the same kernels
    compute them); ``bar`` advances per batch, or per pass with ``per_pass``.

    Returns rows ``(layer name, branch, channel, batch index, trained gamma, g, norm)``.
    """
    trained = {}
    for group in groups:
        for li, m, c in group:
            t, i = _gamma_at(layers[li], m, c)
            trained[(li, m, c)] = float(t.detach()[i])
    rows: list[tuple] = []
    reuse = reuse_prefix and stop_at_layer
    with reusing_outputs(model) if reuse else contextlib.nullcontext() as state:
        for b, batch in enumerate(batches):
            if state is not None:
                state.new_batch()
            _zeroed_batch(model, layers, groups, b, batch, loss_fn, trained, rows, stop_at_layer, state,
                          bar if per_pass else None)
            if bar is not None and not per_pass:
                bar.update(1)
    return rows


def _group_points(layers: Sequence[BNLayer], group) -> tuple[list[torch.Tensor], list, dict[tuple[int, int], int]]:
    """What one pass differentiates and hooks: the gamma tensors holding the group's channels, the hook points of
    ``record_bn_output_grad_norms`` (a per-branch layer hooked on the group's branches only, so the other branches'
    BatchNorms hold no gamma that requires grad and ``prefix_cache`` can reuse them), and the row of the recorded
    norms that holds each ``(layer index, branch)``."""
    inputs: dict[int, torch.Tensor] = {}
    points, row = [], {}
    for li in dict.fromkeys(li for li, _, _ in group):
        la = layers[li]
        branches = [0] if la.stacked else sorted({m for lj, m, _ in group if lj == li})
        for m in branches:
            inputs.setdefault(id(la.gammas()[m]), la.gammas()[m])
        points.append((la.name, la.hook_point() if la.stacked else tuple(la.modules[m] for m in branches)))
        row.update({(li, m): (m if la.stacked else branches.index(m)) for lj, m, _ in group if lj == li})
    return list(inputs.values()), points, row


def _zeroed_batch(model, layers, groups, b, batch, loss_fn, trained, rows, stop_at_layer, state, bar) -> None:
    """The passes of ``_zeroed_gradients`` on minibatch ``b``, appending to ``rows`` (``state``: the
    ``prefix_cache`` switch, or None; ``bar`` advances per pass when given)."""
    for group in groups:
        with torch.no_grad():
            for li, m, c in group:
                t, i = _gamma_at(layers[li], m, c)
                t[i] = 0.0
        model.zero_grad(set_to_none=True)
        inputs, points, row = _group_points(layers, group)
        with (passing(state, model, inputs) if state is not None else contextlib.nullcontext()), \
                record_bn_output_grad_norms(points) as norms:
            loss = loss_fn(model, batch)
            if stop_at_layer:
                found = torch.autograd.grad(loss, inputs, allow_unused=True)
                grads = {id(t): g for t, g in zip(inputs, found)}
            else:
                loss.backward()
                grads = {id(t): t.grad for t in inputs}
        with torch.no_grad():
            for li, m, c in group:
                t, i = _gamma_at(layers[li], m, c)
                name = layers[li].name
                g = grads[id(t)]
                grad = float(g[i]) if g is not None else 0.0
                norm = float(norms[name][row[(li, m)], c]) if name in norms else float("nan")
                rows.append((name, m, c, b, trained[(li, m, c)], grad, norm))
                t[i] = trained[(li, m, c)]
        if bar is not None:
            bar.update(1)


def _local_frame(rows: list[tuple], run: str, lam: float, step: int | None = None) -> pd.DataFrame:
    """The ``local_check`` table from ``_zeroed_gradients`` rows (with a ``step`` column in front of them)."""
    df = pd.DataFrame(rows, columns=(["step"] if step is None else []) + ["layer", "modality", "channel", "batch",
                                                                          "gamma", "g", "norm"])
    if step is not None:
        df.insert(0, "step", step)
    df.insert(0, "lam", lam)
    df.insert(0, "run", run)
    df["z"] = df["g"] / df["norm"]
    df["predicted"] = attraction_probability(lam, df["norm"].to_numpy())
    df["attracted"] = df["g"].abs() <= lam
    return df

