"""The benchmark code runs and its reference agrees with the library (correctness only; no timing asserts)."""

import json
import sys

import numpy as np
import pytest
import torch

import cen_lab
from benchmarks import __main__ as bench_cli
from benchmarks import suite
from cen_lab import training
from cen_lab.network.exchange import channel_exchange
from cen_lab.runs import RunWriter


def test_mask_reference_equals_channel_exchange():
    for m in (2, 3):
        gen = torch.Generator().manual_seed(m)
        x = torch.randn(m, 2, 6, 3, 3, generator=gen)
        gamma = torch.where(torch.rand(m, 6, generator=gen) < 0.5, 0.0, 1.0)
        ref = torch.stack(suite.mask_exchange_reference(list(x), list(gamma), 0.02))
        torch.testing.assert_close(channel_exchange(x, gamma, 0.02), ref)


def test_benchmark_parts_run_at_tiny_size():
    out = suite.bench_exchange(shapes=((2, 2, 4, 4, 4), (3, 2, 4, 4, 4)), repeats=1)
    assert out["exchange_speedup_vs_mask_reference"] > 0 and len(out["exchange_rows"]) == 2
    step, model = suite._step_fn(suite.ExperimentConfig.preset("tiny"), 2, batch=2, size=8)
    step()
    assert suite.conv_flops(model, 2, batch=2, size=8) > 0


def test_local_check_benchmark_runs_at_tiny_size_with_the_same_numbers():
    from benchmarks.local_check import bench_local_check

    torch.set_num_threads(2)  # the part runs single-threaded and leaves the threads as it found them
    out = bench_local_check(size=8, batch=4, n_batches=1, channels=3, repeats=1)
    assert torch.get_num_threads() == 2
    assert out["local_check_same_numbers"] and out["local_check_speedup_bypass_over_reference"] > 0
    assert out["local_check_speedup_same_model"] > 0


def test_translation_benchmark_runs_at_tiny_size_and_its_reference_is_the_definition(tmp_path):
    from benchmarks import translation

    translation.translation_step(2, batch=2, size=16)()
    out = translation.bench_instance_exchange(shapes=((2, 2, 4, 4, 4), (3, 2, 4, 4, 4)), repeats=1)
    assert out["instance_exchange_speedup_vs_mask_reference"] > 0 and len(out["instance_exchange_rows"]) == 2
    times, writes = translation.translator_step_times(8, 2, True, tmp_path / "obs", batch=2, size=32)
    assert times.shape == (7,) and writes > 0 and cen_lab.load_run(tmp_path / "obs").complete  # it wrote Parquet
    # the two sides compute the same thing: cen_lab's InstanceNorm and exchange against the reference's style
    from cen_lab.network.blocks import ModalBatchNorm2d

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 5, 5, generator=gen)
    gamma = torch.where(torch.rand(2, 6, generator=gen) < 0.5, 0.0, 1.0)
    ours = ModalBatchNorm2d(2, 6)
    ours.norm = "instance"
    ref = [torch.nn.InstanceNorm2d(6, affine=True) for _ in range(2)]
    with torch.no_grad():
        ours.weight.copy_(gamma)
        for i, r in enumerate(ref):
            r.weight.copy_(gamma[i])
    want = torch.stack(suite.mask_exchange_reference([r(t) for r, t in zip(ref, x)], [r.weight for r in ref], 0.02))
    torch.testing.assert_close(channel_exchange(ours(x, stacked=False), ours.weight, 0.02), want)


def test_diagnose_benchmark_runs_at_tiny_size():
    from benchmarks.diagnosis import bench_diagnose

    out = bench_diagnose(steps=8, repeats=1)
    assert out["diagnose_rows"] == 8 * 16 * 512 * 2 and out["diagnose_seconds_per_million_rows"] > 0


def test_paired_step_overhead_recovers_a_known_overhead_under_drift():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 402)
    drift = 1 + 0.3 * np.sin(steps / 20)  # slow phases of a busy machine, larger than the effect
    base = 0.05 * drift * rng.lognormal(0.0, 0.03, steps.size)
    logged = np.where(steps % 2 == 0, 1.02, 1.0)
    est, (low, high) = suite.paired_step_overhead(base * logged)
    assert low < 0.02 < high and abs(est - 0.02) < 0.005
    est, (low, high) = suite.paired_step_overhead(base)
    assert low < 0.0 < high and abs(est) < 0.005
    with pytest.raises(ValueError, match="at least 5"):
        suite.paired_step_overhead(base[:8])


def test_step_times_time_each_step_of_a_real_run_and_leave_train_unpatched(tmp_path):
    cfg = suite.ExperimentConfig.preset("tiny").override({"train.steps": 6, "log.every": 2})
    times, flush_seconds = suite.step_times(cfg, tmp_path / "run")
    assert times.shape == (5,) and (times > 0).all() and flush_seconds > 0
    assert cen_lab.load_run(tmp_path / "run").complete
    assert training.penalised_update is suite.penalised_update and RunWriter.flush.__name__ == "flush"
    out = suite.bench_logging(steps=24, config=cfg)
    assert set(out["log_overhead_interval"]) == {"gamma", "full"}
    for name in ("gamma", "full"):
        low, high = out["log_overhead_interval"][name]
        assert low <= out[f"log_overhead_{name}"] <= high


def test_partial_benchmark_run_keeps_the_other_parts(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    monkeypatch.setattr(bench_cli, "GOALS", {"x": (1.0, ">="), "y": (1.0, ">=")})

    def single_threaded():  # a part that changes the threads, as the local check's does
        torch.set_num_threads(1)
        return {"x": 1.0}

    monkeypatch.setattr(bench_cli, "PARTS", {"a": single_threaded, "b": lambda: {"y": 2.0}})
    monkeypatch.setattr(sys, "argv", ["bench", "--out", str(out)])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bench_cli.main() == 0
        assert torch.get_num_threads() == 2  # restored after part a
    finally:
        torch.set_num_threads(threads)
    first = json.loads(out.read_text())
    assert first["meta"]["parts"]["a"]["threads_after"] == 1 and first["meta"]["parts"]["b"]["threads_after"] == 2
    assert "stale" not in capsys.readouterr().out
    monkeypatch.setattr(bench_cli, "PARTS", {"a": lambda: {"x": 3.0}, "b": lambda: {"y": 4.0}})
    monkeypatch.setattr(sys, "argv", ["bench", "--out", str(out), "--only", "a"])
    assert bench_cli.main() == 0
    second = json.loads(out.read_text())
    assert (second["x"], second["y"]) == (3.0, 2.0)
    assert second["meta"]["measured"]["b"] == first["meta"]["measured"]["b"]
    printed = capsys.readouterr().out.splitlines()
    y = next(line for line in printed if line.startswith("y "))
    x = next(line for line in printed if line.startswith("x "))
    assert f"(stale: part b, {first['meta']['measured']['b'][:10]} at " in y and "stale" not in x


def test_observer_benchmark_times_a_user_loop(tmp_path):
    times, write_seconds = suite.observer_step_times(8, 2, True, tmp_path / "run")
    assert times.shape == (7,) and (times > 0).all() and write_seconds > 0
    run = cen_lab.load_run(tmp_path / "run")
    assert run.source == "observed" and sorted(run.gammas["step"].unique()) == [0, 2, 4, 6]
    assert sorted(run.grads["step"].unique()) == [0, 2, 4, 6]
    out = suite.bench_observer(steps=24)
    for name in ("gamma", "full"):
        low, high = out["observer_overhead_interval"][name]
        assert low <= out[f"observer_overhead_{name}"] <= high


def test_theorem_benchmark_runs_at_tiny_size():
    from benchmarks import theorem_paths

    out = theorem_paths.bench_theorem(seeds=2, steps=4, repeats=1)
    for key in ("theorem_throughput_speedup", "theorem_bf16_step_speedup", "theorem_channels_last_step_speedup",
                "theorem_seed_batching_speedup", "bottleneck_theorem_bf16_step_speedup",
                "default_cen_bf16_step_speedup"):
        assert out[key] > 0, key
    assert len(out["theorem_throughput_speedup_per_seed"]) == 2 and isinstance(out["bf16_native"], bool)
    # the reference path (argmax in validation) is kept inside the benchmark and logs what today's fp32 path logs
    assert out["theorem_fp32_logs_identical_to_reference"] is True and out["theorem_fp32_throughput_speedup"] > 0
    assert out["theorem_fastest_path"] in ("fp32", "bf16")
    assert {"final gamma", "final |gamma| mean", "final val miou/ensemble"} <= {
        r["quantity"] for r in out["precision_effect"]}
    assert set(bench_cli.GOALS) >= {"theorem_throughput_speedup"} and "theorem" in bench_cli.PARTS


def test_probe_benchmark_runs_at_tiny_size():
    from benchmarks.probe import bench_probe

    out = bench_probe(preset="tiny", budget=40, probe_steps=10, threads=1, repeats=2)
    assert {k: len(v) for k, v in out["probe_seconds"].items()} == {"probe": 2, "full": 2, "setup": 2}
    assert 0 < out["probe_cost_share"] and out["probe_step_cost_ratio"] > 0
    assert out["three_probes_cost_share_at_10000"] == pytest.approx(3 * out["probe_cost_share_at_10000"])


def test_the_observer_overhead_part_takes_any_loop():
    from benchmarks import translation

    out = suite.bench_observer(12, translation.translator_step_times, prefix="observer_translation")
    assert set(out) >= {"observer_translation_overhead_gamma", "observer_translation_overhead_full",
                        "observer_translation_overhead_interval"}


def test_data_benchmark_runs_at_small_size_and_restores_the_cache_folder():
    import os

    from benchmarks.data import bench_data

    before = os.environ.get("CEN_LAB_CACHE")
    out = bench_data(scenes=32, repeats=1)
    assert os.environ.get("CEN_LAB_CACHE") == before
    secs = out["data_seconds"]
    assert secs["pool_scenes"] == 65536 and secs["steps"] == 10000
    # the first run pays the drawing on top of what a cached run pays
    assert out["data_pool_cost_per_step"] > out["data_pool_cached_cost_per_step"] > 0
    assert out["data_inline_cost_per_step"] == pytest.approx(secs["inline_batch"] / secs["cen_step"])


def test_startup_benchmark_times_the_commands_and_help_needs_no_torch():
    import subprocess

    from benchmarks.startup import bench_startup

    out = bench_startup(repeats=1, warmup=0)
    assert set(out["startup_seconds"]) == {"torch", "help", "config", "import"}
    assert out["cli_help_over_torch_import"] == pytest.approx(out["startup_seconds"]["help"] / out["startup_seconds"]["torch"])
    # what the goal rests on, checked without timing: help, config and `import cen_lab` load no torch
    code = ("import sys, runpy; sys.argv = ['cen-lab', {}];\n"
            "try: runpy.run_module('cen_lab', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    for args in ("'--help'", "'config', '--preset', 'tiny'"):
        subprocess.run([sys.executable, "-c", code.format(args)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", "import sys, cen_lab; cen_lab.ExperimentConfig.preset('tiny');"
                    "assert 'torch' not in sys.modules"], check=True)


def test_sweep_benchmark_sets_apart_ratios_two_cores_cannot_give(monkeypatch):
    import statistics

    rates = iter([1.0, 2.5, 1.0, 1.8, 1.0, 1.9])  # seeds per second: 1 worker, then 2, three times

    def fake_sweep(base, grid, out, **kw):  # no training: each timed sweep "takes" 4 seeds / its rate
        import pandas as pd

        fake_sweep.elapsed = 4 / next(rates) if not str(out).endswith(("warm1", "warm2")) else 0.0
        return pd.DataFrame({"status": ["complete"]})

    ticks = []

    def perf_counter():
        ticks.append(None)
        return 0.0 if len(ticks) % 2 else fake_sweep.elapsed

    monkeypatch.setattr(suite.cen_lab, "sweep", fake_sweep)
    monkeypatch.setattr(suite.time, "perf_counter", perf_counter)
    out = suite.bench_sweep(seeds=4, steps=2, repeats=3)
    assert out["sweep_speedup_2_workers_repeats"] == pytest.approx([2.5, 1.8, 1.9])
    assert out["sweep_speedup_2_workers_impossible"] == pytest.approx([2.5])
    assert out["sweep_speedup_2_workers"] == pytest.approx(statistics.median([1.8, 1.9]))


def test_forecast_benchmark_prices_a_long_runs_forecasts_against_its_steps():
    from benchmarks.forecast import bench_forecast

    out = bench_forecast(repeats=1)
    secs = out["forecast_seconds"]
    assert secs["forecasts"] == 50  # one every 200 steps of 10,000 (auto_cadence(10000, 20))
    assert out["forecast_cost_share"] == pytest.approx(secs["all_forecasts_of_a_run"] / (10000 * secs["cen_step"]))
    assert 0 < out["forecast_seconds_at_10000_steps"] < secs["all_forecasts_of_a_run"]
