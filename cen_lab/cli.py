"""The ``cen-lab`` command line (also ``python -m cen_lab``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from ._version import __version__
from .config import PRESETS, ExperimentConfig
from .cli_lambda import add_lambda_commands
from .cli_bench import add_bench_commands
from .errors import CenLabError, ConfigError, ObserveError, command_line

log = logging.getLogger(__name__)


def _parse_sets(items: Sequence[str]) -> dict[str, str]:
    updates = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lam=1e-3), got {item!r}")
        updates[key.strip()] = value
    return updates


def _config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    preset = args.preset or "default"
    cfg = ExperimentConfig.from_json(args.config) if args.config else ExperimentConfig.preset(preset)
    return cfg.override(_parse_sets(args.set))


def _resumed_config(args: argparse.Namespace) -> ExperimentConfig | None:
    """With ``--resume`` and neither ``--preset`` nor ``--config``: the stored config of the run in ``--out`` (or
    ``runs/default``), which ``--set`` may repeat but not change; None where there is no stored run."""
    from .runs.writer import _config_diff

    if not args.resume or args.preset is not None or args.config is not None:
        return None
    path = Path(args.out) if args.out else Path("runs") / ExperimentConfig.preset("default").name
    if not (path / "config.json").is_file():
        return None
    stored = ExperimentConfig.from_json(str(path / "config.json"))
    cfg = stored.override(_parse_sets(args.set))
    changed = _config_diff(stored.to_dict(), cfg.to_dict())
    if changed:
        given = ", ".join(f"{k}={_get(cfg.to_dict(), k)!r}" for k in changed)
        now = ", ".join(f"{k}={_get(stored.to_dict(), k)!r}" for k in changed)
        raise ConfigError(f"--set {given} conflicts with the run in {path}, which has {now}: a resumed run continues "
                          "its own config. Drop those --set to resume it, or give another --out to train the new "
                          "config beside it")
    return stored


def _get(d: dict, dotted_key: str):
    for part in dotted_key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _add_config_args(p: argparse.ArgumentParser, resumable: bool = False) -> None:
    resumed = "; with --resume, the run's own stored config, which --set may repeat but not change" if resumable else ""
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help=f"start from this preset (default: default{resumed})")
    p.add_argument("--config", metavar="FILE", help="start from a config JSON file (e.g. a run's config.json) instead")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set train.lam=1e-3 --set seed=3 (repeatable)")


def cmd_train(args: argparse.Namespace) -> int:
    from .experiments.training import train

    cfg = _resumed_config(args) or _config_from_args(args)
    run = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                stop_at=args.stop_at)
    print(f"{run.path}: status {run.status}, {run.manifest['last_step']}/{run.manifest['total_steps']} steps")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .runs.importer import import_checkpoints, read_state_dict

    paths = args.paths[0] if len(args.paths) == 1 else args.paths
    try:
        steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    except ValueError:
        raise ObserveError(f"--steps expects comma-separated integers, got {args.steps!r}") from None
    names = args.modality_names.split(",") if args.modality_names else None
    layers = args.layers if args.layers else None
    run = import_checkpoints(paths, args.out, layers=layers, threshold=args.threshold, penalised=args.penalised,
                             steps=steps, modality_names=names, lam=args.lam, reference_lamda=args.reference_lamda,
                             reference_code=args.reference_code,
                             template=read_state_dict(args.template)[0] if args.template else None,
                             overwrite=args.overwrite, update=args.update, progress=not args.no_progress,
                             branches=args.branches)
    print(f"{run.path}: {len(run.manifest['imported_files'])} checkpoints as steps "
          f"{sorted(run.gammas['step'].unique().tolist())} ({run.manifest['step_source']}); "
          f"{len(run.manifest['layers'])} layers, M = {len(run.branches)}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .experiments.diagnosis import diagnose

    grid = [float(t) for t in args.thresholds.split(",")] if args.thresholds else None
    for i, path in enumerate(args.runs):
        d = diagnose(path, threshold=args.threshold, thresholds=grid)
        print(("\n" if i else "") + str(d))
        print("under each threshold at the last step (no retraining: the threshold acts on the logged gammas):")
        print(d.thresholds.to_string(index=False))
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    from .runs.export import tensorboard

    runs = [Path(r) for r in args.runs]
    for run in runs:  # one run: its events in --logdir; several: each in --logdir/<run folder name>
        out = Path(args.logdir) if len(runs) == 1 else Path(args.logdir) / run.name
        tensorboard(run, out)
        print(f"{run}: TensorBoard events in {out}")
    print(f"view them with: tensorboard --logdir {args.logdir}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_config_from_args(args).to_dict(), indent=2))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import CANONICAL, canonical_path, content_sha256, generate_scenes, write_canonical

    names = args.name or sorted(CANONICAL)
    status = 0
    for name in names:
        if name not in CANONICAL:
            raise ConfigError(f"unknown canonical dataset {name!r}; choose from {sorted(CANONICAL)}")
        if args.action == "check":
            path = canonical_path(name, args.dir)
            manifest = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
            fresh = content_sha256(generate_scenes(CANONICAL[name]))
            ok = manifest.get("sha256") == fresh
            print(f"{name}: {'matches' if ok else 'DIFFERS from'} {path}")
            status |= 0 if ok else 1
        else:
            print(f"{name}: wrote {write_canonical(name, args.dir)}")
    return status


def _parse_params(items: Sequence[str]) -> dict[str, dict[str, object]]:
    params: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        notebook, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--param expects NOTEBOOK.NAME=VALUE (e.g. exchange_dynamics.lams=[0.001,0.01]), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare word is a string
        params.setdefault(notebook, {})[name] = parsed
    return params


def cmd_report(args: argparse.Namespace) -> int:
    from .views.reports import REPORT_NOTEBOOKS, build_report

    if not args.quiet:  # papermill echoes notebook output (training progress) at INFO level
        logging.getLogger("papermill").setLevel(logging.INFO)
    notebooks = args.notebooks.split(",") if args.notebooks else list(REPORT_NOTEBOOKS)
    out = Path(args.out) / (args.name or args.preset)
    common = {"preset": args.preset, "runs_dir": str(Path(args.runs_dir).resolve()), "progress": not args.no_progress}
    result = build_report(out, _parse_params(args.param), common=common, notebooks=notebooks,
                          hide_code=args.hide_code, log_output=not args.quiet)
    if not result.ok:
        for name, message in result.failures.items():
            print(f"cen-lab: error: notebook {name} failed: {message}", file=sys.stderr)
        print(f"cen-lab: what succeeded is in {result.out_dir}", file=sys.stderr)
        return 1
    print(f"report: {result.index}")
    return 0


def _archs(text: str) -> list[str]:
    """argparse type of ``--arch``: comma-separated names of ``cen_lab.config.ARCHS``, as a list."""
    from .config import ARCHS

    archs = text.split(",")
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown architecture {bad[0]!r}; choose from {','.join(ARCHS)}")
    return archs


def _parse_grid(items: Sequence[str]) -> dict[str, list]:
    grid: dict[str, list] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--grid expects KEY=V1,V2,... or KEY=START:STOP (e.g. seed=0:4), got {item!r}")
        value = value.strip()
        start, colon, stop = value.partition(":")
        if colon and start.lstrip("-").isdigit() and stop.lstrip("-").isdigit():
            grid[key.strip()] = list(range(int(start), int(stop)))
        elif value.startswith("["):
            grid[key.strip()] = [json.dumps(v) if isinstance(v, list) else str(v) for v in json.loads(value)]
        else:
            grid[key.strip()] = [v.strip() for v in value.split(",")]
    return grid


def cmd_explore(args: argparse.Namespace) -> int:
    from .views.app import serve_explorer

    return serve_explorer(args.run_dirs, port=args.port, token=args.token, open_browser=args.open)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.sweeps import sweep

    if not args.grid:
        raise ConfigError("give at least one --grid KEY=VALUES")
    table = sweep(_config_from_args(args), _parse_grid(args.grid), args.out, backend=args.backend, n_jobs=args.jobs,
                  threads_per_worker=args.threads, scheduler=args.scheduler, progress=not args.no_progress)
    print(table.to_string(index=False))
    return 1 if (table["status"] == "failed").any() else 0


def cmd_bench_fusion(args: argparse.Namespace) -> int:
    import pandas as pd

    from .experiments import fusion

    variants = args.variants.split(",") if args.variants else None
    if variants == ["scenarios"]:
        variants = list(fusion.DEFAULT_SCENARIOS)
    elif variants == ["reference"]:  # each reference switch next to the variant it changes
        variants = [v for pair in fusion.SWITCH_BASES.items() for v in pair[::-1]]
    table = fusion.run_fusion_benchmark(args.out, preset=args.preset, variants=variants, seeds=range(args.seeds),
                                        steps=args.steps, archs=args.arch, n_jobs=args.jobs,
                                        progress=not args.no_progress)
    scores = fusion.per_run_scores(table)
    summary = fusion.fusion_summary(fusion.compute_fusion_results(scores))
    summary.to_csv(Path(args.out) / "fusion_summary.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print("Regime of the runs below, per architecture (of 'cen'; each other variant differs by what its name "
              "says):")
        for arch, sub in scores.groupby("arch", sort=False):
            ref = sub[sub["variant"] == "cen"] if "cen" in set(sub["variant"]) else sub
            print(f"  {arch}: {ref['regime'].iloc[0]}")
        print()
        print(summary.drop(columns="regime").round(4).to_string(index=False))
        if "cen" in set(table.get("variant", [])):
            print("\nCEN minus each variant (final ensemble score, 95% Welch interval, within each architecture):")
            print(fusion.compare_to(scores).drop(columns="regime").round(4).to_string(index=False))
        if set(fusion.SWITCH_BASES) & set(table.get("variant", [])):
            print("\nEach reference switch minus the variant it changes (final ensemble score and exchange ratio, "
                  "95% Welch interval):")
            exchange = fusion.final_exchange_ratios(table)
            print(fusion.compare_switches(scores, exchange).round(4).to_string(index=False))
        from .experiments.learning_curves import exchange_curves, settling_table

        print("\nWhen the exchange settles (mean exchange ratio within 0.01 to the end):")
        print(settling_table(exchange_curves(table)).round(4).to_string(index=False))
    print(f"\nwrote {Path(args.out) / 'fusion_summary.csv'}")
    return 1 if (table["status"] == "failed").any() else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cen-lab",
        description="Train compact Channel-Exchanging Networks on toy multimodal data and log gammas and exchange maps.",
    )
    parser.add_argument("--version", action="version", version=f"cen_lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one run and write its run directory")
    _add_config_args(p, resumable=True)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue an incomplete run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--stop-at", type=int, metavar="N", help="stop after N steps, resumable later")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train a grid of runs in parallel (resumable)")
    _add_config_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=VALUES",
                   help="grid axis: KEY=V1,V2,... or KEY=START:STOP, e.g. --grid train.lam=0.001,0.01 --grid seed=0:4")
    p.add_argument("--out", required=True, metavar="DIR", help="parent folder of the run directories")
    p.add_argument("--backend", default="loky", choices=["serial", "loky", "dask"], help="default: loky")
    p.add_argument("--jobs", type=int, metavar="N", help="parallel workers (default: 2 for loky, the cluster's for dask)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads per worker (default: 1)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("bench-fusion", help="CEN against baselines and ablations over seeds (the ablation table)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="preset of the shared base")
    p.add_argument("--variants", metavar="A,B", help="only these variants, from cen_lab.fusion.VARIANTS or "
                   "SCENARIOS or REFERENCE_SWITCHES (default: all of VARIANTS); 'scenarios' means DEFAULT_SCENARIOS, "
                   "'reference' each reference switch next to the variant it changes")
    p.add_argument("--seeds", type=int, default=5, help="seeds per variant (default: 5)")
    p.add_argument("--steps", type=int, default=600, help="training steps per run (default: 600, where the exchange of "
                                                          "the CEN variants has settled)")
    p.add_argument("--arch", default="plain,bottleneck", metavar="A,B", type=_archs,
                   help="architectures (model.arch) to run every variant on, comma-separated (default: "
                        "plain,bottleneck, one after the other)")
    p.add_argument("--jobs", type=int, default=2, help="parallel workers (default: 2)")
    p.add_argument("--out", default="runs/fusion", metavar="DIR", help="where the runs go (default: runs/fusion)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_fusion)

    add_lambda_commands(sub, _archs)  # suggest-lambda, bench-lambda
    add_bench_commands(sub, _archs)  # bench-regime, bench-long, bench-translation, bench-theorem-regimes

    p = sub.add_parser("diagnose", help="what a run's exchange is doing: collapsing, schedule- or importance-driven, ...")
    p.add_argument("runs", nargs="+", help="run directories (trained, observed or imported)")
    p.add_argument("--threshold", type=float, help="the exchange threshold (default: the run's)")
    p.add_argument("--thresholds", help="comma-separated grid of thresholds for the last step's portions")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("tensorboard", help="write runs (trained, observed, imported) as TensorBoard events")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--logdir", required=True, help="where to write the events (several runs: a folder each)")
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("import", help="import another codebase's checkpoints as a run (one step per checkpoint)")
    p.add_argument("paths", nargs="+", help="checkpoint files, a folder of them, or a quoted glob ('ckpt/*.pth')")
    p.add_argument("--out", required=True, help="the run directory to write")
    p.add_argument("--layers", action="append", default=[], metavar="NAME_OR_GLOB",
                   help="BN layers to read, e.g. '*.bn2' (repeatable; default: every per-modality BN layer)")
    p.add_argument("--threshold", type=float, default=2e-2, help="exchange threshold (default 2e-2)")
    p.add_argument("--penalised", required=True, choices=["disjoint", "alternate-halves", "all", "none"],
                   help="which gammas carry the L1 penalty (the reference code's rule: alternate-halves)")
    p.add_argument("--steps", help="comma-separated step of each file (default: the files' step/epoch entry, "
                                   "else their order)")
    p.add_argument("--modality-names", help="comma-separated names of the M branches, e.g. rgb,depth")
    p.add_argument("--lam", type=float, help="the L1 weight per step the run was trained with (recorded)")
    p.add_argument("--reference-lamda", type=float, help="instead of --lam: the reference code's lamda, added once "
                   "per output (M + 1 times a step) by its segmentation code and once per step by its translation "
                   "code; recorded beside the per-step weight")
    p.add_argument("--reference-code", choices=["segmentation", "translation"],
                   help="which reference code --reference-lamda comes from (default: translation where the norms are "
                        "named insnorm_*, else segmentation)")
    p.add_argument("--template", metavar="FILE", help="for files holding a list of gamma tensors: a state dict file "
                   "of the model (loaded weights-only) whose norm layers, selected by --layers, name the tensors")
    p.add_argument("--branches", type=int, help="for files holding a list of gamma tensors (the reference's "
                   "insnorm_params_*.pth): tensors per layer (default: --modality-names' count, else 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--update", action="store_true", help="add to the imported run in --out the files it does not "
                   "list yet (a folder read again after more epochs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("explore", help="serve the explorer of some runs as a web app (Voila, on 127.0.0.1)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or folders of runs (e.g. runs/)")
    p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default: 8866; 0 picks a free one)")
    p.add_argument("--token", help="the token the page asks for (default: a new random one, shown in the URL)")
    p.add_argument("--open", action="store_true", help="open the page in this machine's browser")
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("config", help="print the resolved config as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("data", help="regenerate or check the canonical datasets in data/")
    p.add_argument("action", choices=["regenerate", "check"],
                   help="regenerate: write the datasets from their generator parameters (bit-identical to the committed "
                        "files); check: verify the files against the generator, changing nothing")
    p.add_argument("name", nargs="*", help="dataset names (default: all)")
    p.add_argument("--dir", metavar="DIR", help="data folder (default: the repository's data/)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("report", help="execute the report notebooks headlessly into reports/<name>/")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="preset the notebooks train (default: default; 'tiny' for a quick look)")
    p.add_argument("--name", help="report folder name (default: the preset's name)")
    p.add_argument("--out", default="reports", metavar="DIR", help="parent folder of reports (default: reports)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where runs are trained and reused (default: runs)")
    p.add_argument("--param", action="append", default=[], metavar="NOTEBOOK.NAME=VALUE",
                   help="a notebook parameter as JSON, e.g. --param exchange_dynamics.lams=[0.001,0.01] (repeatable)")
    p.add_argument("--notebooks", metavar="A,B", help="run only these report notebooks")
    p.add_argument("--hide-code", action="store_true", help="leave code cells out of the HTML pages")
    p.add_argument("--no-progress", action="store_true", help="no training progress output")
    p.add_argument("--quiet", action="store_true", help="do not echo notebook output to the terminal")
    p.set_defaults(func=cmd_report)
    for choice in sub._choices_actions:  # each command's --help opens with its one-line summary
        command = sub.choices[choice.dest]
        if command.description is None:
            command.description = choice.help[:1].upper() + choice.help[1:] + "."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with command_line():  # messages name the flags (--overwrite), not Python's keywords
            return args.func(args)
    except CenLabError as e:
        print(f"cen-lab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cen-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
