"""Part ``local_check``: the cost of Theorem 1's local check on a model that is not cen_lab's (issue 22).

The check makes one forward and backward pass per checked channel and minibatch (zeroing a channel changes what
every other channel sees, so the passes cannot be shared). On the zoo's reference-style model (stem 16, planes
(8, 16), batch 32 at 32x32, two modalities) this measures, in one run and in rotating order:

- today's path of 2026-12-03 (kept here as the reference): ``loss.backward()`` down to the input;
- the path ``local_check_model`` takes now: ``torch.autograd.grad`` with the zeroed layer's gammas as the inputs,
  so the backward stops at that layer;

with the same numbers (every ``g`` and ``||dL/dx'||`` equal, checked on each run), and where the time goes: the
forward's share of a reference pass.
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
                      repeats: int = 3) -> dict:
    torch.set_num_threads(1)
    model, batches = _model_and_batches(size, batch, n_batches)
    layers = resolve_layers(model, "*.bn2")
    _, masks = penalised_masks(layers, "alternate-halves", model)
    items = [(li, int(m), int(c)) for li, mask in enumerate(masks) for m, c in zip(*np.nonzero(mask))]
    items = [items[i] for i in np.linspace(0, len(items) - 1, min(channels, len(items))).astype(int)]
    groups = [[i] for i in items]
    times: dict[str, list[float]] = {"reference": [], "stop_at_layer": []}
    same = True
    for r in range(repeats):
        rows = {}
        for path in (["reference", "stop_at_layer"] if r % 2 == 0 else ["stop_at_layer", "reference"]):
            start = time.perf_counter()
            rows[path] = _zeroed_gradients(model, layers, groups, batches, segmentation_loss,
                                           stop_at_layer=path == "stop_at_layer")
            times[path].append(time.perf_counter() - start)
        same &= rows["reference"] == rows["stop_at_layer"]
    forward = []
    for _ in range(repeats * len(groups)):
        start = time.perf_counter()
        with torch.no_grad():
            segmentation_loss(model, batches[0])
        forward.append(time.perf_counter() - start)
    per_pass = float(np.median(times["reference"])) / (len(groups) * n_batches)
    return {
        "local_check_speedup": float(np.median(times["reference"]) / np.median(times["stop_at_layer"])),
        "local_check_same_numbers": bool(same),
        "local_check_forward_share": float(np.median(forward) / per_pass),
        "local_check_pass_seconds": {"reference": per_pass,
                                     "stop_at_layer": float(np.median(times["stop_at_layer"])) / (len(groups) * n_batches)},
    }
