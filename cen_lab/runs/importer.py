"""Import a series of another codebase's checkpoints as a run: one logged step per checkpoint.

``import_checkpoints(paths, out_dir, layers=..., threshold=..., penalised=...)`` reads each file with
``torch.load(..., weights_only=True)``, finds the state dict inside the usual wrappers, takes the BN layers'
gammas and betas, and logs them (with the exchange map the threshold implies) through the same
``cen_lab.runs.observer.Observer`` that observes a live model. A series of epoch checkpoints so becomes gamma
trajectories that every figure and the explorer read.

State dicts
-----------
- a plain ``{name: tensor}`` dict, or one inside ``state_dict``, ``model_state_dict``, ``model``,
  ``segmenter`` (the reference code's), ``net`` or ``network`` (nested up to four deep);
- a ``module.`` prefix (``nn.DataParallel``) is removed from every key that has it;
- a BN is a prefix ``p`` with ``p.weight``, ``p.bias`` and ``p.running_mean``. A layer is either a stacked
  ``ModalBatchNorm2d`` (``p.weight`` of shape ``[M, C]``) or a parent whose children are all BNs (the reference
  code's ``bn_0 ... bn_{M-1}``), branch m being the m-th child in key order. ``layers`` picks among them by
  name or glob, as for ``cen_lab.observe``; ``"alternate-halves"`` counts the gamma tensors in key order.

Lists of gamma tensors
----------------------
The reference translation code saves, each epoch, the list of its ``insnorm_conv`` weight tensors
(``insnorm_params_000.pth``, ...): the gammas of every encoder layer's M per-domain InstanceNorms, in parameter
order (layer 0's domain 0, layer 0's domain 1, layer 1's domain 0, ...), without names or betas. Such a file is
read as M consecutive tensors per layer (``branches``, default 2 or the number of ``modality_names``), the layers
named by ``layers`` when it is a list of as many names, or by ``template`` (a model or a state dict: the names of
its layers that ``layers``, a glob, selects, in module order), else ``insnorm_conv.0``, ``insnorm_conv.1``, ...;
a count or size that does not match is an error saying what was expected. The betas, which the files do not
hold, are logged as NaN (``manifest["betas"]`` says so). ``"alternate-halves"`` then counts the tensors in the
list's order, as the reference's filter did.

Files that need code to unpickle (a pickled class, function or any other global outside torch's allow-list) are
refused before anything in them runs: ``weights_only=True`` never executes it.

Steps come from ``steps`` (one per file), else from an entry every file has at its top level (``step``,
``global_step``, ``iteration``, ``epoch`` or the reference's ``epoch_start``), else from the last number in every
file's name when they differ (``insnorm_params_003.pth``, ``epoch-99.pt``, ``epoch12.pth``), else from the file
order (0, 1, ...). The manifest's ``step_source`` says which (``filename`` for the names).

``update=True`` imports into an existing imported run only the files it does not list yet (a folder read again
after more epochs); their steps must come after the run's last one.
"""

from __future__ import annotations

import glob
import logging
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .._util.progress import progress_bar
from ..errors import ObserveError, RunFormatError, option, said
from ..network.layouts import strip_wrapper_prefix
from .attach import _open
from .import_checks import refuse_uncertain
from .exchange_maps import ExchangeFn
from .reader import Run, load_run

log = logging.getLogger(__name__)

__all__ = ["import_checkpoints", "read_state_dict", "skeleton"]

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "segmenter", "net", "network")
STEP_KEYS = ("step", "global_step", "iteration", "epoch", "epoch_start")
_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin")
_STEP_IN_NAME = re.compile(r"(\d+)(?!.*\d)")  # the last number of a file name's stem ("-99" is 99, not -99)


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """A glob, a folder (its checkpoint files) or a list of paths -> files; globs and folders in natural order
    (``epoch-10`` after ``epoch-9``)."""
    if isinstance(paths, (str, Path)):
        text = str(paths)
        if Path(text).is_dir():
            files = sorted((p for p in Path(text).iterdir() if p.suffix in _SUFFIXES), key=_natural)
        elif any(c in text for c in "*?["):
            files = sorted((Path(p) for p in glob.glob(text)), key=_natural)
        else:
            files = [Path(text)]
    else:
        files = [Path(p) for p in paths]
    if not files:
        raise ObserveError(f"no checkpoint files in {paths!r}")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ObserveError(f"no such checkpoint file: {missing[0]}")
    return files


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _refusal(path: Path, error: Exception) -> str:
    """cen_lab's own message for a file that ``torch.load(weights_only=True)`` refused: what, why, and how to save
    one that imports. torch's text is not quoted (it is long, styled for a terminal, and suggests loading unsafely)."""
    text = _ANSI.sub("", str(error))
    found = sorted(set(re.findall(r"GLOBAL ([A-Za-z_][\w.]*)", text)))
    what = f"it pickles code ({', '.join(found)})" if found else "it pickles code (a class, function or other global)"
    return (f"{path}: refused: {what}, and unpickling code can run anything, so cen_lab loads checkpoints with "
            "torch.load(weights_only=True), which reads tensors and plain containers only. Nothing in the file was "
            "executed. Save the weights as a state dict and import that file: "
            "torch.save({'state_dict': model.state_dict(), 'epoch': epoch}, path)")


def _list_state(obj: Sequence[Any], path: Path, branches: int, names: Sequence[str] | None
                ) -> dict[str, torch.Tensor]:
    """The reference's list of gamma tensors as a state dict of M InstanceNorm-like children per layer (see the
    module docstring); betas NaN, running means 0 (so that the layer reads as a norm)."""
    if not obj or not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in obj):
        raise ObserveError(f"{path}: holds a {type(obj).__name__} that is not a list of 1-D gamma tensors (the "
                           "reference's insnorm_params lists are); nothing to import")
    if names is not None and len(obj) != len(names) * branches:  # the layers are known: say what was expected
        raise ObserveError(f"{path}: a list of {len(obj)} gamma tensors, where {len(names)} layers "
                           f"({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}) x {branches} branches expect "
                           f"{len(names) * branches}: name exactly the saved layers (a template's are selected by the "
                           f"layers glob, e.g. '*.insnorm_conv'), and " + said("branches=M", "--branches M")
                           + " sets M")
    if branches < 2 or len(obj) % branches:
        raise ObserveError(f"{path}: a list of {len(obj)} gamma tensors cannot be {branches} branches per layer; "
                           + said("give branches=M", "give --branches M") + " (M consecutive tensors form a layer)")
    n = len(obj) // branches
    names = list(names) if names is not None else [f"insnorm_conv.{k}" for k in range(n)]
    state: dict[str, torch.Tensor] = {}
    for k, name in enumerate(names):
        for i in range(branches):
            w = obj[k * branches + i].detach().float()
            state[f"{name}.insnorm_{i}.weight"] = w
            state[f"{name}.insnorm_{i}.bias"] = torch.full_like(w, float("nan"))
            state[f"{name}.insnorm_{i}.running_mean"] = torch.zeros_like(w)
    return state


def read_state_dict(path: str | Path, *, branches: int = 2, names: Sequence[str] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Load one checkpoint safely: ``(state dict, top-level entries, where it was found)``. A list of gamma
    tensors (the reference's ``insnorm_params_*.pth``) becomes a state dict of ``branches`` tensors per layer
    named ``names`` (see the module docstring); ``where`` is then ``"<list>"``.

    Raises
    ------
    ObserveError
        The file needs code to unpickle (refused; nothing in it ran), or holds no state dict.
    RunFormatError
        The file is not a readable torch file.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ObserveError(_refusal(path, e)) from None
    except Exception as e:  # truncated zip, not a torch file ...
        raise RunFormatError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(obj, (list, tuple)):
        return _list_state(obj, path, branches, names), {}, "<list>"
    top = obj if isinstance(obj, Mapping) else {}
    where: list[str] = []
    for _ in range(5):
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            raise ObserveError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ObserveError(f"{path}: no state dict found; top-level keys {sorted(map(str, obj))[:20]} (a state dict "
                               f"is read at the top or under one of {list(WRAPPER_KEYS)})")
        obj, where = obj[key], where + [key]
    else:
        raise ObserveError(f"{path}: no state dict within {len(where)} levels of {list(WRAPPER_KEYS)}")
    state = {strip_wrapper_prefix(k): v for k, v in obj.items()}  # DataParallel's module., torch.compile's _orig_mod.
    return state, dict(top), ".".join(where) or "<top>"


def _bn_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Prefixes ``p`` of the norms in ``state``, in key order: ``p.weight``, ``p.bias`` and ``p.running_mean``
    (BatchNorm, InstanceNorm with running statistics), or a 1-D ``p.weight`` and ``p.bias`` of one length without
    running statistics (GroupNorm, LayerNorm over channels, InstanceNorm without them; convolutions and linear
    layers have weights of 2 or more dimensions)."""
    out = []
    for k, w in state.items():
        if not k.endswith(".weight"):
            continue
        p = k[:-len(".weight")]
        b = state.get(f"{p}.bias")
        if b is None:
            continue
        if f"{p}.running_mean" in state or (w.dim() == 1 and b.dim() == 1 and w.shape == b.shape):
            out.append(p)
    return out


def _template_layers(template: Any, layers: Any) -> dict[str, int]:
    """name -> channels of ``template``'s layers (a model, or a state dict made into a ``skeleton``) that ``layers``
    selects, in module order: the layers a list file's tensors belong to."""
    from ..network.layouts import resolve_layers, unwrap

    if isinstance(template, nn.Module):
        root = unwrap(template)
    elif _is_state_dict(template):
        root = skeleton({strip_wrapper_prefix(k): v for k, v in template.items()})
    else:
        raise ObserveError(f"template must be a model (nn.Module) or a state dict, got {type(template).__name__}")
    return {la.name: la.num_channels for la in resolve_layers(root, layers)}


def skeleton(state: Mapping[str, torch.Tensor]) -> nn.Module:
    """An ``nn.Module`` tree holding one BN (``nn.BatchNorm2d``, or ``ModalBatchNorm2d`` for ``[M, C]`` weights)
    at every BN prefix of ``state``, in key order, so that ``cen_lab.runs.observer.resolve_layers`` finds the layers
    and their parameter order by the same rules as on a live model. Each checkpoint's values are copied in
    before it is logged."""
    from ..network.architectures import ModalBatchNorm2d

    root = nn.Module()
    for prefix in _bn_prefixes(state):
        w = state[f"{prefix}.weight"]
        bn = ModalBatchNorm2d(*w.shape) if w.dim() == 2 else nn.BatchNorm2d(w.shape[0])
        node = root
        for part in prefix.split(".")[:-1]:
            if not hasattr(node, part) or not isinstance(getattr(node, part), nn.Module):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.add_module(prefix.split(".")[-1], bn)
    return root


@torch.no_grad()
def _load_into(root: nn.Module, state: Mapping[str, torch.Tensor], layers, path: Path) -> None:
    names = {id(m): n for n, m in root.named_modules()}
    for layer in layers:
        for mod in layer.modules:
            name = names[id(mod)]
            for attr in ("weight", "bias"):
                key = f"{name}.{attr}"
                if key not in state:
                    raise ObserveError(f"{path}: no {key!r} (the first checkpoint had it); every file must hold the "
                                       "same layers")
                value = state[key]
                target = getattr(mod, attr)
                if value.shape != target.shape:
                    raise ObserveError(f"{path}: {key!r} has shape {list(value.shape)}, the first checkpoint "
                                       f"{list(target.shape)}")
                target.copy_(value)


def _steps(files: list[Path], tops: list[dict[str, Any]], steps: Sequence[int] | None) -> tuple[list[int], str]:
    if steps is not None:
        steps = list(steps)
        if len(steps) != len(files):
            raise ObserveError(f"steps has {len(steps)} entries for {len(files)} checkpoint files")
        source = "argument"
    else:
        key = next((k for k in STEP_KEYS if all(isinstance(t.get(k), int) and not isinstance(t.get(k), bool)
                                                for t in tops)), None)
        numbers = [_STEP_IN_NAME.search(f.stem) for f in files]
        if key is not None:
            steps, source = [int(t[key]) for t in tops], f"file entry {key!r}"
        elif all(numbers) and len({int(n.group(1)) for n in numbers}) == len(files):
            steps, source = [int(n.group(1)) for n in numbers], "filename"
        else:
            steps, source = list(range(len(files))), "file order"
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
        raise ObserveError(f"steps must be integers >= 0, got {steps}")
    if len(set(steps)) != len(steps):
        dup = sorted({s for s in steps if steps.count(s) > 1})
        raise ObserveError(f"two checkpoints have the same step {dup} (from {source}); give each file's step "
                           + said("with steps=[...]", "with --steps 0,5,10,..."))
    return steps, source


def import_checkpoints(paths: str | Path | Sequence[str | Path], out_dir: str | Path, *, layers: Any = None,
                       threshold: float = 2e-2, penalised: str | Mapping[str, Any] | None = None,
                       steps: Sequence[int] | None = None, modality_names: Sequence[str] | None = None,
                       exchange: str | ExchangeFn = "mean", lam: float | None = None,
                       reference_lamda: float | None = None, overwrite: bool = False, update: bool = False,
                       progress: bool = True, branches: int | None = None, template: Any = None,
                       reference_code: str | None = None) -> Run:
    """Make a run with one logged step per checkpoint (gammas, betas and the exchange map ``threshold`` implies).

    Parameters
    ----------
    paths : str, Path or list
        A glob (``"ckpt/epoch-*.pth"``), a folder of checkpoint files, or a list of files.
    out_dir : str or Path
        The run directory to write (an existing run needs ``overwrite``, or ``update``).
    layers, threshold, penalised, exchange, modality_names, lam, reference_lamda, reference_code
        As for ``cen_lab.observe`` (``lam`` per step, or the reference's ``reference_lamda``: per output in its
        segmentation code, per step in its translation code); layer names are the state dict's BN prefixes
        (``layer1.0.bn2``). The files hold no module types, so ``reference_code`` defaults to ``"translation"``
        when the norms are named ``insnorm_*`` (the translation code's), else ``"segmentation"``.
        ``penalised`` is required (the reference code's rule is ``"alternate-halves"``).
    steps : list of int, optional
        The step of each file; default from the files' entries, else the numbers in their names, else their order.
    overwrite : bool
        Replace a run already in ``out_dir``.
    update : bool
        Add to the imported run in ``out_dir`` the files it does not list yet (with the same settings); their steps
        must come after its last step. Without new files the run is returned as it is.
    progress : bool
        A progress bar over the files.
    branches : int, optional
        For files that hold a list of gamma tensors (the reference's ``insnorm_params_*.pth``): M, the tensors per
        layer (default: the number of ``modality_names``, else 2). ``layers`` may then be a list of the layers'
        names.
    template : nn.Module or state dict, optional
        For list files: the model (or a state dict of it) whose layers the tensors belong to; its layers that
        ``layers`` selects (a glob such as ``"*.insnorm_conv"``, or all readable ones) name them, in module order.

    Returns
    -------
    Run
        Source ``"imported"``; the manifest lists the files with their steps (``imported_files``) and the
        ``step_source``.
    """
    files = _files(paths)
    m = branches if branches is not None else (len(modality_names) if modality_names is not None else 2)
    names = (list(layers) if isinstance(layers, (list, tuple)) and not any(set("*?[") & set(str(x)) for x in layers)
             else None)  # plain names (not globs) name the layers of list files
    if template is not None:
        if names is not None:
            raise ObserveError("give the list files' layer names either as layers=[...] or through template, not both")
        expected = _template_layers(template, layers)  # name -> channels
        names = list(expected)
    previous: dict[str, int] = {}
    if update and overwrite:
        raise ObserveError("update adds new files to an imported run and overwrite replaces it: give one of them")
    if update and (Path(out_dir) / "manifest.json").is_file():
        old = load_run(out_dir)
        if old.source != "imported":
            raise ObserveError(f"{out_dir} holds a run of source {old.source!r}; update adds files to an imported run")
        previous = {f["path"]: f["step"] for f in old.manifest.get("imported_files", [])}
        fresh = [f for f in files if str(f.resolve()) not in previous]
        if not fresh:
            log.info("%s: every file is imported already; nothing to add", out_dir)
            return old
        files, last = fresh, old.manifest["last_step"]
    # keep only the BN tensors and the step entries of each file: a series of large checkpoints fits in memory
    states, tops, where0 = [], [], None
    for f in files:
        state, top, where = read_state_dict(f, branches=m, names=names)
        if template is not None and where == "<list>":
            for name, channels in expected.items():
                got = [state[f"{name}.insnorm_{i}.weight"].numel() for i in range(m)]
                if any(g != channels for g in got):
                    raise ObserveError(f"{f}: the {m} tensors of layer {name!r} have {got} gammas, where the "
                                       f"template's layer has {channels} channels (is the list of this model?)")
        prefixes = _bn_prefixes(state)
        if not prefixes:
            raise ObserveError(f"{f}: no BatchNorm found in its state dict (under {where}): no prefix has .weight, "
                               f".bias and .running_mean; its {len(state)} keys begin {list(state)[:8]}")
        for p in prefixes:  # before anything is written: a refused file leaves no half-imported run
            bad = ~torch.isfinite(state[f"{p}.weight"])
            if bad.any():
                raise ObserveError(f"{f}: layer {p!r} has {int(bad.sum())} gamma(s) that are NaN or infinite "
                                   f"({p}.weight); the file was not imported (a diverged run?)")
        keep = {f"{p}.{a}" for p in prefixes for a in ("weight", "bias", "running_mean")}
        states.append({k: v for k, v in state.items() if k in keep})
        tops.append({k: top[k] for k in STEP_KEYS if k in top})
        where0 = where0 or where
        del state, top
    root = skeleton(states[0])
    if layers is None and names is None:  # a file holds no modules: sibling norms are branches only when so named
        refuse_uncertain(root, files[0])
    order, step_source = _steps(files, tops, steps)
    ranked = sorted(range(len(files)), key=lambda i: order[i])
    if previous and order[ranked[0]] <= last:
        raise ObserveError(f"{files[ranked[0]]}: its step {order[ranked[0]]} ({step_source}) is not after the last "
                           f"imported step {last} of {out_dir}; update only adds later files (re-import the folder "
                           f"with {option('overwrite')} to rebuild the run)")
    imported = [*({"path": p, "step": st} for p, st in previous.items()),
                *({"path": str(files[i].resolve()), "step": order[i]} for i in ranked)]
    manifest = {"step_source": step_source, "state_dict_key": where0,
                **({"betas": "not in the files (lists of gammas): logged as NaN"} if where0 == "<list>" else {}),
                "imported_files": imported, "total_steps": order[ranked[-1]]}
    try:
        obs = _open_imported(root, out_dir, names if names is not None else layers, threshold, penalised, exchange,
                             modality_names, lam, reference_lamda, reference_code, previous, overwrite, manifest)
    except ObserveError as e:
        if where0 == "<list>" and template is None and names is None and layers is not None:
            raise ObserveError(f"{e}. The files hold lists of tensors without layer names (as the reference "
                               "translation code's insnorm_params_*.pth), so a glob has nothing to select: "
                               + said("give template= (your model or its state dict), or layers=[...] with one "
                                      "name per layer", "give --template FILE (your model's state dict), or one "
                                      "--layers NAME per layer")) from None
        raise
    if previous:  # a reopened run keeps its manifest: record the files it now holds
        obs.writer.manifest.update(imported_files=imported, total_steps=order[ranked[-1]])
    with obs:
        for i in progress_bar(ranked, desc="import checkpoints", disable=not progress):
            _load_into(root, states[i], obs.layers, files[i])
            obs.log(order[i])
    return load_run(out_dir)


def _open_imported(root, out_dir, layers, threshold, penalised, exchange, modality_names, lam, reference_lamda,
                   reference_code, previous, overwrite, manifest):
    """``_open`` for an import: the skeleton ``root`` of the files' norms, whose reference code is read off their
    names (the files hold no module types)."""
    code = reference_code or ("translation" if any("insnorm" in n for n, _ in root.named_modules())
                              else "segmentation")
    return _open(root, out_dir, source="imported", layers=layers, threshold=threshold, penalised=penalised,
                 exchange=exchange, modality_names=modality_names, lam=lam, reference_lamda=reference_lamda,
                 reference_code=code, resume=bool(previous), overwrite=overwrite, flush_every=None,
                 manifest=manifest, model_class="unknown (imported from checkpoints)")
