"""How fast the small networks of the Theorem 1 experiments train, and which paths make them faster.

``bench_theorem`` times, side by side in one run and with one torch thread (as each sweep worker has):

- one training step of the theorem network (``cen_lab.theorem.theorem_base``: plain blocks (16, 16), no
  exchange) in fp32 against the same step under bfloat16 autocast (``train.precision = "bf16"``), in
  ``channels_last`` memory format (each modality's ``[N, C, H, W]`` stored as NHWC, the layout the model's
  ``[M, N, C, H, W]`` reshapes keep), and four seeds' steps against one step of four times the batch (the most
  that batching four seeds into one model could gain: the same convolutions on four times the data);
- the same bf16 ratio for the bottleneck theorem network and for the default CEN step;
- all with the allocator settings of ``cen_lab.train`` (``cen_lab._malloc``): without them the fp32 theorem step
  takes 21 ms instead of 12 ms here, from page faults on its larger buffers, and bf16 seemed 1.7 times faster;
- end to end, training steps per second of ``cen_lab.train`` on theorem runs, seed by seed in rotating order,
  with logging, evaluation and checkpoints as the theorem notebook has them, of three paths: the reference
  (the code of 2026-11-30: fp32, validation classes read with ``argmax``), today's fp32 path (the same logs bit
  for bit) and the bf16 path. ``theorem_throughput_speedup`` is the fastest path over the reference,
  ``theorem_fp32_throughput_speedup`` today's fp32 over the reference, and ``precision_effect`` what bf16
  changes in those runs (``cen_lab.precision.compare_precisions``).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
import torch.nn.functional as F

import cen_lab
from cen_lab._util.malloc import keep_freed_memory
from cen_lab.config import ExperimentConfig
from cen_lab.network.architectures import build_model
from cen_lab.experiments.precision import bf16_native, compare_precisions
from cen_lab.network.tasks import TaskMetrics
from cen_lab.theory.local_checks import theorem_config
from cen_lab.experiments.training import _make_optimizer, forward_backward, penalised_update

from .suite import paired


def _theorem_step(cfg: ExperimentConfig, batch: int = 32, precision: str = "fp32",
                  channels_last: bool = False) -> Callable[[], None]:
    """One training step (forward, backward, penalty, update) of ``cfg``'s network on random data."""
    torch.manual_seed(0)
    model = build_model(cfg.model, 2, 3, 5, "seg", cfg.train.sparsity).train()
    x, y = torch.randn(2, batch, 3, 32, 32), torch.randint(0, 5, (batch, 32, 32))
    if channels_last:  # every modality's [N, C, H, W] as NHWC: the model's reshapes to [M * N, C, H, W] keep it
        model.to(memory_format=torch.channels_last)
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
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


class _ArgmaxMetrics(TaskMetrics):
    """The reference's validation metrics: each pixel's class read with ``argmax(1)`` (2026-11-30), which is
    several times slower over the class dimension than today's ``max(1).indices`` and counts the same."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if self.task != "seg":
            return super().update(preds, target)
        with torch.no_grad():
            for i, pred in enumerate(preds):
                self.loss[i] += F.cross_entropy(pred, target, reduction="sum").double().cpu()
                self.count[i] += target.numel()
                idx = target.flatten() * self.k + pred.argmax(1).flatten()
                self.conf[i] += torch.bincount(idx, minlength=self.k**2).view(self.k, self.k).cpu()


PATHS = {"reference": "fp32", "fp32": "fp32", "bf16": "bf16"}  # end-to-end path -> train.precision


def _end_to_end(seeds: int, steps: int) -> dict:
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    runs: dict[str, dict[int, object]] = {p: {} for p in PATHS}
    names = list(PATHS)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for path in names[seed % 3:] + names[:seed % 3]:  # rotate the order, seed by seed
                cfg = theorem_config("default", lam=1e-2, seed=seed, steps=steps, train__precision=PATHS[path])
                metrics = _ArgmaxMetrics if path == "reference" else TaskMetrics
                with mock.patch("cen_lab.experiments.evaluation.TaskMetrics", metrics):
                    run = cen_lab.train(cfg, Path(tmp) / f"{path}-{seed}", progress=False)
                seconds[path].append(float(run.manifest["train_seconds"]))
                runs[path][seed] = run
        same = all(_same_logs(runs["reference"][s], runs["fp32"][s]) for s in range(seeds))
        effect = compare_precisions(runs["fp32"], runs["bf16"])
    speedup = {p: [r / t for r, t in zip(seconds["reference"], seconds[p])] for p in ("fp32", "bf16")}
    fastest = max(speedup, key=lambda p: statistics.median(speedup[p]))
    return {"theorem_throughput_speedup": statistics.median(speedup[fastest]), "theorem_fastest_path": fastest,
            "theorem_throughput_speedup_per_seed": speedup[fastest],
            "theorem_fp32_throughput_speedup": statistics.median(speedup["fp32"]),
            "theorem_fp32_logs_identical_to_reference": same,
            "theorem_run_seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "precision_effect": effect.round(5).to_dict(orient="records")}


def _same_logs(a, b) -> bool:
    """Whether two runs logged the same gammas, gradients, exchange maps and metrics, bit for bit."""
    return all(getattr(a, t).reset_index(drop=True).equals(getattr(b, t).reset_index(drop=True))
               for t in ("gammas", "grads", "exchange", "metrics"))
