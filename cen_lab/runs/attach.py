"""Attach an ``Observer`` to any model: ``observe`` finds its layers, checks the settings, and creates or reopens
the run directory (``cen_lab.runs.importer`` attaches one to a skeleton model the same way)."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from ..errors import ObserveError, RunExistsError, option
from ..network.layouts import BNLayer, penalised_masks, resolve_layers, unwrap
from ..network.penalty import per_step_lam
from .exchange_maps import ExchangeFn, ExchangeMap, _exchange_map
from .forecast_model import auto_cadence, rates_of
from .lock import RunLock
from .observer import Observer
from .schema import _read_manifest
from .writer import RunWriter, _prepare_dir

__all__ = ["observe", "IdleObserver"]


def _writes(rank: int) -> bool:
    """Whether this process writes the run: yes without a process group, else when it is rank ``rank``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    world = dist.get_world_size()
    if not 0 <= rank < world:
        raise ObserveError(f"rank={rank} is not a rank of this process group (ranks 0..{world - 1})")
    return dist.get_rank() == rank


class IdleObserver:
    """What ``observe`` gives the ranks of a distributed job that do not write the run: every method of
    ``Observer`` that a loop calls, doing nothing (one rank's model holds the same gammas as the others')."""

    writing = False

    def log(self, step: int, metrics: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        pass

    def log_state(self, step: int, epoch: int = -1) -> None:
        pass

    def log_metrics(self, step: int, values: Mapping[str, Any], split: str = "train", epoch: int = -1) -> None:
        pass

    def log_grads(self, step: int, dxprime: Mapping[str, Any], scale: float | None = None) -> None:
        pass

    def grad_norms(self):
        return contextlib.nullcontext({})

    def grads(self, step: int, scaler: Any = None):
        return contextlib.nullcontext({})  # no hooks: this rank logs nothing

    def flush(self) -> None:
        pass

    def close(self, status: str = "complete", error: str | None = None) -> None:
        pass

    def __enter__(self) -> "IdleObserver":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "IdleObserver(this rank does not write the run)"


def observe(model: nn.Module, out_dir: str | Path, *, layers: Any = None, threshold: float = 2e-2,
            penalised: str | Mapping[str, Any] | None = None, exchange: str | ExchangeFn = "mean",
            modality_names: Sequence[str] | None = None, lam: float | None = None,
            reference_lamda: float | None = None, reference_code: str | None = None, seed: int | None = None,
            total_steps: int | None = None, resume: bool = False, overwrite: bool = False,
            flush_every: int = 50, rank: int = 0, tensorboard: Any = None, lr: Any = None,
            forecast_every: int = 0) -> "Observer | IdleObserver":
    """Observe ``model`` in its own training loop; see ``cen_lab.runs.observer`` for layers, rules and the API.

    Parameters
    ----------
    model : nn.Module
        Any CEN-like model, on any device.
    out_dir : str or Path
        The run directory (created; an existing run needs ``resume`` or ``overwrite``).
    layers : None, str, list of str, or dict name -> list of modules
        Which BN layers to observe (None: every readable one).
    threshold : float
        The exchange threshold (>= 0; the paper's 2e-2).
    penalised : {"disjoint", "alternate-halves", "all", "none"} or dict name -> bool [M, C]
        Which gammas carry the L1 penalty (the ``penalised`` column). Required unless every layer is cen_lab's
        ``ModalBatchNorm2d`` (its ``penalty_mask``).
    exchange : "mean", "none" or callable
        The rule of the exchange map.
    modality_names : list of str, optional
        Names of the M branches (default ``modality0``, ...).
    lam : float, optional
        The L1 weight *per step* that the loop applies (what one step's gradient carries; Theorem 1's check
        compares ``|dL/dgamma|`` with it), recorded in the manifest as ``lam`` and ``lam_per_step``.
    reference_lamda : float, optional
        Instead of ``lam``: the reference code's ``lamda``. Its two codes apply it differently: the segmentation
        code adds ``lamda * L1`` once per output (M + 1 times a step), so the per-step ``lam`` is
        ``(M + 1) * reference_lamda`` (``network.penalty.per_step_lam``); the translation code adds it once per
        step, so ``lam = reference_lamda``. The manifest records ``reference_lamda``, ``reference_code`` and the
        per-step ``lam``.
    reference_code : {"segmentation", "translation"}, optional
        Which of the reference's codes ``reference_lamda`` comes from. Default: read from the observed norms, the
        segmentation code's BatchNorms or the translation code's InstanceNorms; other norms need it given.
    seed, total_steps : int, optional
        Recorded in the manifest.
    resume : bool
        Continue an observed run in ``out_dir``: the first step logged after reopening may be earlier than the
        last one on disk (a loop restarted from its own checkpoint); rows at and after it are then dropped, so
        no step is duplicated.
    overwrite : bool
        Replace a run in ``out_dir`` (never a folder that is not a run).
    flush_every : int
        Write the buffered rows every this many logged steps.
    tensorboard : torch.utils.tensorboard.SummaryWriter, optional
        Also write what is logged to this writer as it is logged (the exchange ratio and the portion below the
        threshold per layer and branch, gamma histograms, the metrics, gradient summaries; see
        ``cen_lab.export``), from the same host copy of each logged step.
    lr : float, sequence of float or callable, optional
        The loop's learning rate: one rate, the rate of every step, or a function step -> rate (e.g. your
        scheduler's formula). With ``total_steps``, the observer records the exchange forecast
        (``cen_lab.forecast``: where the portion under the threshold will be at ``total_steps``) in the
        ``forecasts`` table, shows it in TensorBoard and warns once when it is collapsing or none.
    forecast_every : int
        Steps between recorded forecasts (0: about 50 over ``total_steps``).
    rank : int
        Under ``torch.distributed`` (a DistributedDataParallel job), the one rank that writes the run (default 0);
        every other rank gets an ``IdleObserver``, which has the same methods and does nothing, so the same loop
        runs on every rank. Without a process group, this process writes.

    Returns
    -------
    Observer
        Call ``log`` / ``log_metrics`` / ``grads`` in the loop and ``close`` at the end (or use it as a context
        manager: an exception then records status ``failed``).
    """
    if lr is not None and not (isinstance(total_steps, int) and total_steps > 0):
        raise ObserveError("lr= records the exchange forecast over total_steps; give total_steps too "
                           f"(got {total_steps!r})")
    if forecast_every < 0:
        raise ObserveError(f"forecast_every must be >= 0 (0: about 50 forecasts over the run), got {forecast_every!r}")
    try:
        rates = None if lr is None else rates_of(lr, total_steps)  # a bad schedule fails before anything is written
    except ValueError as e:
        raise ObserveError(f"lr: {e}") from None
    if not _writes(rank):
        return IdleObserver()
    obs = _open(model, out_dir, source="observed", layers=layers, threshold=threshold, penalised=penalised,
                exchange=exchange, modality_names=modality_names, lam=lam, reference_lamda=reference_lamda,
                reference_code=reference_code, resume=resume, overwrite=overwrite,
                flush_every=flush_every, manifest={"seed": seed, "total_steps": total_steps}, tensorboard=tensorboard)
    if rates is not None and obs.writer.manifest.get("lam") != 0:  # lam 0: nothing is pushed to 0
        obs.record_forecasts(rates, forecast_every or auto_cadence(total_steps), obs.writer.manifest.get("lam"))
    return obs


def _open(model: nn.Module, out_dir: str | Path, *, source: str, layers: Any, threshold: float,
          penalised: str | Mapping[str, Any] | None, exchange: str | ExchangeFn,
          modality_names: Sequence[str] | None, lam: float | None, resume: bool, overwrite: bool,
          flush_every: int | None, manifest: dict[str, Any], model_class: str | None = None,
          tensorboard: Any = None, reference_lamda: float | None = None,
          reference_code: str | None = None) -> Observer:
    """``observe`` for any source (``"observed"``, ``"imported"``): resolve and check everything, then create or
    reopen the run; ``manifest`` adds source-specific keys."""
    model = unwrap(model)  # the same layer names however the model is wrapped (DataParallel, torch.compile)
    found = resolve_layers(model, layers, owner="the checkpoint files" if source == "imported" else None)
    m = found[0].num_branches
    names = list(modality_names) if modality_names is not None else [f"modality{i}" for i in range(m)]
    if len(names) != m or len(set(names)) != m or not all(isinstance(n, str) and n for n in names):
        raise ObserveError(f"modality_names must be {m} distinct non-empty names (the layers have M = {m}), got {names}")
    if not threshold >= 0:
        raise ObserveError(f"threshold must be >= 0, got {threshold!r}")
    if lam is not None and not lam >= 0:
        raise ObserveError(f"lam must be >= 0 or None, got {lam!r}")
    code = _reference_code(found, reference_code) if reference_lamda is not None else reference_code
    if lam is not None and reference_lamda is None and source == "observed":
        _warn_if_reference_segmentation(model, found, lam, m)
    lam = _per_step(lam, reference_lamda, m, code)
    manifest = {**manifest, "reference_lamda": reference_lamda,  # None unless given: lam is then as the loop said
                "reference_code": code}
    rule, masks = penalised_masks(found, penalised, model)
    xmap = _exchange_map(exchange, found)
    settings = {"kind": source, "layers": [la.name for la in found], "threshold": float(threshold),
                "penalised": rule, "exchange": xmap.name, "modality_names": names, "lam": lam}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"{out} exists and is not a directory")
    lock = RunLock(out).acquire()  # one writer per run; held until close (the OS releases it if the process dies)
    try:
        writer, rewind = _writer(out, settings, found, m, names, threshold, lam, rule, xmap, model, source, resume,
                                 overwrite, manifest, model_class)
    except BaseException:
        lock.release()
        raise
    return Observer(found, writer, threshold=threshold, penalised=masks, exchange=xmap, flush_every=flush_every,
                    rewind_on_resume=rewind, lock=lock, tensorboard=tensorboard)


REFERENCE_CODES = ("segmentation", "translation")


def _warn_if_reference_segmentation(model: nn.Module, found: list[BNLayer], lam: float, m: int) -> None:
    """``lam=`` on the reference segmentation code's layout (its ``BatchNorm2dParallel``): that code's loop adds its
    ``lamda`` once per output, so a ``lam`` copied from it is M + 1 times too small; say so once, as a warning
    (``lam`` is still taken as given, the per-step weight)."""
    modules = dict(model.named_modules())
    if not any(type(modules.get(la.name)).__name__ == "BatchNorm2dParallel" for la in found):
        return
    warnings.warn(f"lam={lam!r} is taken as the L1 weight per step. These layers are the reference segmentation "
                  f"code's (BatchNorm2dParallel), whose loop adds its lamda once per output, {m + 1} x lamda a step: "
                  f"if {lam!r} is that lamda, pass reference_lamda={lam!r} instead (per step {(m + 1) * lam!r})",
                  UserWarning, stacklevel=4)


def _reference_code(found: list[BNLayer], code: str | None) -> str:
    """Which reference code a ``reference_lamda`` comes from: ``code``, or read from the observed norms (the
    segmentation code's are BatchNorms, the translation code's InstanceNorms)."""
    if code is not None:
        if code not in REFERENCE_CODES:
            raise ObserveError(f"reference_code must be one of {list(REFERENCE_CODES)}, got {code!r}")
        return code
    kinds = {type(mod).__name__ for la in found for mod in la.modules}
    if all(isinstance(mod, nn.modules.batchnorm._BatchNorm) for la in found for mod in la.modules):
        return "segmentation"
    if all(isinstance(mod, nn.modules.instancenorm._InstanceNorm) for la in found for mod in la.modules):
        return "translation"
    raise ObserveError(f"reference_lamda: these layers' norms ({', '.join(sorted(kinds))}) are neither the reference "
                       "segmentation code's BatchNorms nor its translation code's InstanceNorms; say which code "
                       f"applies lamda: reference_code= one of {list(REFERENCE_CODES)} (segmentation: once per "
                       "output, M + 1 times a step; translation: once per step)")


def _per_step(lam: float | None, reference_lamda: float | None, m: int, code: str | None) -> float | None:
    """The per-step L1 weight from ``lam`` (already per step) or the reference's ``lamda``: per output (M + 1) in
    its segmentation code, per step in its translation code."""
    if reference_lamda is None:
        return lam
    if not reference_lamda >= 0:
        raise ObserveError(f"reference_lamda must be >= 0, got {reference_lamda!r}")
    outputs = m + 1 if code == "segmentation" else 1
    per_step = per_step_lam(reference_lamda, outputs)
    if lam is not None and not math.isclose(lam, per_step, rel_tol=1e-12):
        how = f"once per output (M + 1 = {m + 1})" if outputs > 1 else "once per step"
        raise ObserveError(f"lam={lam!r} is the L1 weight per step, and reference_lamda={reference_lamda!r} added "
                           f"{how} by the reference's {code} code gives {per_step!r}: give one of them")
    return per_step


def _writer(out: Path, settings: dict[str, Any], found: list[BNLayer], m: int, names: list[str], threshold: float,
            lam: float | None, rule: str, xmap: ExchangeMap, model: nn.Module, source: str, resume: bool,
            overwrite: bool, manifest: dict[str, Any], model_class: str | None) -> tuple[RunWriter, bool]:
    """The writer of ``_open``'s run (with the lock held): reopened when resuming, else a new run."""
    if resume and (out / "manifest.json").is_file():
        writer = RunWriter.reopen_observed(out)
        differs = [k for k in ("kind", "layers", "threshold", "penalised", "exchange", "modality_names")
                   if writer.settings.get(k) != settings[k]]
        if differs:
            raise RunExistsError(f"{out} holds a run with other settings ({', '.join(differs)}); "
                                 f"pass {option('overwrite')} to replace it or choose another directory")
        return writer, True
    if _prepare_dir(out, overwrite) == "existing":
        status = _read_manifest(out)["status"] if (out / "manifest.json").is_file() else "unknown"
        again = (f"pass {option('resume')} to continue it or {option('overwrite')} to start again" if source == "observed"
                 else f"pass {option('update')} to add the files it does not hold yet, {option('overwrite')} to "
                      "replace it, or choose another directory")  # import: no resume
        raise RunExistsError(f"{out} already holds a run (status {status}); {again}")
    full = {"source": source, "name": out.name, "seed": None, "total_steps": None,
            "model_class": model_class or f"{type(model).__module__}.{type(model).__qualname__}",
            "layers": [la.name for la in found],
            "layer_layouts": ["stacked" if la.stacked else "per-branch" for la in found],
            "num_branches": m, "modalities": names, "input_modalities": names, "tasks": [],
            "branches": [{"name": n, "modality": i, "task": 0} for i, n in enumerate(names)],
            "outputs": names, "ensembles": ["ensemble"], "threshold": float(threshold), "lam": lam,
            "lam_per_step": lam,
            "penalised_rule": rule, "exchange": xmap.name, "device": str(found[0].modules[0].weight.device),
            **manifest}
    return RunWriter.start(out, settings, full), False
