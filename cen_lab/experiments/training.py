"""Training loop with run logging, checkpoints and resume.

One training step at state ``s`` (the model after ``s`` updates):

1. every ``log.every`` steps: record gammas, betas and the exchange map of state ``s``; every
   ``log.eval_every`` steps: evaluate on the validation split;
2. forward the minibatch (under bfloat16 autocast with ``train.precision = "bf16"``, see ``cen_lab.experiments.precision``),
   data loss ``L = sum_t w_t (sum_m loss_t(pred_tm) + loss_t(ensemble_t))`` over tasks t (one task:
   ``sum_m CE(logits_m) + CE(ensemble)``; each output has its own loss, as in the reference code; the ensemble
   loss only trains alpha because the branch logits are detached; ``w_t`` is ``train.task_weights``, loss_t as
   in ``cen_lab.network.tasks``);
3. backward of ``L`` alone; at logging steps record the train losses, and with ``log.grads`` the data-loss
   gradients ``dL/dgamma`` and ``||dL/dx'||`` of state ``s``;
4. the L1 penalty on the penalised gammas: ``lam * sign(gamma)`` added to their gradients (subgradient rule),
   or soft-thresholding after the optimizer step (proximal rule); see ``cen_lab.network.penalty``;
5. the optimizer step gives state ``s + 1``; every ``train.ckpt_every`` steps the buffered rows are flushed
   and a checkpoint written.

Determinism: on the CPU the same config gives the same logs bit for bit (initialisation from
``torch.manual_seed(seed)``, batch order from ``numpy.random.default_rng((seed, epoch))``, no other
randomness). CUDA kernels are not all deterministic, so runs on a GPU may differ in the last bits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._util.malloc import keep_freed_memory
from .._util.progress import progress_bar
from ..config import ExperimentConfig
from ..errors import ConfigError, NonFiniteLossError, RunExistsError
from ..network.architectures import CENNet, build_model
from ..network.penalty import add_l1_subgradient, apply_l1_proximal
from ..network.patchgan import adversarial_backward, attach_discriminator
from ..network.tasks import load_task_data, resolve_tasks, task_loss, task_targets
from ..network.tasks import TaskMetrics  # noqa: F401  (importable from here, as before)
from ..runs.exchange_maps import CENExchange, ExchangeMap  # noqa: F401
from ..runs.forecast_model import auto_cadence
from ..runs.lock import RunLock
from ..runs.observer import BNLayer, Observer
from ..runs.reader import Run, load_run
from ..runs.writer import RunWriter
from .evaluation import evaluate, prediction_names
from .precision import autocast, bf16_native

log = logging.getLogger(__name__)

__all__ = ["train", "resolve_device", "evaluate", "data_losses", "task_losses", "prediction_names",
           "forward_backward", "penalised_update", "step_lam", "lr_at", "lr_rates"]


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` -> a device; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but no CUDA device is available; use 'cpu' or 'auto'")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    return torch.device(name)


def _make_optimizer(model: CENNet, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    t = cfg.train
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 4]  # conv kernels only
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.Adam(groups, lr=t.lr)


def data_losses(logits: torch.Tensor, ensemble: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-branch and ensemble cross-entropy of one classification/segmentation task.

    Returns ``(branch [M], ensemble [])``; the data loss is ``branch.sum() + ensemble``.
    """
    branch = torch.stack([F.cross_entropy(logits[m], y) for m in range(logits.shape[0])])
    return branch, F.cross_entropy(ensemble, y)


def task_losses(outs: dict, targets: dict[str, torch.Tensor],
                weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted data loss of ``CENNet.forward_tasks`` outputs and each task's losses.

    Returns ``(total [], {task: [M + 1] losses of the branches then the ensemble}``.
    """
    total, per_task = None, {}
    for task, out in outs.items():
        y = targets[task]
        losses = torch.stack([task_loss(task, p, y) for p in out.logits] + [task_loss(task, out.ensemble, y)])
        per_task[task] = losses
        term = losses.sum() * (1.0 if weights is None else weights[task])
        total = term if total is None else total + term
    return total, per_task


def _observer(model: CENNet, writer: RunWriter, threshold: float) -> Observer:
    """The run's observer: every CEN layer, its penalty mask and its exchange rule; rows are flushed at the
    checkpoints (``RunWriter.checkpoint``), not by the observer."""
    layers = [BNLayer(name, (bn,)) for name, bn in model.cen_layers()]
    masks = [bn.penalty_mask.cpu().numpy() for _, bn in model.cen_layers()]
    return Observer(layers, writer, threshold=threshold, penalised=masks, exchange=CENExchange(model),
                    tasks=model.grid.tasks, flush_every=None, allow_nan_metrics=True)  # NaN: a metric undefined


def _exchange_ratio(obs: Observer, exchanged: np.ndarray) -> float:
    """Portion of the channels of exchanging layers that are exchanged (0 when no layer exchanges)."""
    exchanging = obs.donor != obs.branch_col  # rows of the layers that exchange at all (their mode is not "none")
    return float(exchanged[exchanging].mean()) if exchanging.any() else 0.0


def forward_backward(model: CENNet, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
                     yb: torch.Tensor | dict[str, torch.Tensor], weights: dict[str, float] | None = None,
                     precision: str = "fp32", gan_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward a minibatch and back-propagate the data loss (no penalty yet).

    ``yb``: the targets of a single-task model, or task -> targets. ``precision``: ``"bf16"`` runs the forward
    pass under bfloat16 autocast (``cen_lab.experiments.precision``). Returns the detached data loss and, per task, the
    ``[M + 1]`` losses of the branches and the ensemble (see ``task_losses``); with ``gan_weight > 0`` also the
    adversarial terms under ``"_adversarial"`` (``cen_lab.network.patchgan.adversarial_backward``).
    """
    targets = yb if isinstance(yb, dict) else {model.task: yb}
    with autocast(xb.device, precision):
        outs = model.forward_tasks(xb)
        loss, per_task = task_losses(outs, targets, weights)
    optimizer.zero_grad(set_to_none=True)
    if gan_weight > 0:
        per_task["_adversarial"] = adversarial_backward(model, xb, outs, targets, loss, gan_weight)
    else:
        loss.backward()
    return loss.detach(), per_task


def lr_at(tcfg, step: int) -> float:
    """The learning rate of training step ``step`` (0-based) under ``tcfg.lr_schedule``: ``lr`` throughout
    (``"constant"``), or ``lr * (1 + cos(pi * step / steps)) / 2`` (``"cosine"``, from ``lr`` to near 0 at the
    last step). A function of the step alone, so a resumed run sets the same rates as an uninterrupted one."""
    if tcfg.lr_schedule == "cosine":
        return tcfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / tcfg.steps))
    return tcfg.lr


def lr_rates(tcfg, start: int = 0, stop: int | None = None) -> np.ndarray:
    """``lr_at`` of every step from ``start`` to ``stop`` (default: ``tcfg.steps``) as an array."""
    return np.array([lr_at(tcfg, s) for s in range(start, tcfg.steps if stop is None else stop)], dtype=np.float64)


def penalised_update(optimizer: torch.optim.Optimizer, weights: list[torch.Tensor], masks: list[torch.Tensor],
                     tcfg, lam: float | None = None, step: int | None = None) -> None:
    """The L1 penalty on the masked gammas (subgradient before, or proximal after the step) and the step.
    ``lam`` is the weight per step (``step_lam``; default ``tcfg.lam``); ``step`` sets the learning rate of that
    step (``lr_at``) on every parameter group; None leaves the optimiser's rates as they are."""
    lam = tcfg.lam if lam is None else lam
    lr = tcfg.lr
    if step is not None:
        lr = lr_at(tcfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
    if tcfg.l1_rule == "subgradient" and lam > 0:
        add_l1_subgradient(weights, masks, lam)
    optimizer.step()
    if tcfg.l1_rule == "proximal" and lam > 0:
        apply_l1_proximal(weights, masks, lr * lam)


def step_lam(tcfg, n_outputs: int) -> float:
    """The L1 weight of one training step: ``lam``, or ``n_outputs * lam`` with ``l1_per_output`` (the reference
    code adds the penalty inside its loop over the M branch predictions and the ensemble: M + 1 times)."""
    return tcfg.lam * (n_outputs if tcfg.l1_per_output else 1)


def train(config: ExperimentConfig, out_dir: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, stop_at: int | None = None) -> Run:
    """Train a CEN as ``config`` describes and log it to a run directory.

    Parameters
    ----------
    config : ExperimentConfig
    out_dir : str or Path, optional
        The run directory; default ``runs/<config.name>``.
    resume : bool
        Continue the incomplete run in ``out_dir`` from its latest checkpoint (the result equals an
        uninterrupted run); on a complete run with the same config, just load it.
    overwrite : bool
        Replace a run already in ``out_dir`` (never a folder that is not a cen_lab run).
    progress : bool
        Show a tqdm progress bar (notebook-aware).
    stop_at : int, optional
        Stop cleanly after this many steps, with a checkpoint there and status ``"incomplete"``; continue
        later with ``resume=True``.

    Returns
    -------
    Run
        The loaded run directory.

    Notes
    -----
    On Linux with glibc, the first call raises the process's malloc trim and mmap thresholds, so that large
    activations freed at the end of a step are reused rather than returned to the OS and faulted in again
    (``cen_lab._util.malloc``; ``CEN_LAB_MALLOC_TUNING=0`` turns this off). Results do not depend on it.

    Raises
    ------
    RunExistsError
        ``out_dir`` holds a different run, or this run without ``resume``/``overwrite``.
    RunLockedError
        Another process is writing ``out_dir`` (nothing is written).
    RunWriteError
        A run file could not be written (disk full, read-only, size limit); the message names it, the status is
        ``"failed"`` when the manifest can still be written, and ``resume=True`` continues once space is back.
    NonFiniteLossError
        The data loss became NaN or infinite; rows logged before are kept and the status is ``"failed"``.
    """
    cfg = config
    out = Path(out_dir) if out_dir is not None else Path("runs") / cfg.name
    if stop_at is not None and not 0 < stop_at <= cfg.train.steps:
        raise ValueError(f"stop_at must be in 1..train.steps={cfg.train.steps}, got {stop_at}")
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"{out} exists and is not a directory")
    with RunLock(out):  # one writer per run directory (cen_lab.runs.lock); the OS releases it if this process dies
        return _train(cfg, out, resume, overwrite, progress, stop_at)


def _train(cfg: ExperimentConfig, out: Path, resume: bool, overwrite: bool, progress: bool,
           stop_at: int | None) -> Run:
    """``train`` with the run's lock held."""
    action, out = RunWriter.prepare(out, cfg, resume=resume, overwrite=overwrite)
    if action == "done":
        log.info("%s is already complete; loading it", out)
        return load_run(out)

    keep_freed_memory()  # no page-fault churn on large activations (glibc; see cen_lab._util.malloc)
    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "bf16" and not bf16_native(device):
        log.warning("train.precision='bf16' on %s without native bfloat16: it runs emulated, slower than fp32",
                    device)
    ds, tasks, (x, y), (xv, yv) = _load_splits(cfg, device)
    n_train, bs = x.shape[1], cfg.train.batch_size
    if bs > n_train:
        raise ConfigError(f"train.batch_size={bs} exceeds the {n_train} training samples of data.source={cfg.data.source!r}")
    steps_per_epoch = n_train // bs  # the last partial batch of an epoch is dropped, as in the reference

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, x.shape[0], x.shape[2], ds.num_classes, tasks, cfg.train.sparsity)
    attach_discriminator(model, x.shape[2], cfg.train.gan_weight)  # train.gan_weight > 0 only
    early = cfg.model.fusion == "early"
    streams = ["+".join(ds.modalities)] if early else list(ds.modalities)  # what the tables' modality indexes
    outputs = streams if model.outputs > 1 else ["fused" if len(ds.modalities) > 1 else streams[0]]  # per task
    names = prediction_names(tasks, outputs)  # task -> its predictions' names in the metrics
    task_weights = dict(zip(tasks, cfg.train.task_weights or [1.0] * len(tasks)))
    model.to(device).train()
    optimizer = _make_optimizer(model, cfg)
    masks = [bn.penalty_mask for _, bn in model.cen_layers()]
    weights = [bn.weight for _, bn in model.cen_layers()]
    n_outputs = sum(len(names[t]) for t in tasks)  # every prediction whose loss is summed: branches + ensembles
    lam, thr = step_lam(cfg.train, n_outputs), cfg.model.threshold

    stream_names = prediction_names(tasks, streams)  # branch (m, t) is named like a prediction of stream m
    n_tasks = len(tasks)
    branches = [{"name": stream_names[tasks[b % n_tasks]][b // n_tasks], "modality": b // n_tasks, "task": b % n_tasks}
                for b in range(model.grid.size)]
    info = {"modalities": streams, "input_modalities": list(ds.modalities), "tasks": list(tasks),
            "branches": branches, "exchange_between": model.grid.between,
            "outputs": [n for t in tasks for n in names[t][:-1]], "ensembles": [names[t][-1] for t in tasks],
            "class_names": list(ds.class_names), "task": ds.task,
            "num_classes": ds.num_classes, "in_channels": int(x.shape[2]), "device": str(device),
            "layers": [name for name, _ in model.cen_layers()], "n_train": n_train, "n_val": int(xv.shape[1]),
            "steps_per_epoch": steps_per_epoch, "lam_per_step": lam,
            "data": ds.manifest.get("seen")}  # which scenes each split was (cen_lab.data.load_data)
    if cfg.train.init_from is not None:
        info["init_from"] = str(Path(cfg.train.init_from).resolve())
    writer, ckpt = RunWriter.reopen(out, cfg) if action == "resume" else (RunWriter.create(out, cfg, info), None)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    elif cfg.train.init_from is not None:  # a new run, or one resumed before its first checkpoint
        _load_initial_weights(model, cfg.train.init_from)
    start = ckpt["step"] if ckpt is not None else 0
    logger = _observer(model, writer, thr)
    if cfg.log.forecast_every != -1 and lam > 0:  # the exchange forecast as the run goes (cen_lab.forecast)
        logger.record_forecasts(lr_rates(cfg.train), cfg.log.forecast_every or auto_cadence(cfg.train.steps, cfg.log.every),
                                lam)
    end = stop_at if stop_at is not None else cfg.train.steps
    perm_epoch, perm = -1, None

    bar = _progress_bar(total=end, initial=start, desc=f"train {cfg.name}", unit="step", disable=not progress)
    s = start
    clock = time.perf_counter()
    try:
        for s in range(start, end):
            epoch = s // steps_per_epoch
            if epoch != perm_epoch:
                perm = torch.from_numpy(np.random.default_rng((cfg.seed, epoch)).permutation(n_train)).to(device)
                perm_epoch = epoch
            j = s % steps_per_epoch
            idx = perm[j * bs:(j + 1) * bs]
            xb, yb = x[:, idx], {t: target[idx] for t, target in y.items()}

            logging_step = s % cfg.log.every == 0
            if logging_step:
                gamma, exchanged = logger.log_state(s, epoch)
            if s % cfg.log.eval_every == 0:
                logger.log_metrics(s, evaluate(model, xv, yv, outputs, ds.num_classes), "val", epoch)

            observe = logger.grad_norms() if (logging_step and cfg.log.grads) else contextlib.nullcontext({})
            with observe as dxprime:
                loss, per_task = forward_backward(model, optimizer, xb, yb, task_weights, cfg.train.precision,
                                                  cfg.train.gan_weight)
            loss_value = float(loss)  # one host sync per step, to stop at the first non-finite loss
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"data loss is {loss_value} at step {s} (epoch {epoch}); everything logged before is kept in "
                    f"{out}. Lower train.lr or train.lam, or check the data."
                )
            if logging_step:
                alpha = torch.softmax(model.alpha.detach(), 1).cpu().tolist()  # [T][M]
                pen_g = np.abs(gamma[logger.penalised])  # the gammas are unchanged since logger.state
                penalty = lam * float(pen_g.sum(dtype=np.float64))  # l1_penalty, without another pass on device
                values = {}
                for i, t in enumerate(tasks):
                    values.update({f"loss/{n}": v for n, v in zip(names[t], per_task[t].detach().cpu().tolist())})
                    values.update({f"alpha/{n}": a for n, a in zip(names[t], alpha[i])})
                values.update({"loss/total": loss_value, "penalty": penalty})
                values.update({k: float(v) for k, v in per_task.get("_adversarial", {}).items()})
                values["sparsity/below_threshold"] = float((pen_g < thr).mean()) if pen_g.size else float("nan")
                values["exchange/ratio"] = _exchange_ratio(logger, exchanged)
                logger.log_metrics(s, values, "train", epoch)
                if cfg.log.grads:
                    logger.log_grads(s, dxprime)
                bar.set_postfix(loss=f"{loss_value:.3f}", below_thr=f"{values['sparsity/below_threshold']:.2f}", refresh=False)

            penalised_update(optimizer, weights, masks, cfg.train, lam, step=s)
            bar.update(1)

            done = s + 1
            if done % cfg.train.ckpt_every == 0 and done < end:
                writer.checkpoint(done, model, optimizer)
        s = end
        final_epoch = (end - 1) // steps_per_epoch if end > 0 else 0
        if end == cfg.train.steps:  # the final state is logged and evaluated once more
            logger.log_state(end, final_epoch)
            logger.log_metrics(end, evaluate(model, xv, yv, outputs, ds.num_classes), "val", final_epoch)
            writer.flush(upper=end + 1)
            _add_seconds(writer, clock, logger)
            writer.checkpoint(end, model, optimizer)
            writer.finish("complete", end)
        else:
            _add_seconds(writer, clock, logger)
            writer.checkpoint(end, model, optimizer)
    except BaseException as e:
        bar.close()
        try:
            writer.finish("failed", s, error=f"{type(e).__name__}: {e}")
        except Exception:  # never hide the original error behind a logging failure
            log.exception("could not record the failure in %s", out)
        raise
    bar.close()
    return load_run(out)


def _add_seconds(writer: RunWriter, clock: float, logger: Observer) -> None:
    """The manifest's ``train_seconds`` (the loop's wall time) and ``forecast_seconds`` (the forecasts' share of
    it), summed over resumed parts."""
    m = writer.manifest
    m["train_seconds"] = m.get("train_seconds", 0.0) + time.perf_counter() - clock
    if logger.forecaster is not None:
        m["forecast_seconds"] = m.get("forecast_seconds", 0.0) + logger.forecaster.seconds


def _load_splits(cfg: ExperimentConfig, device: torch.device):
    """The dataset (input modalities only), the resolved tasks, and ``(x, targets)`` of the train and validation
    splits on ``device``: ``x`` ``[M, N, C, H, W]`` (``[1, N, sum C, H, W]`` for early fusion), targets a dict
    task -> tensor."""
    full, ds = load_task_data(cfg.data)
    tasks = resolve_tasks(cfg.data.tasks, ds.task)
    splits = []
    for split in (0, 1):
        x_np, _ = ds.concatenated(split) if cfg.model.fusion == "early" else ds.stacked(split)
        targets = {t: torch.from_numpy(a).to(device) for t, a in task_targets(full, tasks, split).items()}
        splits.append((torch.from_numpy(x_np).to(device), targets))
    return ds, tasks, splits[0], splits[1]


def _load_initial_weights(model: CENNet, source: str) -> None:
    """Load model weights (not the optimizer state) from a checkpoint file or a run directory's latest one."""
    from ..errors import RunFormatError
    from ..runs.checkpoints import _checkpoint_steps, checkpoint_path, load_checkpoint

    path = Path(source)
    if path.is_dir():
        steps = _checkpoint_steps(path)
        if not steps:
            raise RunFormatError(f"train.init_from={source!r}: that run directory has no checkpoint")
        path = checkpoint_path(path, steps[-1])
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ConfigError(f"train.init_from={source!r}: its weights do not fit this model ({e})") from None


def _progress_bar(**kwargs):
    """The training bar (``cen_lab._util.progress``): kept on screen when done."""
    return progress_bar(leave=True, **kwargs)
