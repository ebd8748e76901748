"""Part ``local_check``: the cost of Theorem 1's local check on a model that is not cen_lab's (issue 22).

The check makes one forward and backward pass per checked channel and minibatch. On the zoo's reference-style model
(stem 16, planes (8, 16), batch 32 at 32x32, two modalities) this measures, in one run and in rotating order:

- the path of 2026-12-03 (kept here as the reference): ``loss.backward()`` down to the input;
- the path of 2026-12-04: ``torch.autograd.grad`` with the zeroed layer's gammas as the inputs, so the backward
  stops at that layer;
- today's path: that, and what the zeroed gammas cannot change (the model up to their layer) computed once per
  minibatch instead of once per pass (``cen_lab.theory.prefix_cache``);

with the same numbers (every ``g`` and ``||dL/dx'||`` equal, bit for bit, checked on each run), and where the time
goes: the forward's share of a reference pass.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cen_lab.runs import penalised_masks, resolve_layers
from cen_lab.theory.zeroing import _zeroed_gradients
from cen_lab.zoo import ReferenceStyleCEN, segmentation_loss, without_exchange


def _model_and_batches(size: int, batch: int, n_batches: int):
    torch.manual_seed(0)
    model = without_exchange(ReferenceStyleCEN(3, 5, stem=16, planes=(8, 16))).train()
    with torch.no_grad():  # betas > 0: a ReLU after a zeroed BN passes its gradient (as in a trained model)
        gen = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "bn" in name:
                p.add_(0.3 * torch.rand(p.shape, generator=gen))
    gen = torch.Generator().manual_seed(2)
    batches = [([torch.randn(batch, 3, size, size, generator=gen) for _ in range(2)],
                torch.randint(0, 5, (batch, size, size), generator=gen)) for _ in range(n_batches)]
    return model, batches


def bench_local_check(size: int = 32, batch: int = 32, n_batches: int = 2, channels: int = 12,
                      repeats: int = 5) -> dict:
    torch.set_num_threads(1)
    model, batches = _model_and_batches(size, batch, n_batches)
    layers = resolve_layers(model, "*.bn2")
    _, masks = penalised_masks(layers, "alternate-halves", model)
    items = [(li, int(m), int(c)) for li, mask in enumerate(masks) for m, c in zip(*np.nonzero(mask))]
    items = [items[i] for i in np.linspace(0, len(items) - 1, min(channels, len(items))).astype(int)]
    groups = [[i] for i in items]
    paths = {"reference": dict(stop_at_layer=False), "stop_at_layer": dict(reuse_prefix=False), "today": {}}
    times: dict[str, list[float]] = {name: [] for name in paths}
    same = True
    for r in range(repeats):
        rows = {}
        order = list(paths)[r % len(paths):] + list(paths)[:r % len(paths)]  # rotating order
        for path in order:
            start = time.perf_counter()
            rows[path] = _zeroed_gradients(model, layers, groups, batches, segmentation_loss, **paths[path])
            times[path].append(time.perf_counter() - start)
        same &= rows["reference"] == rows["stop_at_layer"] == rows["today"]
    forward = []
    for _ in range(repeats * len(groups)):
        start = time.perf_counter()
        with torch.no_grad():
            segmentation_loss(model, batches[0])
        forward.append(time.perf_counter() - start)
    per_pass = float(np.median(times["reference"])) / (len(groups) * n_batches)
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "local_check_speedup": median["reference"] / median["today"],
        "local_check_speedup_stop_at_layer": median["reference"] / median["stop_at_layer"],
        "local_check_same_numbers": bool(same),
        "local_check_forward_share": float(np.median(forward) / per_pass),
        "local_check_pass_seconds": {name: m / (len(groups) * n_batches) for name, m in median.items()},
    }
