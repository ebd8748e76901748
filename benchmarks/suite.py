"""The measurements behind ``python -m benchmarks`` (see README.md here).

Every number is a ratio of two timings taken side by side in the same run: after warm-up the two variants are
run alternately and the medians compared, so that slow phases of a shared, noisy machine hit both alike.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import cen_lab
from cen_lab.config import ExperimentConfig
from cen_lab.exchange import channel_exchange
from cen_lab.models import build_model
from cen_lab.training import forward_backward, penalised_update, _make_optimizer


def paired(a: Callable[[], None], b: Callable[[], None], repeats: int = 15, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, measured alternately after ``warmup`` calls of each."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


# -- exchange ---------------------------------------------------------------------------------------------------


def mask_exchange_reference(xs: list[torch.Tensor], gammas: list[torch.Tensor], threshold: float) -> list[torch.Tensor]:
    """The reference implementation's style: one tensor per modality, boolean-mask channel copies."""
    m = len(xs)
    outs = []
    for i in range(m):
        keep = gammas[i].abs() >= threshold
        out = torch.zeros_like(xs[i])
        out[:, keep] = xs[i][:, keep]
        others = xs[1 - i] if m == 2 else sum(xs[j] for j in range(m) if j != i) / (m - 1)
        out[:, ~keep] = others[:, ~keep]
        outs.append(out)
    return outs


def bench_exchange(shapes=((2, 32, 32, 32, 32), (2, 32, 64, 16, 16), (3, 32, 32, 32, 32), (3, 32, 64, 16, 16)),
                   repeats: int = 15) -> dict:
    """cen_lab's exchange against the mask reference, forward + backward, half the channels exchanged."""
    rows = []
    for shape in shapes:
        m, n, c = shape[:3]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen, requires_grad=True)
        xs = [torch.randn(shape[1:], generator=gen, requires_grad=True) for _ in range(m)]
        gamma = torch.where(torch.rand(m, c, generator=gen) < 0.5, 0.0, 1.0)
        grad = torch.randn(shape, generator=gen)

        def ours():
            channel_exchange(x, gamma, 0.02).backward(grad)

        def reference():
            outs = mask_exchange_reference(xs, list(gamma), 0.02)
            torch.autograd.backward(outs, list(grad))

        t_ours, t_ref = paired(ours, reference, repeats)
        rows.append({"shape": list(shape), "ours_ms": 1e3 * t_ours, "reference_ms": 1e3 * t_ref, "speedup": t_ref / t_ours})
    geo = math.exp(statistics.fmean(math.log(r["speedup"]) for r in rows))
    return {"exchange_speedup_vs_mask_reference": geo, "exchange_rows": rows}


# -- one training step -----------------------------------------------------------------------------------------


def _step_fn(cfg: ExperimentConfig, num_modalities: int, batch: int = 32, size: int = 32,
             exchanging: bool = True) -> tuple[Callable[[], None], torch.nn.Module]:
    """One training step of the default architecture; with ``exchanging`` the penalised gammas start at 0, the
    state late in training in which half of each modality's channels are exchanged."""
    torch.manual_seed(0)
    sparsity = cfg.train.sparsity if num_modalities > 1 else "none"
    model = build_model(cfg.model, num_modalities, 3, 5, "seg", sparsity).train()
    if exchanging:
        with torch.no_grad():
            for _, bn in model.cen_layers():
                bn.weight[bn.penalty_mask] = 0.0
    optimizer = _make_optimizer(model, cfg)
    layers = model.cen_layers()
    weights, masks = [bn.weight for _, bn in layers], [bn.penalty_mask for _, bn in layers]
    x = torch.randn(num_modalities, batch, 3, size, size)
    y = torch.randint(0, 5, (batch, size, size))

    def step():
        forward_backward(model, optimizer, x, y)
        penalised_update(optimizer, weights, masks, cfg.train)

    return step, model


def conv_flops(model: torch.nn.Module, num_modalities: int, batch: int = 32, size: int = 32) -> float:
    """Multiply-add FLOPs (2 per MAC) of all convolutions in one forward pass, counted with hooks."""
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2.0 * module.in_channels * module.out_channels * k * output.shape[0] * output.shape[2] * output.shape[3]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.randn(num_modalities, batch, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large fp32 matrix multiply (the practical ceiling of this machine)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


def bench_step(repeats: int = 15) -> dict:
    """One CEN training step (M = 2, exchange and L1 on, half the channels exchanged) against the same
    architecture with one modality; also the ratio early in training, when nothing is exchanged yet."""
    cfg = ExperimentConfig.preset("default")
    cen, cen_model = _step_fn(cfg, 2)
    uni, uni_model = _step_fn(cfg, 1)
    t_cen, t_uni = paired(cen, uni, repeats)
    fresh, _ = _step_fn(cfg, 2, exchanging=False)  # nothing below the threshold yet, as early in training
    t_fresh, t_uni2 = paired(fresh, uni, repeats)
    # training ~ 3x the forward FLOPs (forward, and backward to inputs and to weights)
    flops_cen, flops_uni = 3 * conv_flops(cen_model, 2), 3 * conv_flops(uni_model, 1)
    peak = gemm_rate()
    return {"cen_step_over_unimodal": t_cen / t_uni, "cen_step_ms": 1e3 * t_cen, "unimodal_step_ms": 1e3 * t_uni,
            "cen_step_over_unimodal_nothing_exchanged": t_fresh / t_uni2,
            "gemm_gflops": peak / 1e9, "train_gflops_cen": flops_cen / t_cen / 1e9,
            "train_gflops_unimodal": flops_uni / t_uni / 1e9,
            "train_gflops_over_gemm": {"cen": flops_cen / t_cen / peak, "unimodal": flops_uni / t_uni / peak}}


# -- logging overhead ---------------------------------------------------------------------------------------------


def bench_logging(short: int = 30, long: int = 90, repeats: int = 3) -> dict:
    """Training-time increase from logging every step: the per-step cost is (T(long) - T(short)) / (long - short),
    which removes set-up, evaluation and the final checkpoint, common to both lengths."""
    base = ExperimentConfig.preset("default").override({"log.eval_every": 10_000, "train.ckpt_every": 10_000})
    variants = {"none": {"log.every": 10_000}, "gamma": {"log.every": 1},
                "full": {"log.every": 1, "log.grads": True}}
    per_step: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        # the first training in a process pays one-time costs (torch imports torch._dynamo, about 1.5 s, on the
        # first optimizer step); without this warm-up they land in one variant's short run
        cen_lab.train(base.override({"train.steps": 2, "name": "warm-up"}), Path(tmp) / "warm-up", progress=False)
        for r in range(repeats):
            for name, over in variants.items():
                times = {}
                for steps in (short, long):
                    cfg = base.override({**over, "train.steps": steps, "name": f"{name}-{steps}-{r}"})
                    start = time.perf_counter()
                    cen_lab.train(cfg, Path(tmp) / cfg.name, progress=False)
                    times[steps] = time.perf_counter() - start
                per_step[name].append((times[long] - times[short]) / (long - short))
    med = {k: statistics.median(v) for k, v in per_step.items()}
    return {"log_overhead_gamma": med["gamma"] / med["none"] - 1, "log_overhead_full": med["full"] / med["none"] - 1,
            "log_per_step_ms": {k: 1e3 * v for k, v in med.items()}}


# -- sweeps -------------------------------------------------------------------------------------------------------


def bench_sweep(seeds: int = 4, steps: int = 150) -> dict:
    """Seeds per second of the sweep runner with 2 loky workers over 1 (both warmed up, one thread per worker)."""
    base = ExperimentConfig.preset("default").override({"train.steps": steps, "model.widths": [16, 16, 32, 32],
                                                       "log.eval_every": 10_000})
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cen_lab.sweep(base.override({"train.steps": 2}), {"seed": range(2)}, Path(tmp) / "warm", backend="loky",
                      n_jobs=2, progress=False)  # starts the worker processes and imports torch in them
        for n_jobs in (1, 2):
            start = time.perf_counter()
            table = cen_lab.sweep(base, {"seed": range(seeds)}, Path(tmp) / f"jobs{n_jobs}", backend="loky",
                                  n_jobs=n_jobs, progress=False)
            elapsed = time.perf_counter() - start
            assert (table["status"] == "complete").all(), table
            results[n_jobs] = seeds / elapsed
    return {"sweep_speedup_2_workers": results[2] / results[1], "sweep_seeds_per_second": results}
