"""Run the benchmark suite, print a table of ratios against their goals, write benchmarks/results.json."""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from cen_lab._util.atomic import atomic_write_json

from . import data, diagnosis, forecast, local_check, probe, startup, suite, theorem_paths, translation

# name -> (goal, direction): ">=" means at least, "<=" at most
GOALS = {
    "exchange_speedup_vs_mask_reference": (1.5, ">="),
    "cen_step_over_unimodal": (2.2, "<="),
    "bottleneck_cen_step_over_unimodal": (2.1, "<="),
    "log_overhead_gamma": (0.03, "<="),
    "log_overhead_full": (0.15, "<="),
    "observer_overhead_gamma": (0.03, "<="),
    "observer_overhead_full": (0.15, "<="),
    "sweep_speedup_2_workers": (1.7, ">="),
    "theorem_throughput_speedup": (1.5, ">="),
    "local_check_speedup_bypass_over_reference": (3.0, ">="),
    "translation_step_over_single_domain": (2.1, "<="),
    "instance_exchange_speedup_vs_mask_reference": (1.5, ">="),
    "observer_translation_overhead_gamma": (0.03, "<="),
    "observer_translation_overhead_full": (0.15, "<="),
    "data_pool_cost_per_step": (0.10, "<="),
    "cli_help_over_torch_import": (0.3, "<="),
    "cli_config_over_torch_import": (0.3, "<="),
    "import_cen_lab_over_torch_import": (1.2, "<="),
    "forecast_cost_share": (0.02, "<="),
}
# reported beside the goals, without one
REPORTED = ("probe_cost_share", "probe_step_cost_ratio", "probe_cost_share_at_10000",
            "three_probes_cost_share_at_10000",
            "diagnose_seconds_per_million_rows", "diagnose_seconds_at_10000_steps", "local_check_same_numbers",
            "local_check_speedup_same_model", "local_check_speedup_stop_at_layer", "local_check_forward_share",
            "theorem_fp32_throughput_speedup",
            "theorem_bf16_step_speedup", "theorem_channels_last_step_speedup",
            "theorem_seed_batching_speedup", "bottleneck_theorem_bf16_step_speedup", "default_cen_bf16_step_speedup",
            "data_inline_cost_per_step", "data_pool_cached_cost_per_step",
            "forecast_seconds_at_10000_steps")
PARTS = {"exchange": suite.bench_exchange, "step": suite.bench_step, "logging": suite.bench_logging,
         "observer": suite.bench_observer, "sweep": suite.bench_sweep, "theorem": theorem_paths.bench_theorem,
         "local_check": local_check.bench_local_check, "diagnose": diagnosis.bench_diagnose, "probe": probe.bench_probe,
         "translation": translation.bench_translation, "data": data.bench_data,
         "startup": startup.bench_startup, "forecast": forecast.bench_forecast}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", choices=sorted(PARTS), action="append", help="run only these parts")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")), help="results file")
    args = parser.parse_args()
    out = Path(args.out)
    # a partial run (--only) updates its parts and keeps the other parts' last results
    previous = json.loads(out.read_text()) if args.only and out.exists() else {}
    results = {k: v for k, v in previous.items() if k != "meta"}
    measured = dict(previous.get("meta", {}).get("measured", {}))  # part -> when it was measured
    parts = dict(previous.get("meta", {}).get("parts", {}))  # part -> {measured, commit, threads, keys}
    commit = _commit()
    for name, fn in PARTS.items():
        if args.only and name not in args.only:
            continue
        print(f"[bench] {name} ...", flush=True)
        threads = torch.get_num_threads()
        try:  # each part runs with the process's threads and leaves them as it found them
            found = fn()
        finally:
            used, _ = torch.get_num_threads(), torch.set_num_threads(threads)
        results.update(found)
        measured[name] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        parts[name] = {"measured": measured[name], "commit": commit, "threads_after": used, "keys": sorted(found)}
    now = set(args.only or PARTS)
    stale = {k: (p, info) for p, info in parts.items() if p not in now for k in info.get("keys", [])}

    def mark(key: str) -> str:  # a figure this run did not measure says when and where it was
        if key not in stale:
            return ""
        part, info = stale[key]
        return f"  (stale: part {part}, {info['measured'][:10]} at {info['commit']})"

    print(f"\n{'measure':<38} {'value':>8}  {'goal':>8}  met")
    for key, (goal, direction) in GOALS.items():
        if key in results:
            value = results[key]
            met = value >= goal if direction == ">=" else value <= goal
            print(f"{key:<38} {value:>8.3f}  {direction}{goal:>6}  {'yes' if met else 'NO'}{mark(key)}")
            kind, _, variant = key.rpartition("_")
            interval = results.get(f"{kind}_interval", {}).get(variant) if kind.endswith("_overhead") else None
            if interval:
                print(f"{'  95% interval':<38} {interval[0]:>8.3f} to {interval[1]:.3f}")
    for key in REPORTED:
        if key in results:
            print(f"{key:<38} {results[key]:>8.3f}  (report only){mark(key)}")
    if results.get("sweep_speedup_2_workers_impossible"):
        print(f"sweep: repeats {results['sweep_speedup_2_workers_impossible']} are above 2, which 2 workers on 2 cores "
              "cannot give (a start-up or a slow phase inside the 1-worker sweep): left out of the median")
    if "theorem_fastest_path" in results:
        identical = results.get("theorem_fp32_logs_identical_to_reference")
        same = "the same logs bit for bit" if identical else "DIFFERENT logs"
        print(f"theorem runs: fastest path {results['theorem_fastest_path']}; today's fp32 path gives {same} as the "
              "reference")
    if "precision_effect" in results:
        print("\nWhat bf16 changes in the theorem runs of theorem_throughput_speedup (bf16 minus fp32, same seeds):")
        for row in results["precision_effect"]:
            if row["quantity"].endswith("(rate)"):
                print(f"  {row['quantity']:<32} {row['difference']:.4f} ({row['ci_low']:.4f} to {row['ci_high']:.4f}), "
                      f"of {row['n']} (seed, gamma) pairs")
                continue
            print(f"  {row['quantity']:<32} {row['difference']:+.4f} ({row['ci_low']:+.4f} to {row['ci_high']:+.4f}), "
                  f"fp32 spread across seeds {row['spread']:.4f}, ratio {row['ratio']:.2f}")
    if "train_gflops_over_gemm" in results:
        for k, v in results["train_gflops_over_gemm"].items():
            print(f"{'train_gflops_over_gemm (' + k + ')':<38} {v:>8.3f}  "
                  f"(report only; GEMM {results['gemm_gflops']:.1f} GFLOP/s)")
    results["meta"] = {"measured": measured, "parts": parts, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "machine": platform.machine(),
                       "python": platform.python_version(),
                       "goals": {k: {"goal": g, "direction": d} for k, (g, d) in GOALS.items()}}
    atomic_write_json(out, results)
    print(f"\nwrote {out}")
    return 0


def _commit() -> str:
    """The checkout's short commit, with ``+changes`` when the working tree differs from it ("unknown" outside git)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


if __name__ == "__main__":
    raise SystemExit(main())
