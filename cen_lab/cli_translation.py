"""The CLI's translation benchmark: ``cen-lab bench-translation`` (CEN U-Net against single-domain generators,
early and late fusion and its ablations on the ``translate`` preset). ``cen_lab.cli`` adds it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_translation_commands", "cmd_bench_translation"]


def cmd_bench_translation(args: argparse.Namespace) -> int:
    import pandas as pd

    from ._util.atomic import atomic_path
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
    for frame, name in ((summary, "translation_summary.csv"), (comparison, "translation_comparison.csv")):
        with atomic_path(Path(args.out) / name) as tmp:
            frame.to_csv(tmp, index=False)
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


def add_translation_commands(sub) -> None:
    """Add ``bench-translation`` to the CLI's subparsers."""
    from .experiments.translation import TRANSLATION_VARIANTS

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
