"""Named bundles of config overrides that the benchmarks cross with seeds, kept beside the configs (no torch), so
that the command line can list them in its help without importing the experiments."""

from __future__ import annotations

from typing import Any

__all__ = ["TRANSLATION_VARIANTS"]

_NO_CEN = {"model.exchange": "none", "train.sparsity": "none"}
# name -> (family, overrides on translation_base)
TRANSLATION_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "unimodal-rgb": ("unimodal", {"data.modalities": ["rgb"], **_NO_CEN}),
    "unimodal-depth": ("unimodal", {"data.modalities": ["depth"], **_NO_CEN}),
    "early-fusion": ("baseline", {"model.fusion": "early", **_NO_CEN}),
    # two generators of their own (unshared convs), their images averaged
    "late-fusion": ("baseline", {"model.fusion": "late", "model.share_convs": False, **_NO_CEN}),
    "cen": ("cen", {}),
    "cen-no-exchange": ("ablation", {"model.exchange": "none"}),
    "cen-no-l1": ("ablation", {"train.lam": 0.0}),
    "cen-batchnorm": ("ablation", {"model.norm": "batch"}),
    "cycle-fusion": ("scenario", {"data.modalities": ["rgb", "depth", "edges"], "model.exchange": "cyclic"}),
    # the optional adversarial term (a conditional PatchGAN, cen_lab.network.patchgan), at two weights
    "cen-gan-0.01": ("ablation", {"train.gan_weight": 0.01}),
    "cen-gan-0.1": ("ablation", {"train.gan_weight": 0.1}),
}
