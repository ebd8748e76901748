"""The regime a number holds in: which networks, trained how, from which preset, and what evidence that gives.

Every verdict cen_lab prints comes from runs trained in one regime (architecture, preset, steps, lam,
optimiser, L1 rule). ``regime_of`` reads it from the runs' configs, ``regime_text`` says it in one line for a
table cell, and ``evidence`` says plainly when a preset is a smoke test whose numbers carry no evidence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from ..config import ExperimentConfig

__all__ = ["SMOKE_PRESETS", "SMOKE_TEST", "evidence", "is_smoke_test", "architecture", "optimiser", "regime_of", "regime_text"]

SMOKE_PRESETS = frozenset({"tiny"})  # presets that only show that the code runs
SMOKE_TEST = "none: the tiny preset is a smoke test"


def evidence(preset: str) -> str:
    """``SMOKE_TEST`` for a smoke-test preset, else what the toy experiment can and cannot say."""
    return SMOKE_TEST if preset in SMOKE_PRESETS else "toy data, compact networks; not the paper's regime"


def _values(xs: Iterable[Any]) -> str:
    uniq = set(xs)
    try:
        uniq = sorted(uniq)
    except TypeError:  # mixed types
        uniq = sorted(uniq, key=str)
    return ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in uniq)


def is_smoke_test(cfg: ExperimentConfig) -> bool:
    """Whether a run of ``cfg`` is a smoke test: named after a smoke preset (``tiny``, or ``tiny-<hash>`` as
    ``obtain_run`` names it), or of a smoke preset's size (its data and widths) whatever its name (the probes and
    benchmark runs made from it, ``probe-tiny-...``)."""
    data = dataclasses.replace(cfg.data, train_pool=0)  # a smoke preset's scenes, pooled, are still a smoke test
    for p in SMOKE_PRESETS:
        preset = ExperimentConfig.preset(p)
        if cfg.name == p or cfg.name.startswith(f"{p}-") or (data == preset.data
                                                             and cfg.model.widths == preset.model.widths):
            return True
    return False


def architecture(cfg: ExperimentConfig) -> str:
    """``plain conv blocks (16, 16), no exchange`` (and ``unshared convs`` or a baseline's fusion when so)."""
    m = cfg.model
    exchange = "no exchange" if m.exchange == "none" else f"{m.exchange} exchange"
    fusion = "" if m.fusion == "cen" else f"{m.fusion} fusion, "
    shared = ("" if m.share_convs else ", unshared convs") + ("" if m.norm == "batch" else f", {m.norm} norm")
    if m.arch == "bottleneck":
        body = f"bottlenecks {tuple(m.widths)} (bn2 at 1/{m.expansion}), stem {m.stem_width}, exchange at bn2: "
        return f"{body}{fusion}{exchange}{shared}"
    if m.arch == "unet":
        return f"U-Net encoder {tuple(m.widths)} exchanging at its norms, {fusion}{exchange}{shared}"
    return f"plain conv blocks {tuple(m.widths)}, {fusion}{exchange}{shared}"


def optimiser(cfg: ExperimentConfig) -> str:
    """``SGD lr 0.05 momentum 0.9`` or ``Adam lr 0.005 cosine`` (momentum for SGD only; the learning-rate schedule
    unless constant; ``, bf16 forward`` when ``train.precision`` is not fp32)."""
    o = cfg.train
    text = f"SGD lr {o.lr:g} momentum {o.momentum:g}" if o.optimizer == "sgd" else f"Adam lr {o.lr:g}"
    text += "" if o.lr_schedule == "constant" else f" {o.lr_schedule}"
    return text if o.precision == "fp32" else f"{text}, {o.precision} forward"


def regime_of(configs: Iterable[ExperimentConfig], preset: str, **extra: Any) -> dict[str, str]:
    """The regime of the runs trained from ``configs`` (several values are listed, e.g. every lam).

    Returns a dict with ``preset, architecture, steps, lam, optimiser, l1_rule, evidence`` (strings), plus
    ``extra`` (for example ``then="100 fine-tuning steps with exchange"``). The evidence is ``SMOKE_TEST`` when
    ``preset`` is a smoke preset or any run is a smoke test by its size (``is_smoke_test``).
    """
    cfgs = list(configs)
    if not cfgs:
        raise ValueError("regime_of needs the configs of at least one run")
    out = {"preset": preset, "architecture": _values(architecture(c) for c in cfgs),
           "steps": _values(c.train.steps for c in cfgs), "lam": _values(float(c.train.lam) for c in cfgs),
           "optimiser": _values(optimiser(c) for c in cfgs),
           "l1_rule": _values(f"{c.train.l1_rule}, {c.train.sparsity}, "
                              f"{'once per output' if c.train.l1_per_output else 'once per step'}" for c in cfgs),
           "evidence": SMOKE_TEST if any(is_smoke_test(c) for c in cfgs) else evidence(preset)}
    out.update({k: str(v) for k, v in extra.items()})
    return out


def regime_text(regime: dict[str, str]) -> str:
    """One line for a table cell: ``preset tiny; plain conv blocks (16, 16), no exchange; 12 steps; ...``."""
    parts = [f"preset {regime['preset']}", regime["architecture"], f"{regime['steps']} steps",
             f"lam {regime['lam']}", regime["optimiser"], f"L1 {regime['l1_rule']}"]
    parts += [v for k, v in regime.items() if k not in {"preset", "architecture", "steps", "lam", "optimiser",
                                                         "l1_rule", "evidence"}]
    return "; ".join(parts) + f" (evidence: {regime['evidence']})"
