"""The CLI's lambda commands: ``cen-lab suggest-lambda`` (predict the exchange of a lambda grid from a probe) and
``cen-lab bench-lambda`` (validate that prediction on held-out lambdas and seeds). ``cen_lab.cli`` adds them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ARCHS, PRESETS

__all__ = ["add_lambda_commands", "cmd_suggest_lambda", "cmd_bench_lambda"]

DEFAULT_GRID = "1e-4,2e-4,5e-4,1e-3,2e-3,3e-3,5e-3,1e-2"


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_suggest_lambda(args: argparse.Namespace) -> int:
    import pandas as pd

    from .theory.lambda_bench import obtain_probe, probe_config
    from .theory.lambda_choice import predict_exchange

    try:
        if args.probe:
            probes = list(args.probe)
        else:
            from .config import ExperimentConfig

            budget = args.budget or ExperimentConfig.preset(args.preset).train.steps  # the preset's own budget
            if args.probe_steps >= budget:
                raise ValueError(f"--probe-steps ({args.probe_steps}) must be less than the budget ({budget} steps: "
                                 f"{'--budget' if args.budget else f'the {args.preset} preset'}'s)")
            bad = [x for x in args.probe_lams if not x > 0]
            if not args.probe_lams or bad:
                raise ValueError(f"--probe-lams must be positive, got {args.probe_lams}")
            probes = [obtain_probe(probe_config(args.preset, args.arch, budget, lam, args.seed), args.probe_steps,
                                   args.runs_dir, progress=not args.no_progress)[0] for lam in args.probe_lams]
        pred = predict_exchange(probes, args.lams, args.budget, optimizer=args.optimizer, lr=args.lr,
                                momentum=args.momentum, level=args.level)
    except ValueError as e:
        print(f"cen-lab: error: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pred)
    partial = pred.table[pred.table["state"] == "partial"]
    print("\nlambdas predicted to exchange partially: "
          + (", ".join(f"{x:g}" for x in partial["lam"]) if len(partial) else "none of the grid"))
    if args.target is not None:
        best = pred.table.iloc[(pred.table["predicted"] - args.target).abs().argmin()]
        print(f"closest to a portion of {args.target:g}: lam {best['lam']:g} (predicted {best['predicted']:.3f}, "
              f"{pred.level:.0%} interval {best['low']:.3f} to {best['high']:.3f})")
    print("These are predictions of a model; its measured error on held-out lambdas is in the README "
          "('Choosing lambda and the threshold').")
    if args.out:
        from ._util.atomic import atomic_path

        with atomic_path(Path(args.out)) as tmp:
            pred.table.to_csv(tmp, index=False)
        print(f"wrote {args.out}")
    return 0


def cmd_bench_lambda(args: argparse.Namespace) -> int:
    import pandas as pd

    from .theory import lambda_bench as lb

    unknown = [b for b in args.budgets if b not in lb.CASES]
    if unknown:
        print(f"cen-lab: error: --budgets must be some of {sorted(lb.CASES)}, got {unknown}", file=sys.stderr)
        return 2
    validation = lb.run_lambda_benchmark(args.out, preset=args.preset, archs=args.arch,
                                         cases={b: lb.CASES[b] for b in args.budgets}, n_jobs=args.jobs,
                                         progress=not args.no_progress)
    previous = Path(args.out) / "lambda_validation_all.csv"  # every case benchmarked in this folder so far
    if previous.exists():
        old = pd.read_csv(previous)
        keys = ["arch", "budget", "lam", "seed"]
        old = old.merge(validation[keys], on=keys, how="left", indicator=True)
        validation = pd.concat([old[old["_merge"] == "left_only"].drop(columns="_merge"), validation],
                               ignore_index=True)
    from ._util.atomic import atomic_path

    with atomic_path(previous) as tmp:
        validation.to_csv(tmp, index=False)
    summary = lb.write_summary(validation, args.out)
    shown = validation.drop(columns=["regime", "probe_lams", "probe_steps"]).round(3)
    shown["lam"] = validation["lam"].map("{:g}".format)  # not rounded away
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(shown.to_string(index=False))
        print(f"\nPer architecture and budget (mean over held-out runs, 95% t interval; goal: mean abs error <= "
              f"{lb.GOAL}):")
        print(summary.drop(columns=["regime"]).round(3).T.to_string(header=False))
    for r in summary.itertuples(index=False):
        print(f"regime of {r.arch}, budget {r.budget}: {r.regime}")
    print(f"\nwrote lambda_validation_all.csv and lambda_summary.csv in {args.out}")
    return 0


def add_lambda_commands(sub, archs_type) -> None:
    """Add ``suggest-lambda`` and ``bench-lambda`` to the CLI's subparsers; ``archs_type`` is the CLI's argparse
    type of ``--arch`` (``cen_lab.cli._archs``), passed in so that this module does not import ``cen_lab.cli``."""
    p = sub.add_parser("suggest-lambda", help="predict the exchange of a lambda grid from a short probe")
    p.add_argument("probe", nargs="*", help="probe run directories (trained with stop_at, or observed; several at "
                                            "different lambdas are interpolated); default: train them from "
                                            "--preset/--arch at --probe-lams")
    p.add_argument("--lams", type=_floats, default=_floats(DEFAULT_GRID), metavar="A,B",
                   help=f"lambda grid, per step (default: {DEFAULT_GRID})")
    p.add_argument("--budget", type=int, help="steps of the full training (default: the probe's train.steps, which "
                                              "for a probe trained here is --preset's)")
    p.add_argument("--target", type=float, help="also name the lambda whose predicted portion is closest to this")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="for an observed probe: its optimiser")
    p.add_argument("--lr", type=float, help="for an observed probe: its (constant) learning rate")
    p.add_argument("--momentum", type=float, help="for an observed probe under SGD: its momentum")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default: 0.95)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="preset of the probe to train")
    p.add_argument("--arch", default="plain", choices=list(ARCHS), help="architecture of the probe to train")
    p.add_argument("--probe-steps", type=int, default=150, help="steps of the probe to train (default: 150)")
    p.add_argument("--probe-lams", type=_floats, default=[2e-3], metavar="A,B",
                   help="lambdas of the probes to train (default: 2e-3; the README's validation uses "
                        "7e-4,2e-3,7e-3, which errs about half as much)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe to train (default: 0)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where the probe is trained (default: runs)")
    p.add_argument("--out", metavar="CSV", help="also write the prediction table here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_suggest_lambda)

    p = sub.add_parser("bench-lambda", help="validate suggest-lambda's prediction on held-out lambdas and seeds")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="preset (default: default)")
    p.add_argument("--arch", default=list(ARCHS), type=archs_type, metavar="A,B", help="architectures (default: both)")
    p.add_argument("--budgets", type=_ints, default=[600, 10_000], metavar="A,B",
                   help="budgets of cen_lab.theory.lambda_bench.CASES (default: 600,10000; 10000 is the paper's "
                        "lam 2e-4, whose two runs take most of the benchmark's 1.5 hours)")
    p.add_argument("--jobs", type=int, default=2, help="parallel workers (default: 2)")
    p.add_argument("--out", default="runs/lambda", metavar="DIR", help="where the runs go (default: runs/lambda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_lambda)
