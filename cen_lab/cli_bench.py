"""The CLI's long benchmarks that ``cen_lab.cli`` adds: ``cen-lab bench-regime`` (does each preset exchange
partially and by importance, and do Theorem 1 and its corrected predictors say which channels?),
``cen-lab bench-long`` (the paper's lam over 10,000 steps on data that does not run out),
``cen-lab bench-forecast`` (the exchange forecast made at 5-50% of those runs, against their end),
``cen-lab bench-translation`` (the CEN U-Net against
single-domain generators, early and late fusion and its ablations on the ``translate`` preset) and
``cen-lab bench-theorem-regimes`` (Theorem 1's checks in every training regime, the long form of the theorem
notebook's section 5)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_lambda import _floats

__all__ = ["add_bench_commands", "cmd_bench_regime", "cmd_bench_long", "cmd_bench_forecast", "cmd_bench_translation", "cmd_bench_theorem_regimes"]


PREDICTOR_COLUMNS = ["preset", "arch", "predictor", "runs", "exchanged", "mean predicted", "ECE", "ECE low", "ECE high",
                     "AUC", "AUC low", "AUC high"]


def _write_csvs(out: str, files) -> None:
    """Write each ``(name, frame)`` of ``files`` as ``out/name``, atomically."""
    from ._util.atomic import atomic_path

    for name, frame in files:
        with atomic_path(Path(out) / name) as tmp:
            frame.to_csv(tmp, index=False)


def cmd_bench_regime(args: argparse.Namespace) -> int:
    import pandas as pd

    from .experiments import regime_bench as rb
    from .theory.exchange_predictors import theorem_on_exchange

    if args.local_batches < 0:  # before any training, not after it
        print(f"cen-lab: error: --local-batches must be >= 0 (0 skips the local check), got {args.local_batches}",
              file=sys.stderr)
        return 2
    table = rb.run_regime_benchmark(args.out, presets=args.presets.split(","), seeds=range(args.seeds),
                                    archs=args.arch, n_jobs=args.jobs, progress=not args.no_progress)
    per_run = rb.per_run_regime(table)
    summary = rb.regime_summary(per_run)
    theorem, predictors = theorem_on_exchange(table, local_batches=args.local_batches, progress=not args.no_progress)
    files = (("regime_runs.csv", per_run), ("regime_summary.csv", summary), ("regime_theorem.csv", theorem),
             ("regime_predictors.csv", predictors))
    _write_csvs(args.out, files)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 200):
        print(per_run.drop(columns=["regime", "path"]).round(3).to_string(index=False))
        print("\nPer preset and architecture (mean over seeds, 95% t interval; goals of the default regime):")
        print(summary.round(3).T.to_string(header=False))
        print("\nTheorem 1's probability (lam, early ||dL/dx'||) against which channels ended exchanged (bootstrap "
              "over runs; AUC 0.5 is chance):")
        print(theorem.round(3).T.to_string(header=False))
        print("\nEvery predictor against which channels ended exchanged (cen_lab.theory.exchange_predictors; measured "
              f"before each run's first crossing; local check with {args.local_batches} minibatches, exchange off):")
        print(predictors[PREDICTOR_COLUMNS].round(3).to_string(index=False))
    print(f"\nwrote {', '.join(name for name, _ in files)} in {args.out}")
    return 1 if (table["status"] == "failed").any() else 0


def cmd_bench_forecast(args: argparse.Namespace) -> int:
    import json

    import pandas as pd

    from ._util.atomic import atomic_write_json
    from .runs.forecast_model import DECEL, SHRINK, SPREAD, WINDOW
    from .theory import forecast_bench as fb

    try:
        fractions = [float(f) for f in args.fractions.split(",")]
        if not all(0 < f < 1 for f in fractions):
            raise ValueError(f"--fractions must lie in (0, 1), got {args.fractions}")
        tune, choice, scores, summary = fb.run_forecast_benchmark(args.runs, fractions, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"cen-lab: error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.runs
    _write_csvs(out, (("forecast_tuning.csv", tune), ("forecast_scores.csv", scores),
                      ("forecast_summary.csv", summary)))
    atomic_write_json(Path(out) / "forecast_choice.json", choice)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        held = scores.drop_duplicates("run")
        print(f"tuned on seed 0 of every variant ({tune['run'].nunique()} runs): window {choice['window']:g}, "
              f"deceleration {choice['decel']:g}, shrink {choice['shrink']:g}, spread {choice['spread']:g} (mean absolute error "
              f"{choice['mae']:.3f}, coverage {choice['coverage']:.0%} over {choice['n']} forecasts at >= 10% of a run)")
        if (choice["window"], choice["decel"], choice["shrink"], choice["spread"]) != (WINDOW, DECEL, SHRINK, SPREAD):
            print(f"note: cen_lab.forecast's defaults are window {WINDOW:g}, deceleration {DECEL:g}, shrink "
                  f"{SHRINK:g}, spread {SPREAD:g}; the scores below are at the tuned setting")
        print(f"scored on {len(held)} other runs: " + json.dumps(held.groupby("variant").size().to_dict()))
        print("\nPer architecture, fraction of the run and method (mae: mean absolute error of the final portion under "
              "the threshold, 95% t interval; coverage: of the 80% intervals):")
        print(summary.round(3).to_string(index=False))
        print("\nThe same per variant (the forecaster, the probe and the peer at 10% and 25% of each run):")
        per = fb.forecast_summary(scores[scores["fraction"].isin([0.1, 0.25])], by=("arch", "variant"))
        print(per.pivot_table(index=["arch", "variant", "fraction"], columns="method", values="mae").round(3)
              .to_string())
    print(f"\nwrote forecast_tuning.csv, forecast_scores.csv, forecast_summary.csv, forecast_choice.json in {out}")
    return 0


def cmd_bench_long(args: argparse.Namespace) -> int:
    import pandas as pd

    from .experiments import long_bench as lb
    from .theory.exchange_predictors import theorem_on_exchange

    if args.local_batches < 0 or args.boot < 1:
        print(f"cen-lab: error: --local-batches must be >= 0 (0 skips the local check) and --boot >= 1, got "
              f"{args.local_batches} and {args.boot}", file=sys.stderr)
        return 2
    try:
        table = lb.run_long_benchmark(args.out, data=args.data.split(","), archs=args.arch, lams=args.lams,
                                      seeds=range(args.seeds), n_jobs=args.jobs, progress=not args.no_progress,
                                      train=not args.existing)
    except ValueError as e:
        print(f"cen-lab: error: {e}", file=sys.stderr)
        return 2
    done = table[table["status"].isin(["complete", "skipped"])]
    if done.empty:
        print(f"cen-lab: error: no complete run of these variants in {args.out}", file=sys.stderr)
        return 1
    per_run = lb.long_per_run(done)
    summary = lb.long_summary(per_run)
    _write_csvs(args.out, (("long_runs.csv", per_run), ("long_summary.csv", summary)))  # kept if the next fails
    try:
        theorem, predictors = theorem_on_exchange(done, n_boot=args.boot, local_batches=args.local_batches,
                                                  progress=not args.no_progress)
    except ValueError as e:  # e.g. no checkpoint before a run's first crossing, for the local check
        print(f"cen-lab: error: {e}\n(long_runs.csv and long_summary.csv are written; --local-batches 0 scores the "
              "predictors that need no local check)", file=sys.stderr)
        return 2
    files = (("long_runs.csv", per_run), ("long_summary.csv", summary), ("long_theorem.csv", theorem),
             ("long_predictors.csv", predictors))
    _write_csvs(args.out, files[2:])
    with pd.option_context("display.width", 220, "display.max_columns", 40, "display.max_colwidth", 200):
        cols = ["preset", "arch", "seed", "state", "flags", "final", *[c for c in per_run if c.startswith("at ")],
                "rho", "score/ensemble", "score/weakest branch"]
        print(per_run[cols].round(3).to_string(index=False))
        print("\nPer variant and architecture (mean over seeds, 95% t interval; 'at N%': the portion under the "
              "threshold at that fraction of the budget):")
        print(summary.drop(columns="regime").round(3).T.to_string(header=False))
        for r in summary.itertuples(index=False):
            print(f"regime of {r.variant}, {r.arch}: {r.regime}")
        print("\nWhich penalised channels ended exchanged, against every predictor (measured before each run's first "
              f"crossing; local check with {args.local_batches} minibatches, exchange off; bootstrap over runs):")
        print(predictors[PREDICTOR_COLUMNS].round(3).to_string(index=False))
    missing = table[~table["status"].isin(["complete", "skipped"])]
    if len(missing):
        print(f"\n{len(missing)} run(s) not complete ({', '.join(sorted(set(missing['status'])))}): "
              + ", ".join(missing["name"]), file=sys.stderr)
    print(f"\nwrote {', '.join(name for name, _ in files)} in {args.out}")
    return 1 if (table["status"] == "failed").any() else 0


def cmd_bench_translation(args: argparse.Namespace) -> int:
    import pandas as pd

    from .experiments import translation as tr
    from .experiments.learning_curves import exchange_curves, settling_table

    variants = args.variants.split(",") if args.variants else None
    try:
        table = tr.run_translation_benchmark(args.out, variants=variants, seeds=range(args.seeds), steps=args.steps,
                                             n_jobs=args.jobs, progress=not args.no_progress)
    except ValueError as e:
        print(f"cen-lab: error: {e}", file=sys.stderr)
        return 2
    summary, comparison = tr.translation_summary(table)
    _write_csvs(args.out, (("translation_summary.csv", summary), ("translation_comparison.csv", comparison)))
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(f"Regime of 'cen' (each other variant differs by what its name says): {summary['regime'].iloc[0]}")
        print("\nFinal prediction's L1 on the validation images (lower is better; mean and 95% t interval over "
              "seeds), each branch's L1, and the final prediction's PSNR (dB) and SSIM:")
        print(summary.drop(columns="regime").round(4).to_string(index=False))
        if len(comparison):
            print("\nCEN minus each variant (final L1, 95% Welch interval; negative: CEN better):")
            print(comparison.drop(columns="regime").round(4).to_string(index=False))
        print("\nWhen the exchange settles (mean exchange ratio within 0.01 to the end):")
        print(settling_table(exchange_curves(table)).round(4).to_string(index=False))
    failed = int((table["status"] == "failed").sum())
    if failed:
        print(f"\n{failed} run(s) failed; see their manifests in {args.out}", file=sys.stderr)
    print(f"\nwrote translation_summary.csv and translation_comparison.csv in {args.out}")
    return 1 if failed else 0


def cmd_bench_theorem_regimes(args: argparse.Namespace) -> int:
    import pandas as pd

    from .theory.regimes import REGIME_DEFAULTS, compare_regimes

    d = REGIME_DEFAULTS
    lams = args.lams or d["lams"]
    seeds = list(range(args.seeds)) if args.seeds else d["seeds"]
    comparison = compare_regimes(lams, seeds, args.out, preset=args.preset, steps=args.steps or d["steps"],
                                 l1_rule=d["l1_rule"], checkpoints=d["checkpoints"], n_batches=d["n_batches"],
                                 archs=d["archs"], momentums=d["momentums"], instance=d["instance"], n_jobs=args.jobs,
                                 progress=not args.no_progress)
    _write_csvs(args.out, (("regime_calibration.csv", comparison.calibration), ("regime_outcome.csv", comparison.outcome)))
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print("Theorem 1's prediction at gamma = 0 in every regime (ECE and Spearman with 95% bootstrap intervals; "
              "z = dL/dgamma / ||dL/dx'||, 0 and 1 under the theorem's independence):")
        print(comparison.calibration.drop(columns=["regime_text"]).round(3).to_string(index=False))
        print("\nWhich penalised channels end at zero, predicted at the first checkpoint against observed (Wilson "
              "interval):")
        print(comparison.outcome[["regime", "lam", "predicted", "observed", "ci_low", "ci_high", "inside"]].round(3)
              .to_string(index=False))
        for r in comparison.calibration.itertuples(index=False):
            print(f"regime of {r.regime}: {r.regime_text}")
    print(f"\nwrote regime_calibration.csv and regime_outcome.csv in {args.out}")
    return 0


def add_bench_commands(sub, archs) -> None:
    """Add ``bench-regime``, ``bench-translation`` and ``bench-theorem-regimes`` to the CLI's subparsers
    (``archs``: the parser of an architecture list)."""
    from .config import PRESETS
    from .config.variants import TRANSLATION_VARIANTS

    p = sub.add_parser("bench-regime", help="does each preset exchange partially and by importance, and which "
                                            "predictor says which channels? (over seeds and architectures)")
    p.add_argument("--presets", default="default,collapse", metavar="A,B", help="presets (default: default,collapse)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per preset and architecture (default: 5)")
    p.add_argument("--arch", default="plain,bottleneck", metavar="A,B", type=archs,
                   help="architectures (default: both)")
    p.add_argument("--local-batches", type=int, default=8, metavar="N",
                   help="minibatches of the local check at gamma = 0 before the first crossing (default: 8; 0 skips "
                        "it and the predictors that need it; about 20 s per run)")
    p.add_argument("--jobs", type=int, default=2, help="parallel workers (default: 2)")
    p.add_argument("--out", default="runs/regime", metavar="DIR", help="where the runs go (default: runs/regime)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_regime)

    p = sub.add_parser("bench-long", help="the paper's lam 2e-4 over 10,000 steps on data that does not run out "
                                          "(the long preset), beside the 512 canonical scenes and the 600-step default "
                                          "(hours on 2 cores; stop and run again to resume)")
    p.add_argument("--data", default="pool,finite,default", metavar="A,B",
                   help="variants: pool (the long preset), finite (the same on the 512 canonical training scenes), "
                        "default (the 600-step default preset); default: all three")
    p.add_argument("--lams", type=_floats, default=[2e-4, 2e-3], metavar="A,B",
                   help="lambdas of the long variants (default: 0.0002,0.002)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant, architecture and lam (default: 3)")
    p.add_argument("--arch", default="plain,bottleneck", metavar="A,B", type=archs,
                   help="architectures (default: both)")
    p.add_argument("--local-batches", type=int, default=8, metavar="N",
                   help="minibatches of the local check at gamma = 0 before each run's first crossing (default: 8; 0 "
                        "skips it and the predictors that need it)")
    p.add_argument("--existing", action="store_true",
                   help="train nothing: summarise the runs already complete in --out")
    p.add_argument("--boot", type=int, default=1000, metavar="N",
                   help="bootstrap draws over runs for the predictors' intervals (default: 1000)")
    p.add_argument("--jobs", type=int, default=2, help="parallel workers (default: 2)")
    p.add_argument("--out", default="runs/long", metavar="DIR", help="where the runs go (default: runs/long)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_long)

    p = sub.add_parser("bench-forecast", help="the exchange forecast (cen_lab.forecast) made at 5, 10, 25 and 50 percent "
                                              "of finished runs, scored on their end, beside predict_exchange and a "
                                              "learning-curve extrapolation (trains nothing; minutes)")
    p.add_argument("--runs", default="runs/long", metavar="DIR",
                   help="the folder of finished runs (default: runs/long, where bench-long puts them)")
    p.add_argument("--fractions", default="0.05,0.1,0.25,0.5", metavar="A,B",
                   help="fractions of each run to forecast from (default: 0.05,0.1,0.25,0.5)")
    p.add_argument("--out", metavar="DIR", help="where the tables go (default: --runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_forecast)

    p = sub.add_parser("bench-translation", help="the translation CEN (shade from rgb and depth, U-Net, InstanceNorm) "
                                                 "against single-domain generators, fusions and ablations over seeds")
    p.add_argument("--variants", metavar="A,B", help=f"only these variants (default: all of {list(TRANSLATION_VARIANTS)})")
    p.add_argument("--seeds", type=int, default=5, help="seeds per variant (default: 5)")
    p.add_argument("--steps", type=int, default=600, help="training steps per run (default: 600)")
    p.add_argument("--jobs", type=int, default=2, help="parallel workers (default: 2)")
    p.add_argument("--out", default="runs/translation", metavar="DIR", help="where the runs go (default: "
                                                                            "runs/translation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_translation)

    p = sub.add_parser("bench-theorem-regimes", help="Theorem 1's checks in every regime: plain and bottleneck, "
                                                     "momentum 0.9 and 0, and InstanceNorm (about 10 minutes)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="preset (default: default)")
    p.add_argument("--lams", type=_floats, metavar="A,B", help="lambdas (default: the theorem notebook's, "
                                                               "0.005,0.01,0.02)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the theorem notebook's 3)")
    p.add_argument("--steps", type=int, help="training steps (default: the theorem notebook's 300)")
    p.add_argument("--jobs", type=int, default=2, help="parallel workers (default: 2)")
    p.add_argument("--out", default="runs", metavar="DIR", help="where the theorem runs go (default: runs, where the "
                                                                "theorem notebook's runs are reused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_theorem_regimes)
