"""Part ``local_check``: the cost of Theorem 1's local check on a model that is not cen_lab's (issue 22).

The check makes one forward and backward pass per checked channel and minibatch. On the zoo's reference-style model
(stem 16, planes (8, 16), batch 32 at 32x32, two modalities, exchange off) this measures, in one run and in
rotating order:

- the **reference**, the path of 2026-12-03, kept here as it was: on the model whose exchange is switched off by a
  threshold of 0 (the recipe of that day), every gamma of the zeroed layer's branches hooked, ``loss.backward()``
  down to the input;
- **today's path** on the model as ``zoo.without_exchange`` now gives it (threshold 0 and the exchange module taken
  out, ``cen_lab.theory.foreign.bypass``): ``torch.autograd.grad`` with the zeroed gamma as the input, so the
  backward stops at its layer, and what the zeroed gamma cannot change (the model up to its layer, and the other
  branch) computed once per minibatch instead of once per pass (``cen_lab.theory.prefix_cache``);
- today's path on the threshold-0 model (the exchange left in place, so the other branch is linked to the zeroed
  gamma after the layer and recomputed in every pass);
- the backward stopped alone (``reuse_prefix=False``), on the threshold-0 model;

with the same numbers (every ``g`` and ``||dL/dx'||`` of the four equal, bit for bit, checked on each run), and
where the time goes: the forward's share of a reference pass.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from cen_lab.network.hooks import record_bn_output_grad_norms
from cen_lab.runs import penalised_masks, resolve_layers
from cen_lab.theory.foreign import set_attribute
from cen_lab.theory.zeroing import _gamma_at, _zeroed_gradients
from cen_lab.zoo import ReferenceStyleCEN, segmentation_loss, without_exchange


def _model_and_batches(size: int, batch: int, n_batches: int):
    """The model without its exchange (``zoo.without_exchange``), the same weights at threshold 0 with the exchange
    in place, and the minibatches."""
    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 5, stem=16, planes=(8, 16)).train()
    with torch.no_grad():  # betas > 0: a ReLU after a zeroed BN passes its gradient (as in a trained model)
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "bn" in name:
                p.add_(0.3 * torch.rand(p.shape, generator=gen))
    threshold_zero = copy.deepcopy(model)
    set_attribute("threshold", 0.0)(threshold_zero)
    gen = torch.Generator().manual_seed(2)
    batches = [([torch.randn(batch, 3, size, size, generator=gen) for _ in range(2)],
                torch.randint(0, 5, (batch, size, size), generator=gen)) for _ in range(n_batches)]
    return without_exchange(model), threshold_zero, batches


def reference_rows(model, layers, groups, batches, loss_fn) -> list[tuple]:
    """The local check's passes as the code of 2026-12-03 made them: for each batch and channel, the gamma zeroed,
    every branch of every checked layer hooked, a full ``backward()``, the gamma restored. The rows of
    ``_zeroed_gradients``."""
    points = [(la.name, la.hook_point()) for la in layers]
    rows = []
    for b, batch in enumerate(batches):
        for group in groups:
            trained = {}
            with torch.no_grad():
                for li, m, c in group:
                    t, i = _gamma_at(layers[li], m, c)
                    trained[(li, m, c)] = float(t[i])
                    t[i] = 0.0
            model.zero_grad(set_to_none=True)
            with record_bn_output_grad_norms(points) as norms:
                loss_fn(model, batch).backward()
            with torch.no_grad():
                for li, m, c in group:
                    t, i = _gamma_at(layers[li], m, c)
                    name = layers[li].name
                    grad = float(t.grad[i]) if t.grad is not None else 0.0
                    norm = float(norms[name][m, c]) if name in norms else float("nan")
                    rows.append((name, m, c, b, trained[(li, m, c)], grad, norm))
                    t[i] = trained[(li, m, c)]
    return rows


def bench_local_check(size: int = 32, batch: int = 32, n_batches: int = 2, channels: int = 12,
                      repeats: int = 5) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a sweep worker; restored below, so that the later parts keep theirs
    try:
        return _bench_local_check(size, batch, n_batches, channels, repeats)
    finally:
        torch.set_num_threads(previous)


def _bench_local_check(size: int, batch: int, n_batches: int, channels: int, repeats: int) -> dict:
    model, threshold_zero, batches = _model_and_batches(size, batch, n_batches)
    layers = {"today": resolve_layers(model, "*.bn2"), "zero": resolve_layers(threshold_zero, "*.bn2")}
    _, masks = penalised_masks(layers["today"], "alternate-halves", model)
    items = [(li, int(m), int(c)) for li, mask in enumerate(masks) for m, c in zip(*np.nonzero(mask))]
    items = [items[i] for i in np.linspace(0, len(items) - 1, min(channels, len(items))).astype(int)]
    groups = [[i] for i in items]
    paths = {
        "reference": lambda: reference_rows(threshold_zero, layers["zero"], groups, batches, segmentation_loss),
        "today": lambda: _zeroed_gradients(model, layers["today"], groups, batches, segmentation_loss),
        "threshold_zero": lambda: _zeroed_gradients(threshold_zero, layers["zero"], groups, batches,
                                                    segmentation_loss),
        "stop_at_layer": lambda: _zeroed_gradients(threshold_zero, layers["zero"], groups, batches,
                                                   segmentation_loss, reuse_prefix=False),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    same = True
    for r in range(repeats):
        rows = {}
        order = list(paths)[r % len(paths):] + list(paths)[:r % len(paths)]  # rotating order
        for path in order:
            start = time.perf_counter()
            rows[path] = paths[path]()
            times[path].append(time.perf_counter() - start)
        same &= rows["reference"] == rows["today"] == rows["threshold_zero"] == rows["stop_at_layer"]
    forward = []
    for _ in range(repeats * len(groups)):
        start = time.perf_counter()
        with torch.no_grad():
            segmentation_loss(threshold_zero, batches[0])
        forward.append(time.perf_counter() - start)
    per_pass = float(np.median(times["reference"])) / (len(groups) * n_batches)
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        # the goal's ratio: the old path on the threshold-0 model over today's on the bypassed model (the same
        # numbers, bit for bit, but not the same model); and the ratio on one and the same model, threshold 0
        "local_check_speedup_bypass_over_reference": median["reference"] / median["today"],
        "local_check_speedup_same_model": median["reference"] / median["threshold_zero"],
        "local_check_speedup_stop_at_layer": median["reference"] / median["stop_at_layer"],
        "local_check_same_numbers": bool(same),
        "local_check_forward_share": float(np.median(forward) / per_pass),
        "local_check_pass_seconds": {name: m / (len(groups) * n_batches) for name, m in median.items()},
    }
