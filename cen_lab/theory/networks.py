"""The networks Theorem 1 and Corollary 1 are checked on, and how they are trained (``cen_lab.sweep``).

``cen_lab.theorem`` (the checks) and ``cen_lab.theory.corollary`` both build on these; ``cen_lab.theorem`` re-exports
them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import ExperimentConfig, dotted
from ..experiments.precision import name_suffix
from ..experiments.sweeps import run_name, sweep
from ..runs.reader import Run, load_run

__all__ = ["theorem_base", "theorem_config", "train_theorem_runs"]


def theorem_base(preset: str = "default", steps: int = 400, l1_rule: str = "proximal", checkpoints: int = 4,
                 **overrides) -> ExperimentConfig:
    """The compact network *without* exchange (the setting of Theorem 1), checkpointed ``checkpoints`` times.

    Defaults: widths (16, 16), gamma initialised at 0.25 so that the L1 penalty can reach zero within a few
    hundred steps, proximal L1 (exact zeros), gradient logging on, and SGD (momentum from the preset) at a constant
    lr 0.05, whatever the preset's optimiser: the theorem is about gradient descent on the penalised loss, and
    its numbers in the README were measured so. ``overrides`` are dotted config keys with
    ``__`` for dots (``model__widths=(8, 8)``). The name is ``theorem-<preset>-<rule>`` (plus ``-bf16`` for
    ``train.precision = "bf16"``, ``-unshared``, ``-<arch>`` for another architecture, ``-momentum<m>`` for a
    momentum other than the preset's and ``-<norm>`` for a ``model.norm`` other than batch).
    """
    base = {"model.exchange": "none", "model.widths": (16, 16), "model.strides": (1, 2), "model.gamma_init": 0.25,
            "train.l1_rule": l1_rule, "train.steps": steps, "train.ckpt_every": max(1, steps // checkpoints),
            "log.grads": True, "name": f"theorem-{preset}-{l1_rule}",
            "train.optimizer": "sgd", "train.lr": 0.05, "train.lr_schedule": "constant"}
    base.update(dotted(overrides))
    base["name"] += name_suffix(base.get("train.precision", "fp32"))
    if base.get("model.share_convs") is False:
        base["name"] += "-unshared"
    if base.get("model.arch", "plain") != "plain":  # runs of each architecture and optimiser in their own folders
        base["name"] += f"-{base['model.arch']}"
    default_momentum = ExperimentConfig.preset(preset).train.momentum
    if base.get("train.momentum", default_momentum) != default_momentum:
        base["name"] += f"-momentum{base['train.momentum']:g}"
    if base.get("model.norm", "batch") != "batch":
        base["name"] += f"-{base['model.norm']}"
    return ExperimentConfig.preset(preset).override(base)


def theorem_config(preset: str = "default", lam: float = 1e-2, seed: int = 0, steps: int = 400,
                   l1_rule: str = "proximal", checkpoints: int = 4, **overrides) -> ExperimentConfig:
    """``theorem_base`` at one (lam, seed), named as ``cen_lab.sweep`` names that grid point."""
    base = theorem_base(preset, steps, l1_rule, checkpoints, **overrides)
    point = {"train.lam": lam, "seed": seed}
    return base.override({**point, "name": run_name(base.name, point)})


def train_theorem_runs(lams: Sequence[float], seeds: Sequence[int], runs_dir: str | Path, *, preset: str = "default",
                       steps: int = 400, l1_rule: str = "proximal", checkpoints: int = 4, n_jobs: int = 1,
                       progress: bool = True, **overrides) -> dict[tuple[float, int], Run]:
    """Train (or reuse) one theorem run per (lam, seed) in ``runs_dir`` with ``cen_lab.sweep`` (loky workers when
    ``n_jobs > 1``); returns (lam, seed) -> Run. Raises if any run failed, naming it and its error."""
    base = theorem_base(preset, steps, l1_rule, checkpoints, **overrides)
    table = sweep(base, {"train.lam": list(lams), "seed": list(seeds)}, runs_dir,
                  backend="loky" if n_jobs > 1 else "serial", n_jobs=n_jobs, progress=progress)
    failed = table[table["status"] == "failed"]
    if len(failed):
        raise RuntimeError("theorem runs failed: " + "; ".join(f"{r.name}: {r.error}" for r in failed.itertuples()))
    return {(row["train.lam"], row["seed"]): load_run(row["path"]) for _, row in table.iterrows()}
