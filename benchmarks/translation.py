"""Part ``translation`` (issue 24): the translation CEN's costs, each a ratio of timings taken side by side.

- ``translation_step_over_single_domain``: one training step of the ``translate`` preset's CEN U-Net (M = 2,
  InstanceNorm, exchange and L1 on, the penalised half of the encoder's gammas at 0 so that half its channels
  are exchanged) over the same U-Net with one domain. The shared convolutions run on twice the data: 2.0 is the
  target, 2.1 the goal.
- ``instance_exchange_speedup_vs_mask_reference``: cen_lab's private InstanceNorm and exchange
  (``ModalBatchNorm2d`` with ``norm="instance"`` and ``channel_exchange``) against the reference's style (one
  ``nn.InstanceNorm2d`` per domain, then boolean-mask channel copies), forward and backward, half the channels
  exchanged, M = 2 and 3 (geometric mean), as ``exchange_speedup_vs_mask_reference`` for BatchNorm.
- ``observer_overhead_translation_gamma`` / ``_full``: ``cen_lab.observe`` in a hand-written loop on
  ``cen_lab.zoo.ReferenceStyleTranslator`` (per-domain ``insnorm_i`` children, exchange in the encoder), measured
  as ``observer_overhead_*`` is on the segmentation zoo model.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import torch

from cen_lab._util.malloc import keep_freed_memory
from cen_lab.config import ExperimentConfig
from cen_lab.network.blocks import ModalBatchNorm2d
from cen_lab.network.exchange import channel_exchange

from .suite import _step_fn, bench_observer, mask_exchange_reference, observed_step_times, paired


def translation_step(num_modalities: int, batch: int = 32, size: int = 32, exchanging: bool = True):
    """One training step of the ``translate`` preset's U-Net with ``num_modalities`` domains (the shade task)."""
    return _step_fn(ExperimentConfig.preset("translate"), num_modalities, batch, size, exchanging, task="shade")[0]


def bench_instance_exchange(shapes=((2, 32, 32, 32, 32), (2, 32, 64, 16, 16), (3, 32, 32, 32, 32),
                                    (3, 32, 64, 16, 16)), repeats: int = 25) -> dict:
    rows = []
    for shape in shapes:
        m, n, c = shape[:3]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen, requires_grad=True)
        xs = [t.detach().clone().requires_grad_() for t in x]
        gamma = torch.where(torch.rand(m, c, generator=gen) < 0.5, 0.0, 1.0)
        ours_norm = ModalBatchNorm2d(m, c).train()
        ours_norm.norm = "instance"
        ref_norms = [torch.nn.InstanceNorm2d(c, affine=True, track_running_stats=True).train() for _ in range(m)]
        with torch.no_grad():
            ours_norm.weight.copy_(gamma)
            for i, norm in enumerate(ref_norms):
                norm.weight.copy_(gamma[i])
        grad = torch.randn(shape, generator=gen)

        def ours():
            channel_exchange(ours_norm(x, stacked=False), ours_norm.weight, 0.02).backward(grad)

        def reference():
            outs = mask_exchange_reference([norm(t) for norm, t in zip(ref_norms, xs)], [nm.weight for nm in ref_norms],
                                           0.02)
            torch.autograd.backward(outs, list(grad))

        t_ours, t_ref = paired(ours, reference, repeats)
        rows.append({"shape": list(shape), "ours_ms": 1e3 * t_ours, "reference_ms": 1e3 * t_ref,
                     "speedup": t_ref / t_ours})
    geo = math.exp(statistics.fmean(math.log(r["speedup"]) for r in rows))
    return {"instance_exchange_speedup_vs_mask_reference": geo, "instance_exchange_rows": rows}


def translator_step_times(steps: int, every: int, grads: bool, out_dir: Path, batch: int = 32,
                          size: int = 32) -> tuple[np.ndarray, float]:
    """A hand-written loop on ``ReferenceStyleTranslator`` (M = 2, Adam, L1 to a target and the reference's
    penalty) with ``cen_lab.observe`` logging every ``every`` steps (``suite.observed_step_times``)."""
    from cen_lab.zoo import ReferenceStyleTranslator, translator_slim_params

    torch.manual_seed(0)
    model = ReferenceStyleTranslator(3, 3, 2)
    xs, y = [torch.randn(batch, 3, size, size) for _ in range(2)], torch.rand(batch, 3, size, size) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    slim = translator_slim_params(model)

    def loss() -> torch.Tensor:
        outputs, _ = model(xs)
        return sum(torch.nn.functional.l1_loss(o, y) for o in outputs) + 1e-3 * sum(p.abs().sum() for p in slim)

    return observed_step_times(model, "*.insnorm_conv", loss, opt, steps, every, grads, out_dir)


def bench_translation(repeats: int = 30, steps: int = 600, exchange_repeats: int = 25) -> dict:
    """The three measurements of the module docstring; the observer part runs ``steps`` steps per variant, as
    ``suite.bench_observer`` does on the segmentation zoo model."""
    tuned = keep_freed_memory()  # as cen_lab.train does
    cen, uni = translation_step(2), translation_step(1)
    t_cen, t_uni = paired(cen, uni, repeats)
    out = {"translation_step_over_single_domain": t_cen / t_uni, "translation_step_ms": 1e3 * t_cen,
           "translation_single_domain_step_ms": 1e3 * t_uni, "malloc_tuned": tuned}
    out.update(bench_instance_exchange(repeats=exchange_repeats))
    out.update(bench_observer(steps, translator_step_times, prefix="observer_translation"))
    return out
