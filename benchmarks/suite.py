"""The measurements behind ``python -m benchmarks`` (see README.md here).

Every number is a ratio of two timings taken side by side in the same run: after warm-up the two variants are
run alternately and the medians compared, so that slow phases of a shared, noisy machine hit both alike. The
logging overhead alternates at the finest grain there is: logged and unlogged steps of one training run.
"""

from __future__ import annotations

import math
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch
from scipy import stats

import cen_lab
from cen_lab import training
from cen_lab._util.malloc import keep_freed_memory
from cen_lab.config import ExperimentConfig
from cen_lab.network.exchange import channel_exchange
from cen_lab.network.architectures import build_model
from cen_lab.runs import RunWriter
from cen_lab.experiments.training import forward_backward, penalised_update, _make_optimizer


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
                   repeats: int = 25) -> dict:
    """cen_lab's exchange against the mask reference, forward + backward, half the channels exchanged (with
    the allocator settings of ``cen_lab.train``, for both)."""
    keep_freed_memory()
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
             exchanging: bool = True, task: str = "seg") -> tuple[Callable[[], None], torch.nn.Module]:
    """One training step of ``cfg``'s architecture on ``task`` (``"seg"``, or ``"shade"`` for translation); with
    ``exchanging`` the penalised gammas start at 0, the state late in training in which half of each modality's
    channels are exchanged."""
    torch.manual_seed(0)
    sparsity = cfg.train.sparsity if num_modalities > 1 else "none"
    model = build_model(cfg.model, num_modalities, 3, 5, task, sparsity).train()
    if exchanging:
        with torch.no_grad():
            for _, bn in model.cen_layers():
                bn.weight[bn.penalty_mask] = 0.0
    optimizer = _make_optimizer(model, cfg)
    layers = model.cen_layers()
    weights, masks = [bn.weight for _, bn in layers], [bn.penalty_mask for _, bn in layers]
    x = torch.randn(num_modalities, batch, 3, size, size)
    y = torch.randint(0, 5, (batch, size, size)) if task == "seg" else {task: torch.rand(batch, 3, size, size)}

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


def bench_step(repeats: int = 50) -> dict:
    """One CEN training step (M = 2, exchange and L1 on, half the channels exchanged) against the same
    architecture with one modality; also the ratio early in training, when nothing is exchanged yet, the CEN
    step's minor page faults (near 0 with ``keep_freed_memory``, as in ``cen_lab.train``), and the ratio for the
    bottleneck architecture (``model.arch = "bottleneck"``)."""
    tuned = keep_freed_memory()  # as cen_lab.train does
    cfg = ExperimentConfig.preset("default")
    cen, cen_model = _step_fn(cfg, 2)
    uni, uni_model = _step_fn(cfg, 1)
    t_cen, t_uni = paired(cen, uni, repeats)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        cen()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 5
    fresh, _ = _step_fn(cfg, 2, exchanging=False)  # nothing below the threshold yet, as early in training
    t_fresh, t_uni2 = paired(fresh, uni, repeats)
    # training ~ 3x the forward FLOPs (forward, and backward to inputs and to weights)
    flops_cen, flops_uni = 3 * conv_flops(cen_model, 2), 3 * conv_flops(uni_model, 1)
    peak = gemm_rate()
    # the same for model.arch = "bottleneck" (the default preset's widths as planes, expansion 4)
    bcfg = cfg.override({"model.arch": "bottleneck"})
    bcen, bcen_model = _step_fn(bcfg, 2)
    buni, buni_model = _step_fn(bcfg, 1)
    tb_cen, tb_uni = paired(bcen, buni, max(10, repeats // 2))
    bflops_cen, bflops_uni = 3 * conv_flops(bcen_model, 2), 3 * conv_flops(buni_model, 1)
    return {"cen_step_over_unimodal": t_cen / t_uni, "cen_step_ms": 1e3 * t_cen, "unimodal_step_ms": 1e3 * t_uni,
            "malloc_tuned": tuned, "cen_step_page_faults": faults,
            "cen_step_over_unimodal_nothing_exchanged": t_fresh / t_uni2,
            "gemm_gflops": peak / 1e9, "train_gflops_cen": flops_cen / t_cen / 1e9,
            "train_gflops_unimodal": flops_uni / t_uni / 1e9,
            "train_gflops_over_gemm": {"cen": flops_cen / t_cen / peak, "unimodal": flops_uni / t_uni / peak,
                                       "bottleneck_cen": bflops_cen / tb_cen / peak,
                                       "bottleneck_unimodal": bflops_uni / tb_uni / peak},
            "bottleneck_cen_step_over_unimodal": tb_cen / tb_uni, "bottleneck_cen_step_ms": 1e3 * tb_cen,
            "bottleneck_unimodal_step_ms": 1e3 * tb_uni}


# -- logging overhead ---------------------------------------------------------------------------------------------


def step_times(config: ExperimentConfig, out_dir: Path) -> tuple[np.ndarray, float]:
    """Train ``config`` with ``cen_lab.train`` and time every step inside it.

    Returns the seconds of steps ``1 .. steps - 1`` (entry ``i`` is step ``i + 1``), each from the end of one
    optimizer update to the end of the next, so that step ``s`` holds its logging before the forward pass,
    the forward, backward and logging after it, and its update; and the seconds spent writing buffered rows
    to Parquet (at checkpoints and at the end, outside the steps).
    """
    stamps: list[float] = []
    flush_seconds = 0.0
    update, flush = training.penalised_update, RunWriter.flush

    def timed_update(*args, **kwargs):
        update(*args, **kwargs)
        stamps.append(time.perf_counter())

    def timed_flush(self, upper):
        nonlocal flush_seconds
        start = time.perf_counter()
        flush(self, upper)
        flush_seconds += time.perf_counter() - start

    # train() looks both up at call time, so patching them times the real loop without changing it
    with mock.patch.object(training, "penalised_update", timed_update), mock.patch.object(RunWriter, "flush", timed_flush):
        cen_lab.train(config, out_dir, progress=False)
    return np.diff(stamps), flush_seconds


def paired_step_overhead(times: np.ndarray, every: int = 2, trim: float = 0.1) -> tuple[float, tuple[float, float]]:
    """Relative extra time of the logged steps of a run logged every ``every`` steps, and its 95% interval.

    ``times[i]`` is step ``i + 1`` (as ``step_times`` returns). Each logged step is compared with the mean of
    its two neighbours, which ran moments before and after it, so slow phases of a shared machine hit both
    alike. Returns the ``trim``-trimmed mean of those ratios minus 1 (trimmed, because a step that another
    process interrupts is 20-50% slow, whether logged or not) and its 95% bootstrap interval.
    """
    steps = np.arange(1, times.size + 1)
    logged = np.flatnonzero((steps % every == 0) & (steps > 1) & (steps < times.size))  # both neighbours exist
    if logged.size < 5:
        raise ValueError(f"need at least 5 logged steps with both neighbours, got {logged.size}")
    ratios = times[logged] / (0.5 * (times[logged - 1] + times[logged + 1]))
    estimate = float(stats.trim_mean(ratios, trim)) - 1.0
    boot = stats.bootstrap((ratios,), lambda r, axis: stats.trim_mean(r, trim, axis=axis), n_resamples=2000,
                           random_state=0, vectorized=True)
    return estimate, (float(boot.confidence_interval.low) - 1.0, float(boot.confidence_interval.high) - 1.0)


def bench_logging(steps: int = 600, config: ExperimentConfig | None = None) -> dict:
    """Training-time increase from logging, measured step by step inside one run of ``cen_lab.train``.

    The run logs every second step, so logged and unlogged steps alternate and each logged step is compared
    with its neighbours (``paired_step_overhead``). The rows' Parquet writes happen outside the steps; their
    time is spread over the logged steps and added. The result is what logging every step would add. Whole
    runs with and without logging were tried first: their step times differ by 10-30% from run to run on a
    shared machine, far more than the 1-2% to be measured (see README.md). ``config``: default the
    ``"default"`` preset.
    """
    every = 2
    base = (config or ExperimentConfig.preset("default")).override(
        {"log.eval_every": 10_000, "train.ckpt_every": 10_000, "train.steps": steps, "log.every": every})
    variants = {"gamma": {}, "full": {"log.grads": True}}
    out: dict = {"log_overhead_interval": {}, "log_per_step_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # the first training in a process pays one-time costs (torch imports torch._dynamo, about 1.5 s, on the
        # first optimizer step); the warm-up keeps them out of the measured runs
        cen_lab.train(base.override({"train.steps": 2, "name": "warm-up"}), Path(tmp) / "warm-up", progress=False)
        for name, over in variants.items():
            times, flush_seconds = step_times(base.override({**over, "name": name}), Path(tmp) / name)
            # all writes count as logging's, the final record and evaluation too (a slight overestimate)
            _add_overhead(out, "log", name, times, flush_seconds, steps, every)
    return out


def _add_overhead(out: dict, prefix: str, name: str, times: np.ndarray, write_seconds: float, steps: int,
                  every: int) -> None:
    """Put the overhead of one variant into ``out``: ``<prefix>_overhead_<name>`` (in-step cost from
    ``paired_step_overhead`` plus the writes spread over the logged steps), its interval, and the per-step ms."""
    unlogged = (np.arange(1, times.size + 1) % every) != 0  # entry i is step i + 1
    plain = float(np.median(times[unlogged]))
    extra = write_seconds / (steps // every) / plain
    estimate, (low, high) = paired_step_overhead(times, every)
    out[f"{prefix}_overhead_{name}"] = estimate + extra
    out[f"{prefix}_overhead_interval"][name] = [low + extra, high + extra]
    out[f"{prefix}_per_step_ms"][name] = {"unlogged_step": 1e3 * plain, "logging": 1e3 * plain * estimate,
                                          "parquet_writes": 1e3 * plain * extra}


def observer_step_times(steps: int, every: int, grads: bool, out_dir: Path, batch: int = 32,
                        size: int = 32) -> tuple[np.ndarray, float]:
    """A user's own loop on ``cen_lab.zoo.ReferenceStyleCEN`` (M = 2, SGD, the reference's L1 in the loss) with
    ``cen_lab.observe`` logging every ``every`` steps (with ``grads``: also ``obs.grads``). Returns the seconds
    of steps ``1 .. steps - 1`` as ``step_times`` does, without the Parquet writes, and the seconds of those."""
    from cen_lab.zoo import ReferenceStyleCEN, reference_l1, reference_slim_params, segmentation_loss

    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 5)
    xs, y = [torch.randn(batch, 3, size, size) for _ in range(2)], torch.randint(0, 5, (batch, size, size))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    slim = reference_slim_params(model)
    return observed_step_times(model, "*.bn2", lambda: segmentation_loss(model, (xs, y)) + 3 * 1e-3 * reference_l1(slim),
                               opt, steps, every, grads, out_dir)


def observed_step_times(model: torch.nn.Module, layers: str, loss_fn: Callable[[], torch.Tensor],
                        opt: torch.optim.Optimizer, steps: int, every: int, grads: bool,
                        out_dir: Path) -> tuple[np.ndarray, float]:
    """``steps`` steps of ``loss_fn`` (the loss of one batch, penalty included) and ``opt`` on ``model``, observed
    at ``layers`` with ``penalised="alternate-halves"`` every ``every`` steps (with ``grads``: also
    ``obs.grads``); the seconds of steps ``1 .. steps - 1`` without the Parquet writes, and those writes' seconds."""
    import contextlib

    obs = cen_lab.observe(model, out_dir, layers=layers, penalised="alternate-halves", overwrite=True)
    flush, flushed = obs.writer.flush, [0.0]

    def timed_flush(upper):
        start = time.perf_counter()
        flush(upper)
        flushed[0] += time.perf_counter() - start

    obs.writer.flush = timed_flush  # this writer only
    stamps, in_step = [], []
    for step in range(steps):
        logged = step % every == 0
        before = flushed[0]
        with obs.grads(step) if (logged and grads) else contextlib.nullcontext():
            opt.zero_grad()
            loss_fn().backward()
        if logged:
            obs.log(step)
        opt.step()
        stamps.append(time.perf_counter())
        in_step.append(flushed[0] - before)
    start = time.perf_counter()
    obs.close()
    closing = time.perf_counter() - start
    times = np.diff(stamps) - np.asarray(in_step[1:])  # the writes are counted apart, spread over the logged steps
    return times, flushed[0] + closing


def bench_observer(steps: int = 600, step_times: Callable | None = None, prefix: str = "observer") -> dict:
    """Logging overhead of ``cen_lab.observe`` in a user's own loop (``step_times``, default
    ``observer_step_times``), measured as ``bench_logging`` measures ``cen_lab.train``'s: logged and unlogged
    steps alternate in one loop, each logged step is compared with its neighbours, and the Parquet writes are
    spread over the logged steps. Keys ``<prefix>_overhead_gamma`` / ``_full``, their intervals and per-step ms."""
    step_times = step_times or observer_step_times
    every = 2
    out: dict = {f"{prefix}_overhead_interval": {}, f"{prefix}_per_step_ms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        step_times(4, every, True, Path(tmp) / "warm-up")
        for name, grads in (("gamma", False), ("full", True)):
            times, write_seconds = step_times(steps, every, grads, Path(tmp) / name)
            _add_overhead(out, prefix, name, times, write_seconds, steps, every)
    return out


# -- sweeps -------------------------------------------------------------------------------------------------------


def bench_sweep(seeds: int = 4, steps: int = 100, repeats: int = 3) -> dict:
    """Seeds per second of the sweep runner with 2 loky workers over 1 (one thread per worker).

    The two are run alternately ``repeats`` times after a warm-up sweep of each kind: the 2 loky workers and their
    training processes, and, for 1 worker (which joblib runs in this process), this process's training process, so
    that neither side pays a start-up (about 3 s) inside a timed sweep. The result is the median of the ratios of
    each adjacent pair, so that one slow phase of the machine spoils one pair only; a ratio above 2, which two
    workers on 2 cores cannot give, is set apart (``sweep_speedup_2_workers_impossible``) and left out of it.
    """
    base = ExperimentConfig.preset("default").override({"train.steps": steps, "model.widths": [16, 16, 32, 32],
                                                       "log.eval_every": 10_000})
    rates: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for n_jobs in (1, 2):  # starts the training processes of both sides and imports torch in them
            cen_lab.sweep(base.override({"train.steps": 2}), {"seed": range(2)}, Path(tmp) / f"warm{n_jobs}",
                          backend="loky", n_jobs=n_jobs, progress=False)
        for r in range(repeats):
            for n_jobs in (1, 2):
                start = time.perf_counter()
                table = cen_lab.sweep(base, {"seed": range(seeds)}, Path(tmp) / f"jobs{n_jobs}-{r}", backend="loky",
                                      n_jobs=n_jobs, progress=False)
                elapsed = time.perf_counter() - start
                assert (table["status"] == "complete").all(), table
                rates[n_jobs].append(seeds / elapsed)
    ratios = [two / one for one, two in zip(rates[1], rates[2])]
    possible = [r for r in ratios if r <= 2.0]
    return {"sweep_speedup_2_workers": statistics.median(possible) if possible else float("nan"),
            "sweep_speedup_2_workers_repeats": ratios,
            "sweep_speedup_2_workers_impossible": [r for r in ratios if r > 2.0],
            "sweep_seeds_per_second": {k: statistics.median(v) for k, v in rates.items()}}
