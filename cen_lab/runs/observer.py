"""Observe any PyTorch CEN in its own training loop and log it in the run schema of ``cen_lab.runs.schema``.

CEN's pattern is copied into many codebases: a wrapper that runs one shared module per modality, a
per-modality BatchNorm made of M ``nn.BatchNorm2d`` children ``bn_0 ... bn_{M-1}``, an exchange after the
middle BN (``bn2``) of each residual bottleneck, and an L1 penalty on gammas picked by parameter name. The
observer reads such a model where it stands::

    obs = cen_lab.observe(model, "runs/mine", layers="*.bn2", threshold=2e-2, penalised="alternate-halves",
                          modality_names=["rgb", "depth"], reference_lamda=2e-4)
    for step, batch in enumerate(loader):
        with obs.grads(step):                      # optional: dL/dgamma and ||dL/dx'|| of this backward
            loss = loss_fn(model, batch); loss.backward()
        optimizer.step()
        obs.log(step, metrics={"loss/total": loss.item()})   # gammas, betas, exchange map
    obs.close()                                    # status "complete"; also a context manager

``cen_lab.train`` logs through the same ``Observer``, so every figure, the explorer and ``load_run`` read both.

Layers and penalised gammas
---------------------------
Which BN layouts are read and how ``layers`` and ``penalised`` choose among them: see ``cen_lab.network.layouts``.

Exchange map (``exchange``)
---------------------------
Channel c of branch m is exchanged where ``|gamma[m, c]| < threshold`` (a gamma at the threshold is kept).
The ``source`` column says where its value then comes from: the default ``"mean"`` takes the mean of the
other branches (for M = 2 the other branch's index, for M > 2 ``-1``, a mean of several); ``"none"`` logs
every channel as kept (a network that does not exchange). Another rule is a callable
``fn(layer_name, gamma, threshold) -> source``: ``gamma`` float32 ``[M, C]``, ``source`` int ``[M, C]``
(the branch's own index where kept).

Metrics
-------
Any finite number under any name. Names ``<kind>/<branch>`` (kind one of loss, miou, accuracy, mae, f1, alpha;
branch a modality name or ``ensemble``) are drawn per branch; every other name gets a panel of its own in the
explorer (``cen_lab.plots.compute_training_curves(..., others=True)``).

Cost on a GPU: one device-to-host copy per logged step (every gamma and beta in one ``torch.cat``), none per
layer; rows are buffered and written as Parquet parts every ``flush_every`` logged steps and at ``close``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import ObserveError
from ..network.hooks import record_bn_output_grad_norms
from ..network.layouts import (PENALISED_RULES, BNLayer, alternate_halves, find_bn_layers, penalised_masks,  # noqa: F401
                               resolve_layers)
from .divergence import DivergenceWatch
from ._open import track_open as _track_open, untrack
from .forecast_model import ForecastRecorder
from .forward_watch import ForwardWatch
from .exchange_maps import ExchangeFn, ExchangeMap, MeanExchange, NoExchange, _CallableExchange, _exchange_map  # noqa: F401
from .export import TensorBoardSink
from .lock import RunLock
from .writer import RunWriter

log = logging.getLogger(__name__)

__all__ = ["PENALISED_RULES", "BNLayer", "ExchangeMap", "MeanExchange", "NoExchange", "Observer",
           "find_bn_layers", "resolve_layers", "penalised_masks", "alternate_halves"]

# -- the observer ---------------------------------------------------------------------------------------------

def _finite_metrics(values: Mapping[str, Any] | None, allow_nan: bool = False) -> dict[str, float]:
    out = {}
    for name, v in (values or {}).items():
        if not isinstance(name, str) or not name:
            raise ObserveError(f"metric names must be non-empty strings, got {name!r}")
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ObserveError(f"metric {name!r} must be a number, got a tensor of shape {list(v.shape)}")
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ObserveError(f"metric {name!r} must be a real number, got {type(v).__name__}")
        if not math.isfinite(float(v)) and not (allow_nan and math.isnan(float(v))):
            raise ObserveError(f"metric {name!r} is {float(v)}, not a finite number; nothing of this step was logged")
        out[name] = float(v)
    return out


class Observer:
    """Logs BN gammas, betas, exchange maps, metrics and gradients of a model into a run directory.

    Build one with ``observe`` (any model) or, as ``cen_lab.train`` does, from resolved layers and a writer.
    The tables follow ``cen_lab.runs``; branch ``b`` is modality ``b // tasks``, task ``b % tasks``.

    Attributes
    ----------
    layers : list of BNLayer
    penalised_masks : list of numpy.ndarray
        bool ``[M, C]`` per layer: which gammas carry the penalty.
    penalised, branch_col, donor : numpy.ndarray
        Per table row (all layers' ``M * C`` channels in order): the penalised flag, the branch, and the source
        the channel takes when it is exchanged.
    writer : RunWriter
    """

    writing = True  # this process writes the run (see IdleObserver for the other ranks of a distributed job)

    def __init__(self, layers: Sequence[BNLayer], writer: RunWriter, *, threshold: float,
                 penalised: Sequence[np.ndarray], exchange: str | ExchangeFn | ExchangeMap = "mean", tasks: int = 1,
                 flush_every: int | None = 50, rewind_on_resume: bool = False, allow_nan_metrics: bool = False,
                 lock: RunLock | None = None, tensorboard: Any = None):
        if not threshold >= 0:
            raise ObserveError(f"threshold must be >= 0, got {threshold!r}")
        if flush_every is not None and flush_every < 1:
            raise ObserveError(f"flush_every must be >= 1 or None, got {flush_every!r}")
        self.layers, self.writer, self.threshold = list(layers), writer, float(threshold)
        self.exchange = _exchange_map(exchange, self.layers)
        self.flush_every, self.allow_nan_metrics, self._lock = flush_every, allow_nan_metrics, lock
        names, branches, chans, pen, donors = [], [], [], [], []
        for i, layer in enumerate(self.layers):
            m, c = layer.num_branches, layer.num_channels
            names.append(np.full(m * c, layer.name, dtype=object))
            branches.append(np.repeat(np.arange(m, dtype=np.int32), c))
            chans.append(np.tile(np.arange(c, dtype=np.int32), m))
            pen.append(np.asarray(penalised[i], dtype=bool).ravel())
            donors.append(np.asarray(self.exchange.donors(layer, i)).ravel())
        self.penalised_masks = [np.asarray(p, dtype=bool) for p in penalised]
        self.penalised = np.concatenate(pen)
        self.branch_col = np.concatenate(branches)
        self.ids = {"layer": np.concatenate(names), "branch": self.branch_col,
                    "modality": self.branch_col // tasks, "task": self.branch_col % tasks,
                    "channel": np.concatenate(chans)}
        self.donor = np.concatenate(donors).astype(np.int32)
        self._rows = [slice(o - m * c, o) for o, (m, c) in zip(
            np.cumsum([la.num_branches * la.num_channels for la in self.layers]),
            [(la.num_branches, la.num_channels) for la in self.layers])]
        self.divergence = DivergenceWatch(str(writer.path), writer.manifest)  # a loss or gamma blowing up says so
        names = [b["name"] for b in writer.manifest.get("branches", [])] or [str(b) for b in range(self.branch_col.max() + 1)]
        self._tb = None if tensorboard is None else TensorBoardSink(tensorboard, self.ids["layer"], self.branch_col, names,
                                                                    self.penalised, self.threshold)
        self._gamma_tensors = [t for la in self.layers for t in la.gammas()]
        self._beta_tensors = [t for la in self.layers for t in la.betas()]
        self._hook_points = [(la.name, la.hook_point()) for la in self.layers]
        self._watch = ForwardWatch(self.layers)  # layers the forward never applies exchange nothing
        self.forecaster: ForecastRecorder | None = None  # set by record_forecasts
        # monotonic steps: the last step written or buffered per table (metrics: per split, with its names)
        self._rewind = rewind_on_resume
        self._reset_last_steps()
        self._since_flush = 0
        self._closed = False
        self._flushed_upper = self._max_part()
        _track_open(self)

    # -- bookkeeping

    def _reset_last_steps(self) -> None:
        last = self.writer.last_steps()
        self._last = {"gammas": last["gammas"], "grads": last["grads"]}
        self._last_metric: dict[str, tuple[int, set[str]]] = {}
        if last["metrics"] is not None:
            from .reader import _read_table

            df = _read_table(self.writer.path, "metrics")
            for split, sub in df.groupby("split"):
                top = int(sub["step"].max())
                self._last_metric[str(split)] = (top, set(sub.loc[sub["step"] == top, "name"].astype(str)))
        self._any_last = max([v for v in last.values() if v is not None], default=None)

    def _max_part(self) -> int:
        tops = [int(p.stem.split("-")[1]) for t in ("gammas", "exchange", "metrics", "grads", "forecasts")
                for p in (self.writer.path / t).glob("part-*.parquet")]
        return max(tops, default=0)

    def _check_step(self, table: str, step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ObserveError(f"step must be an integer >= 0, got {step!r}")
        step = int(step)
        if self._closed:
            raise ObserveError(f"this observer of {self.writer.path} is closed")
        if self._rewind:  # the first step after a resume: a loop that restarted from an earlier checkpoint
            self._rewind = False
            if self._any_last is not None and step <= self._any_last:
                dropped = self.writer.truncate(step)
                self.writer.manifest.setdefault("rewinds", []).append({"step": step, "dropped_rows": dropped})
                self.writer.write_manifest()
                log.info("resumed %s at step %d: dropped %d rows logged at or after it", self.writer.path, step, dropped)
                self._reset_last_steps()
        last = self._last.get(table)
        if last is not None and step <= last:
            raise ObserveError(f"{table} of step {step} cannot be logged: step {last} is logged already (steps must "
                               "increase; to continue a killed loop from an earlier step, reopen with resume=True)")
        return step

    def _after_log(self, step: int) -> None:
        self._any_last = step if self._any_last is None else max(self._any_last, step)
        self._since_flush += 1
        if self.flush_every is not None and self._since_flush >= self.flush_every:
            self.flush()

    # -- logging

    def _gather(self, tensors: list[torch.Tensor]) -> np.ndarray:
        # one device-to-host copy for everything: no sync per layer
        return torch.cat([t.detach().reshape(-1).float() for t in tensors]).cpu().numpy()

    def sources(self, gamma: np.ndarray) -> np.ndarray:
        """int32 source per row (the ``exchange`` table's) for the gathered gammas of all layers."""
        if isinstance(self.exchange, _CallableExchange):
            return np.concatenate([
                self.exchange.sources(i, gamma[rows].reshape(la.num_branches, la.num_channels), self.threshold).ravel()
                for i, (la, rows) in enumerate(zip(self.layers, self._rows))]).astype(np.int32)
        keep = np.abs(gamma) >= np.float32(self.threshold)  # float32, as exchange_keep compares
        for i, (la, rows) in enumerate(zip(self.layers, self._rows)):
            own = self.exchange.keep(i, gamma[rows].reshape(la.num_branches, la.num_channels), self.threshold)
            if own is not None:
                keep[rows] = np.asarray(own).ravel()
        return np.where(keep, self.branch_col, self.donor).astype(np.int32)

    def log_state(self, step: int, epoch: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Log gammas, betas and the exchange map of the model now, as state ``step``.

        Returns the gathered gammas (float32, one per row) and the exchanged flags.
        """
        step = self._check_step("gammas", step)
        flat = self._gather(self._gamma_tensors + self._beta_tensors)
        half = flat.size // 2
        gamma, beta = flat[:half], flat[half:]
        source = self.sources(gamma)
        self._unapplied(step, source)
        exchanged = source != self.branch_col
        self.divergence.gammas(step, gamma)
        self._record_bn_mode()
        self.writer.add("gammas", step=step, epoch=epoch, **self.ids, gamma=gamma, beta=beta, penalised=self.penalised)
        self.writer.add("exchange", step=step, **self.ids, exchanged=exchanged, source=source)
        if self._tb is not None:  # from the arrays already on the host: no other device copy
            self._tb.state(step, gamma, exchanged)
        if self.forecaster is not None:
            self.forecaster.state(step, gamma)
        self._last["gammas"] = step
        self._after_log(step)
        return gamma, exchanged

    def record_forecasts(self, rates: np.ndarray, every: int, lam: float | None = None) -> ForecastRecorder:
        """Record the exchange forecast (``cen_lab.runs.forecast_model``) every ``every`` steps from here on;
        ``rates``: the learning rate of every step of the budget (its length is the budget)."""
        if every < 1:
            raise ObserveError(f"the forecast's cadence must be >= 1 step, got {every!r}")
        self.forecaster = ForecastRecorder(self.writer, self.penalised, pd.factorize(self.ids["layer"])[0], rates,
                                           self.threshold, every, lam=lam, sink=self._tb)
        return self.forecaster

    def _unapplied(self, step: int, source: np.ndarray) -> None:
        """Rows of layers the forward did not apply since the last logged step keep their own branch, and the
        manifest lists those layers (``ForwardWatch.keep_unapplied``, which warns once a layer)."""
        if self._watch.keep_unapplied(step, source, self.branch_col, self._rows, str(self.writer.path)):
            self.writer.manifest["unapplied_layers"] = dict(self._watch.unapplied)

    def _record_bn_mode(self) -> None:
        """``manifest["bn_mode"]``: how the observed BatchNorms ran at the logged steps (``"train"``, ``"eval"``,
        or ``"mixed"``), the default of the Theorem 1 check's ``bn_mode``."""
        modes = {m.training for la in self.layers for m in la.modules}
        mode = "mixed" if len(modes) > 1 else ("train" if modes.pop() else "eval")
        seen = self.writer.manifest.get("bn_mode")
        self.writer.manifest["bn_mode"] = mode if seen in (None, mode) else "mixed"

    def log_metrics(self, step: int, values: Mapping[str, Any], split: str = "train", epoch: int = -1) -> None:
        """Log named numbers at ``step`` (``split`` ``"train"`` or ``"val"``); every value must be finite, and a
        name is logged once per step and split. Nothing is logged when any value is bad."""
        if split not in ("train", "val"):
            raise ObserveError(f"split must be 'train' or 'val', got {split!r}")
        checked = _finite_metrics(values, self.allow_nan_metrics)
        step = self._check_step("metrics", step)
        last, names = self._last_metric.get(split, (None, set()))
        if last is not None and step < last:
            raise ObserveError(f"{split} metrics of step {step} cannot be logged after step {last} (steps must not "
                               "go backwards)")
        if last == step and names & set(checked):
            raise ObserveError(f"{split} metrics {sorted(names & set(checked))} are logged already at step {step}")
        if not checked:
            return
        self._any_last = step if self._any_last is None else max(self._any_last, step)
        self.writer.add("metrics", step=step, epoch=epoch, split=split, name=np.array(list(checked), dtype=object),
                        value=np.array(list(checked.values()), np.float64))
        self._last_metric[split] = (step, (names if last == step else set()) | set(checked))
        self.divergence.metrics(step, split, checked)
        if self._tb is not None:
            self._tb.metrics(step, split, checked)

    def log(self, step: int, metrics: Mapping[str, Any] | None = None, *, epoch: int = -1,
            split: str = "train") -> None:
        """Log the state (gammas, betas, exchange map) at ``step`` and, optionally, metrics of that step.

        Metrics are checked first: a bad value raises before anything of the step is logged.
        """
        _finite_metrics(metrics, self.allow_nan_metrics)
        self.log_state(step, epoch)
        if metrics:
            self.log_metrics(step, metrics, split, epoch)

    def grad_norms(self):
        """Context manager: hooks that record ``||dL/dx'||`` ``[M, C]`` per layer during the next backward
        (``cen_lab.network.hooks.record_bn_output_grad_norms``); yields the dict that ``log_grads`` takes."""
        return record_bn_output_grad_norms(self._hook_points)

    def log_grads(self, step: int, dxprime: Mapping[str, torch.Tensor], scale: float | None = None) -> None:
        """Log ``dL/dgamma`` (the gammas' ``.grad`` now; 0 where None) and ``||dL/dx'||`` (NaN for a layer whose
        backward did not arrive) as the gradients of state ``step``.

        ``scale``: the loss scale the backward ran under (a ``GradScaler``'s), divided out so that the true
        gradients are logged. A step whose gradients are then not finite is one the scaler skips: nothing of it is
        logged, and ``manifest["grad_steps_skipped"]`` lists it."""
        step = self._check_step("grads", step)
        grads = [g.grad if g.grad is not None else torch.zeros_like(g) for g in self._gamma_tensors]
        norms = [dxprime.get(la.name, torch.full((la.num_branches, la.num_channels), float("nan"),
                                                 device=la.modules[0].weight.device)) for la in self.layers]
        flat = self._gather(grads + norms)
        half = flat.size // 2
        if scale is not None:
            # as GradScaler.unscale_ does: times the fp32 reciprocal of the scale (exact for its powers of two)
            flat = flat * np.float32(1.0 / np.float64(scale))
            if not np.isfinite(flat[:half]).all():
                skipped = self.writer.manifest.setdefault("grad_steps_skipped", [])
                if not skipped:
                    warnings.warn(f"{self.writer.path}: step {step}'s gradients are not finite under the loss scale "
                                  f"{scale:g}, so the GradScaler skips that step; its gradients are not logged (every "
                                  "such step is listed in manifest['grad_steps_skipped'])", stacklevel=4)
                skipped.append(int(step))
                return
        self.writer.add("grads", step=step, **self.ids, dgamma=flat[:half], dxprime_norm=flat[half:])
        if self._tb is not None:
            self._tb.grads(step, flat[:half], flat[half:])
        self._last["grads"] = step
        self._after_log(step)

    @contextlib.contextmanager
    def grads(self, step: int, scaler: Any = None) -> Iterator[dict[str, torch.Tensor]]:
        """Wrap the forward and backward of ``step``: on exit, log ``dL/dgamma`` (the ``.grad`` as the block
        leaves it, so back-propagate the data loss inside and add any penalty gradient after the block to log
        the data-loss gradient) and ``||dL/dx'||`` of that backward. Nothing is logged when the block raises.

        With mixed precision, pass the ``torch.amp.GradScaler`` whose ``scaler.scale(loss).backward()`` runs in
        the block: the gradients are then multiplied by its scale, which is divided out before logging, and a step
        it will skip (gradients not finite) is not logged as data (see ``log_grads``)."""
        self._check_step("grads", step)
        with self.grad_norms() as norms:
            yield norms
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None
        self.log_grads(step, norms, scale)

    # -- ending

    def flush(self) -> None:
        """Write the buffered rows as Parquet parts now (also every ``flush_every`` logged steps and at close)."""
        if not self.writer.pending():
            return
        upper = max(self._any_last + 1, self._flushed_upper + 1)
        self.writer.flush(upper)
        self._flushed_upper = upper
        self.writer.manifest["last_step"] = self._any_last  # the last step on disk (cen_lab.train sets its own)
        self.writer.write_manifest()
        self._since_flush = 0

    def close(self, status: str = "complete", error: str | None = None) -> None:
        """Flush, record the final ``status`` (``complete``, ``incomplete`` or ``failed``) and release the run's
        lock. When the rows cannot be written (a full disk), the manifest says ``failed`` if it still can be
        written, and the write error is raised."""
        if self._closed:
            return
        if status not in ("complete", "incomplete", "failed"):
            raise ObserveError(f"status must be 'complete', 'incomplete' or 'failed', got {status!r}")
        from .writer import _now

        try:
            try:
                self.flush()
            except OSError as e:
                self.writer.manifest.update(status="failed", error=error or f"{type(e).__name__}: {e}", ended_at=_now())
                with contextlib.suppress(OSError):  # the flush's error is the one to see
                    self.writer.write_manifest()
                raise
            self.writer.manifest.update(status=status, error=error, ended_at=_now())
            self.writer.write_manifest()
        finally:
            self._closed = True
            self._watch.remove()
            untrack(self)
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> "Observer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("complete")
        else:
            try:
                self.close("failed", error=f"{exc_type.__name__}: {exc}")
            except Exception:  # never hide the user's error behind a logging failure
                log.exception("could not record the failure in %s", self.writer.path)

    def __repr__(self) -> str:
        return (f"Observer({str(self.writer.path)!r}, layers={len(self.layers)}, M={self.layers[0].num_branches}, "
                f"threshold={self.threshold})")
