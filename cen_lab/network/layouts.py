"""Where the gammas of a CEN are: BN layers in any of the layouts CEN codebases use, and which gammas the
L1 penalty is on. ``cen_lab.runs.observer`` and ``cen_lab.runs.importer`` read models and state dicts through these.

Layers
------
A layer is one BN position with M branches (modalities) of C channels. Three layouts are read:

- cen_lab's ``ModalBatchNorm2d`` (gamma ``[M, C]`` in one parameter);
- a module whose children are exactly M BatchNorm layers (the reference code's ``BatchNorm2dParallel``
  with ``bn_0 ... bn_{M-1}``, or an ``nn.ModuleList`` of BNs), branch m being the m-th child; or exactly M affine
  InstanceNorm layers of one type (the reference translation U-Net's ``InstanceNorm2dParallel``, children
  ``insnorm_0 ... insnorm_{M-1}``), or M affine GroupNorms, or M LayerNorms with one weight per channel
  (``ln_0 ...``); the children of one layer must be of one type and size;
- an explicit list of per-modality BN modules: ``layers={"stem.bn": [model.rgb.bn1, model.depth.bn1]}``.

``layers`` is None (every layer of the first two layouts), a name or glob over module names (``"*.bn2"``), a
list of those, or a dict name -> list of modules. Anything else gets an ``ObserveError`` that lists the
BN-like modules the model has.

Penalised gammas (``penalised``)
--------------------------------
``"disjoint"``
    cen_lab's and the paper's: branch m penalises the m-th of M contiguous chunks of the channels
    (``cen_lab.sparsity_mask``).
``"alternate-halves"``
    the reference code's rule, exactly: walk the model's parameters in ``named_parameters()`` order; the k-th
    gamma tensor of an observed layer (one per branch; a ``[M, C]`` parameter counts as M in row order) that
    requires grad penalises its first half ``[:C // 2]`` when k is even and its second half ``[C // 2:]`` when
    k is odd. For M = 2 that is modality 0 the first half and modality 1 the second half of every layer; for
    M = 3 the parity runs on across layers (layer 0: first, second, first; layer 1: second, first, second).
    It equals the reference's selection when the observed layers are the ones its name filter picks
    (``'bn2' in name``).
``"all"`` / ``"none"``
    every gamma / none.
a dict layer name -> bool ``[M, C]`` mask
    any other rule.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..errors import ObserveError
from .blocks import ModalBatchNorm2d
from .penalty import alternate_halves, sparsity_mask  # noqa: F401  (alternate_halves: part of this API)

__all__ = ["WRAPPER_PREFIXES", "unwrap", "strip_wrapper_prefix", "PENALISED_RULES", "BNLayer", "find_bn_layers", "resolve_layers", "penalised_masks", "alternate_halves"]

PENALISED_RULES = ("disjoint", "alternate-halves", "all", "none")
# the per-branch norms a layer may be made of: BatchNorm (segmentation), InstanceNorm (the reference's translation
# U-Net: ``insnorm_0 ... insnorm_{M-1}`` children of ``insnorm_conv``), GroupNorm and LayerNorm (``ln_0 ...``); each
# needs its affine weight to have a gamma, and a LayerNorm one weight per channel (normalized_shape of length 1)
NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


# -- wrappers ---------------------------------------------------------------------------------------------------

# what wrappers put before the inner model's names: DataParallel / DistributedDataParallel (``module``) and
# ``torch.compile`` (``_orig_mod``), in any nesting
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel, DistributedDataParallel and ``torch.compile`` wrappers, in any nesting, so
    that a model is observed under the same layer names however it is wrapped (and as its checkpoints import)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefix(name: str) -> str:
    """``name`` without the wrappers' leading prefixes (``module._orig_mod.layer1.bn2`` -> ``layer1.bn2``): the
    same rule as ``unwrap``, for the keys of a state dict saved from a wrapped model."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


# -- layers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BNLayer:
    """One observed BN position: ``M`` branches of ``C`` channels.

    Attributes
    ----------
    name : str
        The ``layer`` value in the run tables (the module's dotted name).
    modules : tuple of nn.Module
        One module holding gamma ``[M, C]`` (``ModalBatchNorm2d``), or M BatchNorm modules, one per branch.
    """

    name: str
    modules: tuple[nn.Module, ...]

    @property
    def stacked(self) -> bool:
        weight = getattr(self.modules[0], "weight", None)  # None for a norm without an affine weight
        return len(self.modules) == 1 and weight is not None and weight.dim() == 2

    @property
    def num_branches(self) -> int:
        return self.modules[0].weight.shape[0] if self.stacked else len(self.modules)

    @property
    def num_channels(self) -> int:
        return self.modules[0].weight.shape[-1]

    def gammas(self) -> list[torch.Tensor]:
        """Tensors whose concatenated flattening is gamma ``[M * C]`` in branch-major order."""
        return [m.weight for m in self.modules]

    def betas(self) -> list[torch.Tensor]:
        return [m.bias for m in self.modules]

    def hook_point(self) -> nn.Module | tuple[nn.Module, ...]:
        """What ``record_bn_output_grad_norms`` hooks: the stacked module, or the per-branch modules."""
        return self.modules[0] if self.stacked else self.modules


def _is_stacked_bn(module: nn.Module) -> bool:
    return isinstance(module, ModalBatchNorm2d)


def _bn_like(model: nn.Module) -> list[str]:
    """Names of every BatchNorm-like module of ``model`` (for error messages)."""
    return [n or "<root>" for n, m in model.named_modules() if isinstance(m, NORM_TYPES) or _is_stacked_bn(m)]


def _layer_of(name: str, module: nn.Module) -> BNLayer | None:
    """The layer ``module`` forms, or None when it is not one of the readable layouts."""
    if _is_stacked_bn(module):
        return BNLayer(name, (module,))
    if isinstance(module, NORM_TYPES):
        return None
    kids = [k for _, k in module.named_children()]
    if kids and all(isinstance(k, NORM_TYPES) for k in kids) and len({type(k) for k in kids}) == 1:
        return BNLayer(name, tuple(kids))
    return None


def _mixed_norms(mods: Sequence[nn.Module]) -> list[str]:
    """The type names of ``mods`` when they are all norms but of more than one type (no layer), else []."""
    types = [type(m).__name__ for m in mods]
    return types if mods and all(isinstance(m, NORM_TYPES) for m in mods) and len(set(types)) > 1 else []


def find_bn_layers(model: nn.Module) -> list[BNLayer]:
    """Every layer of ``model`` in a readable layout (``ModalBatchNorm2d``, or a module whose children are all
    BatchNorms), in module order. Layers with one child are included; ``resolve_layers`` refuses them."""
    found = []
    for name, module in model.named_modules():
        layer = _layer_of(name, module)
        if layer is not None and (layer.stacked or layer.num_branches >= 2):
            found.append(layer)
    return found


def _check_layer(layer: BNLayer) -> BNLayer:
    for mod in layer.modules:
        if getattr(mod, "weight", None) is None or getattr(mod, "bias", None) is None:
            flag = "elementwise_affine=False" if isinstance(mod, nn.LayerNorm) else "affine=False"
            raise ObserveError(f"layer {layer.name!r}: its {type(mod).__name__} has no affine gamma/beta "
                               f"({flag}); there is no gamma to observe")
        if isinstance(mod, nn.LayerNorm) and mod.weight.dim() != 1:
            raise ObserveError(f"layer {layer.name!r}: its LayerNorm's weight has shape {list(mod.weight.shape)}, not "
                               "one gamma per channel; only a LayerNorm over the channels (normalized_shape (C,)) "
                               "has per-channel gammas to exchange by")
    if layer.num_branches < 2:
        raise ObserveError(f"layer {layer.name!r} has M = {layer.num_branches} branch; a CEN layer needs M >= 2 "
                           "(one BatchNorm per modality)")
    if not layer.stacked:
        sizes = [tuple(m.weight.shape) for m in layer.modules]
        if len(set(sizes)) != 1 or len(sizes[0]) != 1:
            raise ObserveError(f"layer {layer.name!r}: its per-branch BatchNorms differ in size {sizes}; every "
                               "branch needs the same C channels")
    return layer


def _few(names: Sequence[str], k: int = 8) -> str:
    """At most ``k`` names of a list, and how many there are in all: a model's hundreds of layers in one message
    would bury what it says."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:k])
    return f"[{shown}]" if len(names) <= k else f"[{shown}, ...] ({len(names)} in all)"


def resolve_layers(model: nn.Module, layers: None | str | Sequence[str] | Mapping[str, Sequence[nn.Module]] = None,
                   owner: str | None = None) -> list[BNLayer]:
    """The observed layers of ``model`` (see the module docstring), checked: M >= 2, equal sizes, affine.
    ``owner`` names the model in messages (default: its class).

    Raises
    ------
    ObserveError
        A name or glob that matches no readable layer (the message lists the BN-like modules found), a module
        in no readable layout, a layer with M = 1 or branches of different sizes, or layers with different M.
    """
    if isinstance(layers, Mapping):
        out = []
        for name, mods in layers.items():
            mods = tuple(mods)
            if not mods or not all(isinstance(m, NORM_TYPES) or _is_stacked_bn(m) for m in mods):
                raise ObserveError(f"layers[{name!r}] must be a list of norm modules (BatchNorm, InstanceNorm, "
                                   "GroupNorm or LayerNorm), one per branch")
            if _mixed_norms(mods):
                raise ObserveError(f"layers[{name!r}]: norms of different types {_mixed_norms(mods)}; every branch "
                                   "needs the same norm")
            out.append(_check_layer(BNLayer(str(name), mods)))
    else:
        candidates = find_bn_layers(model)
        if layers is None:
            out = [_check_layer(c) for c in candidates]
            if not out:
                raise ObserveError(f"{owner or type(model).__name__} has no layer in a readable layout (ModalBatchNorm2d, or a "
                                   f"module whose children are M BatchNorms, InstanceNorms, GroupNorms or "
                                   f"LayerNorms of one type); BN-like modules: {_few(_bn_like(model))}")
        else:
            patterns = [layers] if isinstance(layers, str) else list(layers)
            if not patterns:
                raise ObserveError("layers is empty; give names or globs, or None to find them")
            modules = dict(model.named_modules())
            out, seen = [], set()
            for pat in patterns:
                if not isinstance(pat, str):
                    raise ObserveError(f"layers must be names or globs (str), got {type(pat).__name__}")
                if pat in modules:  # an exact name: a layer of any size, checked below
                    hits = [_layer_of(pat, modules[pat])]
                    mixed = _mixed_norms(list(modules[pat].children()))
                    if hits[0] is None and mixed:
                        raise ObserveError(f"layer {pat!r}: its children are norms of different types {mixed}; every "
                                           "branch needs the same norm")
                    if hits[0] is None:
                        raise ObserveError(
                            f"layer {pat!r} is a {type(modules[pat]).__name__}, not a ModalBatchNorm2d nor a module "
                            f"whose children are BatchNorms; readable layers: {_few([c.name for c in candidates])}; "
                            f"BN-like modules: {_few(_bn_like(model))}")
                else:
                    hits = [c for c in candidates if fnmatch.fnmatchcase(c.name, pat)]
                    if not hits:
                        raise ObserveError(
                            f"layers {pat!r} matches no readable layer of {owner or type(model).__name__}; readable "
                            f"layers: {_few([c.name for c in candidates])}; BN-like modules: {_few(_bn_like(model))}")
                for h in hits:
                    if h.name not in seen:
                        seen.add(h.name)
                        out.append(_check_layer(h))
    ms = {layer.num_branches for layer in out}
    if len(ms) != 1:
        raise ObserveError(f"the observed layers have different numbers of branches {sorted(ms)}: "
                           + ", ".join(f"{la.name}: M = {la.num_branches}" for la in out))
    return out


# -- penalised gammas -----------------------------------------------------------------------------------------


def _parameter_order(model: nn.Module, layers: Sequence[BNLayer]) -> list[tuple[int, int]]:
    where: dict[int, tuple[int, int | None]] = {}
    for li, layer in enumerate(layers):
        for b, g in enumerate(layer.gammas()):
            where[id(g)] = (li, None if layer.stacked else b)
    order = []
    for _, p in model.named_parameters():
        if id(p) in where and p.requires_grad:
            li, b = where[id(p)]
            order += [(li, r) for r in range(p.shape[0])] if b is None else [(li, b)]
    return order


def penalised_masks(layers: Sequence[BNLayer], rule: str | Mapping[str, Any] | None, model: nn.Module | None = None,
                    order: Sequence[tuple[int, int]] | None = None) -> tuple[str, list[np.ndarray]]:
    """Which gammas carry the penalty: ``(rule name, [bool [M, C] per layer])``.

    ``rule`` is one of ``PENALISED_RULES``, a dict layer name -> mask, or None: the ``penalty_mask`` of
    cen_lab's own ``ModalBatchNorm2d`` layers (an error for other layouts). ``"alternate-halves"`` needs the
    parameter order: from ``model`` or given as ``order`` (see ``alternate_halves``).
    """
    shapes = [(la.num_branches, la.num_channels) for la in layers]
    if rule is None:
        if all(la.stacked and hasattr(la.modules[0], "penalty_mask") for la in layers):
            return "mask", [la.modules[0].penalty_mask.cpu().numpy().astype(bool) for la in layers]
        raise ObserveError(f"say which gammas carry the L1 penalty: penalised= one of {list(PENALISED_RULES)} "
                           "(the reference code's name filter is 'alternate-halves'), or a dict layer -> bool [M, C]")
    if isinstance(rule, Mapping):
        unknown = sorted(set(rule) - {la.name for la in layers})
        if unknown:
            raise ObserveError(f"penalised masks name layers that are not observed: {unknown}; observed: "
                               f"{[la.name for la in layers]}")
        masks = []
        for la, shape in zip(layers, shapes):
            if la.name not in rule:
                raise ObserveError(f"penalised: no mask for layer {la.name!r}")
            mask = np.asarray(rule[la.name].cpu() if isinstance(rule[la.name], torch.Tensor) else rule[la.name])
            if mask.shape != shape or mask.dtype != bool:
                raise ObserveError(f"penalised[{la.name!r}] must be a bool mask of shape [M, C] = {list(shape)}, "
                                   f"got {mask.dtype} {list(mask.shape)}")
            masks.append(mask.copy())
        return "mask", masks
    if rule not in PENALISED_RULES:
        raise ObserveError(f"penalised must be one of {list(PENALISED_RULES)} or a dict of masks, got {rule!r}")
    if rule == "alternate-halves":
        if order is None:
            if model is None:
                raise ObserveError("'alternate-halves' needs the model (or the parameter order)")
            order = _parameter_order(model, layers)
        return rule, alternate_halves(order, shapes)
    if rule == "disjoint":
        try:
            return rule, [sparsity_mask(c, m, "disjoint").numpy() for m, c in shapes]
        except ValueError as e:
            raise ObserveError(f"penalised='disjoint': {e}") from None
    return rule, [np.full(s, rule == "all") for s in shapes]
