"""A PyTorch Lightning callback that observes a ``LightningModule``'s CEN during ``Trainer.fit``.

::

    from cen_lab.integrations.lightning import CENObserver

    cb = CENObserver("runs/mine", submodule="net", layers="*.bn2", penalised="alternate-halves", lam=1.2e-2,
                     modality_names=["rgb", "depth"], grads_every=25)
    trainer = lightning.Trainer(max_steps=1000, callbacks=[cb])
    trainer.fit(module)                       # later: trainer.fit(module, ckpt_path=...) resumes the same run

What it does at each training batch, with ``s = trainer.global_step`` (the optimizer steps taken so far, so the
state before this batch's update, as in ``cen_lab.observe``'s loop):

1. every ``log_every`` steps, the gammas, betas and the exchange map of state ``s``;
2. every ``grads_every`` steps, ``dL/dgamma`` and ``||dL/dx'||`` of the backward of the loss ``training_step``
   returns (hooks around that forward and backward);
3. with ``lam``, the L1 penalty ``lam * sign(gamma)`` on the penalised gammas, added to their gradients after the
   backward: ``training_step`` returns the *data* loss, and the logged ``dL/dgamma`` is the data loss's, as in the
   plain loop (``lam`` is the weight per step; the reference's lamda counted once per output is
   ``(M + 1) * lamda``). Without ``lam`` the callback adds no penalty and logs ``.grad`` as the returned loss
   leaves it;
4. after the step, the returned loss as the metric ``loss/total`` (every other metric with ``log_metrics``).

A fit resumed from a Lightning checkpoint (``ckpt_path=...``) reopens the run and drops its rows from the first
step logged again, so no step is duplicated; rows are flushed whenever Lightning saves a checkpoint. A fit that
raises leaves the run with status ``failed``. Under several processes only rank 0 (or ``rank``) writes. One
optimizer step per batch is assumed (no gradient accumulation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

try:
    import lightning.pytorch as pl
except ImportError as e:  # the optional extra
    raise ImportError("cen_lab.integrations.lightning needs the lightning package: pip install -e \".[lightning]\"") from e

from ..errors import ObserveError
from ..network.penalty import add_l1_subgradient
from ..runs.attach import IdleObserver, observe

__all__ = ["CENObserver"]


class CENObserver(pl.Callback):
    """Observe the CEN of a ``LightningModule`` in ``Trainer.fit`` (see the module docstring).

    Parameters
    ----------
    out_dir : str or Path
        The run directory.
    submodule : str, optional
        The attribute of the ``LightningModule`` that holds the CEN (``"net"``); its layer names are then the same
        as when that model is observed in a plain loop. Default: the module itself (names prefixed by the
        attribute path).
    layers, threshold, penalised, exchange, modality_names
        As for ``cen_lab.observe``.
    lam : float, optional
        The L1 weight per step that the callback applies to the penalised gammas (step 3 of the module
        docstring); recorded in the manifest. None: no penalty from the callback.
    log_every : int
        Steps between logged states (and metrics).
    grads_every : int
        Steps between logged gradients; 0 for none.
    overwrite : bool
        Replace a run in ``out_dir`` when the fit starts fresh (a resumed fit reopens it instead).
    flush_every, rank
        As for ``cen_lab.observe``.
    lr : float, sequence or callable, optional
        The learning rate of every step (one rate, every step's, or a function step -> rate, e.g. your scheduler's
        formula): with ``Trainer(max_steps=...)``, the run records the exchange forecast (``cen_lab.forecast``)
        every ``forecast_every`` steps (0: about 50 over the fit), as ``cen_lab.observe``'s ``lr``.
    """

    def __init__(self, out_dir: str | Path, *, submodule: str | None = None, layers: Any = None,
                 threshold: float = 2e-2, penalised: str | Mapping[str, Any] | None = None,
                 exchange: str = "mean", modality_names: Sequence[str] | None = None, lam: float | None = None,
                 log_every: int = 1, grads_every: int = 0, overwrite: bool = False, flush_every: int = 50,
                 rank: int = 0, lr: Any = None, forecast_every: int = 0):
        if log_every < 1 or grads_every < 0:
            raise ObserveError(f"log_every must be >= 1 and grads_every >= 0, got {log_every}, {grads_every}")
        if lam is not None and not lam >= 0:
            raise ObserveError(f"lam must be >= 0 or None, got {lam!r}")
        self.out_dir, self.submodule = Path(out_dir), submodule
        self.settings = dict(layers=layers, threshold=threshold, penalised=penalised, exchange=exchange,
                             modality_names=modality_names, lam=lam, flush_every=flush_every, rank=rank,
                             lr=lr, forecast_every=forecast_every)
        self.lam, self.log_every, self.grads_every, self.overwrite = lam, log_every, grads_every, overwrite
        self.observer = None
        self._grads = None  # the open obs.grads(step) block of this batch
        self._step = 0

    # -- the fit's start and end

    def _model(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        if self.submodule is None:
            return pl_module
        model = pl_module
        for part in self.submodule.split("."):
            if not hasattr(model, part):
                raise ObserveError(f"CENObserver(submodule={self.submodule!r}): {type(pl_module).__name__} has no "
                                   f"attribute {part!r}")
            model = getattr(model, part)
        return model

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resume = trainer.ckpt_path is not None and (self.out_dir / "manifest.json").is_file()
        if self.settings["lr"] is not None and not (trainer.max_steps and trainer.max_steps > 0):
            raise ObserveError("CENObserver(lr=...) forecasts the exchange at the end of the fit: give the Trainer "
                               "max_steps (the budget), or leave lr out")
        self.observer = observe(self._model(pl_module), self.out_dir, total_steps=trainer.max_steps
                                if trainer.max_steps and trainer.max_steps > 0 else None, resume=resume,
                                overwrite=self.overwrite and not resume, **self.settings)
        obs = self.observer
        if not isinstance(obs, IdleObserver):
            gammas = [g for la in obs.layers for g in la.gammas()]
            masks = [torch.as_tensor(mask[b] if not la.stacked else mask, device=g.device)
                     for la, mask in zip(obs.layers, obs.penalised_masks)
                     for b, g in enumerate(la.gammas())]
            self._penalty = (gammas, masks)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.observer is not None:
            self.observer.close("complete" if not trainer.interrupted else "incomplete")
            self.observer = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._grads is not None:  # remove the gradient hooks of the interrupted batch
            self._grads.__exit__(type(exception), exception, exception.__traceback__)
            self._grads = None
        if self.observer is not None:
            self.observer.close("failed", error=f"{type(exception).__name__}: {exception}")
            self.observer = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.observer is not None:
            self.observer.flush()  # what a resume from this checkpoint keeps is on disk

    # -- each batch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        obs, s = self.observer, trainer.global_step
        self._step = s
        if obs is None:
            return
        if s % self.log_every == 0:
            obs.log_state(s)
        if self.grads_every and s % self.grads_every == 0:
            self._grads = obs.grads(s)
            self._grads.__enter__()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._grads is not None:  # the returned loss's gradients, before the penalty
            self._grads.__exit__(None, None, None)
            self._grads = None
        if self.lam and self.observer is not None and not isinstance(self.observer, IdleObserver):
            add_l1_subgradient(*self._penalty, self.lam)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        obs, s = self.observer, self._step
        if obs is None or s % self.log_every:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            obs.log_metrics(s, {"loss/total": float(loss.detach())})
