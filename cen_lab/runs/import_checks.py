"""What a checkpoint file cannot say, and the import refuses to guess: which sibling norms are a CEN's branches.

A file holds tensors, not modules: the norms of a plain model's block (``bn1``, ``bn2``) and a CEN layer's
per-branch norms (``bn_0``, ``bn_1``) look alike once read. ``import_checkpoints`` with ``layers=None`` takes a
layer's norms as branches only when they are named as branches (``refuse_uncertain``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from torch import nn

from ..errors import ObserveError, said
from ..network.layouts import _few, find_bn_layers

__all__ = ["indexed", "refuse_uncertain"]


def indexed(names: Sequence[str]) -> bool:
    """Whether child names are one stem with the indices 0..M-1 (``bn_0, bn_1``, ``insnorm_0, ...``, a
    ModuleList's ``0, 1``): the reference's per-branch layouts, unlike ``bn1, bn2`` or a Sequential's ``1, 4``."""
    parts = [re.fullmatch(r"(.*?)(\d+)", n) for n in names]
    return (all(parts) and len({p.group(1) for p in parts}) == 1
            and sorted(int(p.group(2)) for p in parts) == list(range(len(names))))


def refuse_uncertain(root: nn.Module, path: Path) -> None:
    """Refuse ``layers=None`` when a layer found in the files is only sibling norms of one size, not named as
    branches: any model's ``bn1, bn2`` would otherwise be read as two modalities."""
    modules = dict(root.named_modules())
    found = find_bn_layers(root)
    unsure = [la.name or "<root>" for la in found if not la.stacked
              and not indexed([n for n, _ in modules[la.name].named_children()])]
    if unsure:
        raise ObserveError(
            f"{path}: with layers=None, no layout is certain: {len(unsure)} of the {len(found)} candidate layers are "
            f"sibling norms not named as branches ({_few(unsure)}: children such as bn1, bn2, not bn_0, bn_1), which "
            f"could be any model's. Candidate layers: {_few([la.name or '<root>' for la in found])}. If these files "
            "are a CEN's, name its per-branch layers: " + said("layers='*.bn2' or layers=[...]",
                                                              "--layers '*.bn2' (repeatable)"))
