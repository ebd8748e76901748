"""The ``cen-lab`` command line (also ``python -m cen_lab``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .config import PRESETS, ExperimentConfig
from .errors import CenLabError, ConfigError

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
    cfg = ExperimentConfig.from_json(args.config) if args.config else ExperimentConfig.preset(args.preset)
    return cfg.override(_parse_sets(args.set))


def _add_config_args(p: argparse.ArgumentParser, default_preset: str = "default") -> None:
    p.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                   help=f"start from this preset (default: {default_preset})")
    p.add_argument("--config", metavar="FILE", help="start from a config JSON file (e.g. a run's config.json) instead")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set train.lam=1e-3 --set seed=3 (repeatable)")


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    cfg = _config_from_args(args)
    run = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                stop_at=args.stop_at)
    print(f"{run.path}: status {run.status}, {run.manifest['last_step']}/{run.manifest['total_steps']} steps")
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


def cmd_report(args: argparse.Namespace) -> int:
    from .plots import compute_gamma_trajectories, plot_gamma_trajectories
    from .training import train

    cfg = _config_from_args(args)
    run_dir = Path(args.runs_dir) / cfg.name
    print(f"[report] training {cfg.name!r} into {run_dir} (reused when already complete)", flush=True)
    run = train(cfg, run_dir, resume=True, progress=not args.no_progress)
    out = Path(args.out) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_gamma_trajectories(compute_gamma_trajectories(run.gammas, run.modalities),
                                  threshold=cfg.model.threshold, title=f"{cfg.name}: BN scaling factors")
    for ext in ("png", "svg"):
        path = out / f"gamma_trajectories.{ext}"
        fig.savefig(path, dpi=130)
        print(f"[report] wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cen-lab",
        description="Train compact Channel-Exchanging Networks on toy multimodal data and log gammas and exchange maps.",
    )
    parser.add_argument("--version", action="version", version=f"cen_lab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one run and write its run directory")
    _add_config_args(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue an incomplete run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--stop-at", type=int, metavar="N", help="stop after N steps, resumable later")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("config", help="print the resolved config as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("data", help="regenerate or check the canonical datasets in data/")
    p.add_argument("action", choices=["regenerate", "check"])
    p.add_argument("name", nargs="*", help="dataset names (default: all)")
    p.add_argument("--dir", metavar="DIR", help="data folder (default: the repository's data/)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("report", help="train the default experiment (or reuse it) and render its figures")
    _add_config_args(p)
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where runs live (default: runs)")
    p.add_argument("--out", default="reports", metavar="DIR", help="where reports go (default: reports)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CenLabError as e:
        print(f"cen-lab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cen-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
