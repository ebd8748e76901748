"""How fast the small networks of the Theorem 1 experiments train, and which paths make them faster.

``bench_theorem`` times, side by side in one run and with one torch thread (as each sweep worker has):

- one training step of the theorem network (``cen_lab.theorem.theorem_base``: plain blocks (16, 16), no
  exchange) in fp32 against the same step under bfloat16 autocast (``train.precision = "bf16"``), in
  ``channels_last`` memory format, and four seeds' steps against one step of four times the batch (the most that
  batching four seeds into one model could gain: the same convolutions on four times the data);
- the same bf16 ratio for the bottleneck theorem network and for the default CEN step;
- all with the allocator settings of ``cen_lab.train`` (``cen_lab._malloc``): without them the fp32 theorem step
  takes 21 ms instead of 12 ms here, from page faults on its larger buffers, and bf16 seemed 1.7 times faster;
- end to end, ``theorem_throughput_speedup``: training steps per second of ``cen_lab.train`` on theorem runs
  with ``train.precision = "bf16"`` over today's path (fp32), seed by seed alternately, with logging,
  evaluation and checkpoints as the theorem notebook has them; and ``precision_effect``, what bf16 changes in
  those runs (``cen_lab.precision.compare_precisions``).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Callable

import torch

import cen_lab
from cen_lab._malloc import keep_freed_memory
from cen_lab.config import ExperimentConfig
from cen_lab.models import build_model
from cen_lab.precision import bf16_native, compare_precisions
from cen_lab.theorem import theorem_config
from cen_lab.training import _make_optimizer, forward_backward, penalised_update

from .suite import paired


def _theorem_step(cfg: ExperimentConfig, batch: int = 32, precision: str = "fp32",
                  channels_last: bool = False) -> Callable[[], None]:
    """One training step (forward, backward, penalty, update) of ``cfg``'s network on random data."""
    torch.manual_seed(0)
    model = build_model(cfg.model, 2, 3, 5, "seg", cfg.train.sparsity).train()
    x, y = torch.randn(2, batch, 3, 32, 32), torch.randint(0, 5, (batch, 32, 32))
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last_3d)  # [M, N, C, H, W] seen as NDHWC
    optimizer = _make_optimizer(model, cfg)
    layers = model.cen_layers()
    weights, masks = [bn.weight for _, bn in layers], [bn.penalty_mask for _, bn in layers]

    def step():
        forward_backward(model, optimizer, x, y, precision=precision)
        penalised_update(optimizer, weights, masks, cfg.train)

    return step


def bench_theorem(seeds: int = 4, steps: int = 300, repeats: int = 30) -> dict:
    """The step ratios and the end-to-end throughput of the theorem networks (see the module docstring)."""
    keep_freed_memory()  # as cen_lab.train does: without it, page faults on fp32 buffers inflate every fp32 time
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = _step_ratios(repeats)
        out.update(_end_to_end(seeds, steps))
    finally:
        torch.set_num_threads(previous)
    out["bf16_native"] = bf16_native("cpu")
    return out


def _step_ratios(repeats: int) -> dict:
    cfg = theorem_config("default", steps=300)
    base = _theorem_step(cfg)
    t32, t16 = paired(base, _theorem_step(cfg, precision="bf16"), repeats)
    t32b, tcl = paired(base, _theorem_step(cfg, channels_last=True), repeats)
    four = _theorem_step(cfg, batch=4 * 32)
    t32c, t128 = paired(base, four, max(10, repeats // 2))
    bcfg = theorem_config("default", steps=300, model__arch="bottleneck")
    tb32, tb16 = paired(_theorem_step(bcfg), _theorem_step(bcfg, precision="bf16"), max(10, repeats // 2))
    dcfg = ExperimentConfig.preset("default")
    td32, td16 = paired(_theorem_step(dcfg), _theorem_step(dcfg, precision="bf16"), max(10, repeats // 2))
    return {"theorem_step_ms": 1e3 * t32, "theorem_bf16_step_speedup": t32 / t16,
            "theorem_channels_last_step_speedup": t32b / tcl,
            "theorem_seed_batching_speedup": 4 * t32c / t128,
            "bottleneck_theorem_bf16_step_speedup": tb32 / tb16, "default_cen_bf16_step_speedup": td32 / td16}


def _end_to_end(seeds: int, steps: int) -> dict:
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    runs: dict[str, dict[int, object]] = {"fp32": {}, "bf16": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for precision in ("fp32", "bf16") if seed % 2 == 0 else ("bf16", "fp32"):  # alternate the order
                cfg = theorem_config("default", lam=1e-2, seed=seed, steps=steps, train__precision=precision)
                run = cen_lab.train(cfg, Path(tmp) / f"{precision}-{seed}", progress=False)
                seconds[precision].append(float(run.manifest["train_seconds"]))
                runs[precision][seed] = run
        effect = compare_precisions(runs["fp32"], runs["bf16"])
    ratios = [a / b for a, b in zip(seconds["fp32"], seconds["bf16"])]
    return {"theorem_throughput_speedup": statistics.median(ratios), "theorem_throughput_speedup_per_seed": ratios,
            "theorem_run_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "precision_effect": effect.round(5).to_dict(orient="records")}
