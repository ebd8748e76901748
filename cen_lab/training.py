"""Training loop with run logging, checkpoints and resume.

One training step at state ``s`` (the model after ``s`` updates):

1. every ``log.every`` steps: record gammas, betas and the exchange map of state ``s``; every
   ``log.eval_every`` steps: evaluate on the validation split;
2. forward the minibatch, data loss ``L = sum_m CE(logits_m) + CE(ensemble)`` (each output has its own loss,
   as in the reference code; the ensemble loss only trains alpha because the branch logits are detached);
3. backward of ``L`` alone; at logging steps record the train losses, and with ``log.grads`` the data-loss
   gradients ``dL/dgamma`` and ``||dL/dx'||`` of state ``s``;
4. the L1 penalty on the penalised gammas: ``lam * sign(gamma)`` added to their gradients (subgradient rule),
   or soft-thresholding after the optimizer step (proximal rule); see ``cen_lab.sparsity``;
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
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import ExperimentConfig
from .data import MultimodalDataset, load_data
from .errors import ConfigError, NonFiniteLossError
from .exchange import exchange_sources
from .hooks import record_bn_output_grad_norms
from .models import CENNet, build_model
from .runlog import Run, RunWriter, load_run
from .sparsity import add_l1_subgradient, apply_l1_proximal, l1_penalty

log = logging.getLogger(__name__)

__all__ = ["train", "resolve_device", "evaluate", "data_losses", "forward_backward", "penalised_update"]


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
    """Per-branch and ensemble cross-entropy.

    Returns ``(branch [M], ensemble [])``; the data loss is ``branch.sum() + ensemble``.
    """
    branch = torch.stack([F.cross_entropy(logits[m], y) for m in range(logits.shape[0])])
    return branch, F.cross_entropy(ensemble, y)


@torch.no_grad()
def evaluate(model: CENNet, x: torch.Tensor, y: torch.Tensor, modalities: list[str], num_classes: int,
             batch_size: int = 256) -> dict[str, float]:
    """Validation losses and mIoU (segmentation) or accuracy (classification) per branch and ensemble.

    mIoU averages the IoU over classes that occur in the labels or the predictions of the split.
    """
    was_training = model.training
    model.eval()
    names = list(modalities) + ["ensemble"]
    loss_sum = torch.zeros(len(names), dtype=torch.float64)
    conf = torch.zeros(len(names), num_classes, num_classes, dtype=torch.int64)
    n = x.shape[1]
    for start in range(0, n, batch_size):
        xb, yb = x[:, start:start + batch_size], y[start:start + batch_size]
        out = model(xb)
        preds = torch.cat([out.logits, out.ensemble.unsqueeze(0)])  # [M+1, N, K, ...]
        for i in range(len(names)):
            loss_sum[i] += F.cross_entropy(preds[i], yb, reduction="sum").double().cpu()
            idx = yb.flatten() * num_classes + preds[i].argmax(1).flatten()
            conf[i] += torch.bincount(idx, minlength=num_classes**2).view(num_classes, num_classes).cpu()
    model.train(was_training)
    count = y.numel()
    metrics = {}
    for i, name in enumerate(names):
        metrics[f"loss/{name}"] = float(loss_sum[i] / count)
        c = conf[i].double()
        if model.task == "seg":
            inter = c.diag()
            union = c.sum(0) + c.sum(1) - inter
            present = union > 0
            metrics[f"miou/{name}"] = float((inter[present] / union[present]).mean())
        else:
            metrics[f"accuracy/{name}"] = float(c.diag().sum() / c.sum())
    return metrics


class _Logger:
    """Turns model state into table rows with one host transfer per record (no per-layer sync)."""

    def __init__(self, model: CENNet, writer: RunWriter, cfg: ExperimentConfig):
        self.model, self.writer, self.cfg = model, writer, cfg
        self.layers = model.cen_layers()
        names, mods, chans, pen = [], [], [], []
        for name, bn in self.layers:
            m, c = bn.weight.shape
            names.append(np.full(m * c, name, dtype=object))
            mods.append(np.repeat(np.arange(m, dtype=np.int32), c))
            chans.append(np.tile(np.arange(c, dtype=np.int32), m))
            pen.append(bn.penalty_mask.cpu().numpy().ravel())
        self.layer_col = np.concatenate(names)
        self.modality_col = np.concatenate(mods)
        self.channel_col = np.concatenate(chans)
        self.penalised = np.concatenate(pen)
        self.shapes = [tuple(bn.weight.shape) for _, bn in self.layers]
        cen_blocks = [blk for b, blk in enumerate(model.blocks) if b in set(cfg.model.cen_blocks)]
        self.modes = [blk.exchange for blk in cen_blocks]
        self.ranks = [None if blk.exchange_rank is None else blk.exchange_rank.cpu() for blk in cen_blocks]
        # rows of the layers that exchange at all (their mode is not "none")
        self.exchanging = np.concatenate([np.full(m * c, mode != "none") for (m, c), mode in zip(self.shapes, self.modes)])

    def _gather(self, tensors: list[torch.Tensor]) -> np.ndarray:
        return torch.cat([t.detach().reshape(-1).float() for t in tensors]).cpu().numpy()

    def state(self, step: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Record gammas, betas and the exchange map of this state; return the gammas and the exchanged flags."""
        gamma = self._gather([bn.weight for _, bn in self.layers])
        beta = self._gather([bn.bias for _, bn in self.layers])
        w = self.writer
        w.add("gammas", step=step, epoch=epoch, layer=self.layer_col, modality=self.modality_col,
              channel=self.channel_col, gamma=gamma, beta=beta, penalised=self.penalised)
        sources, offset = [], 0
        for (m, c), mode, rank in zip(self.shapes, self.modes, self.ranks):
            g = torch.from_numpy(gamma[offset:offset + m * c].reshape(m, c))
            sources.append(exchange_sources(g, self.cfg.model.threshold, mode, rank).numpy().ravel())
            offset += m * c
        source = np.concatenate(sources).astype(np.int32)
        exchanged = source != self.modality_col
        w.add("exchange", step=step, layer=self.layer_col, modality=self.modality_col, channel=self.channel_col,
              exchanged=exchanged, source=source)
        return gamma, exchanged

    def exchange_ratio(self, exchanged: np.ndarray) -> float:
        """Portion of the channels of exchanging layers that are exchanged (0 when no layer exchanges)."""
        return float(exchanged[self.exchanging].mean()) if self.exchanging.any() else 0.0

    def grads(self, step: int, dxprime: dict[str, torch.Tensor]) -> None:
        grads = [bn.weight.grad if bn.weight.grad is not None else torch.zeros_like(bn.weight) for _, bn in self.layers]
        norms = [dxprime.get(name, torch.full_like(bn.weight, float("nan"))) for name, bn in self.layers]
        flat = self._gather(grads + norms)
        half = flat.size // 2
        self.writer.add("grads", step=step, layer=self.layer_col, modality=self.modality_col,
                        channel=self.channel_col, dgamma=flat[:half], dxprime_norm=flat[half:])

    def metrics(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        self.writer.add("metrics", step=step, epoch=epoch, split=split,
                        name=np.array(list(values), dtype=object), value=np.array(list(values.values()), np.float64))


def forward_backward(model: CENNet, optimizer: torch.optim.Optimizer, xb: torch.Tensor,
                     yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward a minibatch and back-propagate the data loss (no penalty yet).

    Returns the detached data loss and the per-branch ``[M]`` and ensemble losses.
    """
    out = model(xb)
    branch, ens = data_losses(out.logits, out.ensemble, yb)
    loss = branch.sum() + ens
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), branch, ens


def penalised_update(optimizer: torch.optim.Optimizer, weights: list[torch.Tensor], masks: list[torch.Tensor],
                     tcfg) -> None:
    """The L1 penalty on the masked gammas (subgradient before, or proximal after the step) and the step."""
    if tcfg.l1_rule == "subgradient" and tcfg.lam > 0:
        add_l1_subgradient(weights, masks, tcfg.lam)
    optimizer.step()
    if tcfg.l1_rule == "proximal" and tcfg.lam > 0:
        apply_l1_proximal(weights, masks, tcfg.lr * tcfg.lam)


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

    Raises
    ------
    RunExistsError
        ``out_dir`` holds a different run, or this run without ``resume``/``overwrite``.
    NonFiniteLossError
        The data loss became NaN or infinite; rows logged before are kept and the status is ``"failed"``.
    """
    cfg = config
    out = Path(out_dir) if out_dir is not None else Path("runs") / cfg.name
    if stop_at is not None and not 0 < stop_at <= cfg.train.steps:
        raise ValueError(f"stop_at must be in 1..train.steps={cfg.train.steps}, got {stop_at}")
    action, out = RunWriter.prepare(out, cfg, resume=resume, overwrite=overwrite)
    if action == "done":
        log.info("%s is already complete; loading it", out)
        return load_run(out)

    device = resolve_device(cfg.train.device)
    ds: MultimodalDataset = load_data(cfg.data)
    early = cfg.model.fusion == "early"
    x_np, y_np = ds.concatenated(0) if early else ds.stacked(0)
    xv_np, yv_np = ds.concatenated(1) if early else ds.stacked(1)
    n_train, bs = x_np.shape[1], cfg.train.batch_size
    if bs > n_train:
        raise ConfigError(f"train.batch_size={bs} exceeds the {n_train} training samples of data.source={cfg.data.source!r}")
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    xv, yv = torch.from_numpy(xv_np).to(device), torch.from_numpy(yv_np).to(device)
    steps_per_epoch = n_train // bs  # the last partial batch of an epoch is dropped, as in the reference

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, x.shape[0], x.shape[2], ds.num_classes, ds.task, cfg.train.sparsity)
    streams = ["+".join(ds.modalities)] if early else list(ds.modalities)  # what the tables' modality indexes
    names = streams if model.outputs > 1 else ["fused" if len(ds.modalities) > 1 else streams[0]]  # predictions
    model.to(device).train()
    optimizer = _make_optimizer(model, cfg)
    masks = [bn.penalty_mask for _, bn in model.cen_layers()]
    weights = [bn.weight for _, bn in model.cen_layers()]
    lam, thr = cfg.train.lam, cfg.model.threshold

    info = {"modalities": streams, "input_modalities": list(ds.modalities), "outputs": names,
            "class_names": list(ds.class_names), "task": ds.task,
            "num_classes": ds.num_classes, "in_channels": int(x.shape[2]), "device": str(device),
            "layers": [name for name, _ in model.cen_layers()], "n_train": n_train, "n_val": int(xv.shape[1]),
            "steps_per_epoch": steps_per_epoch}
    if cfg.train.init_from is not None:
        info["init_from"] = str(Path(cfg.train.init_from).resolve())
    writer, ckpt = RunWriter.reopen(out, cfg) if action == "resume" else (RunWriter.create(out, cfg, info), None)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    elif cfg.train.init_from is not None:  # a new run, or one resumed before its first checkpoint
        _load_initial_weights(model, cfg.train.init_from)
    start = ckpt["step"] if ckpt is not None else 0
    logger = _Logger(model, writer, cfg)
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
            xb, yb = x[:, idx], y[idx]

            logging_step = s % cfg.log.every == 0
            if logging_step:
                gamma, exchanged = logger.state(s, epoch)
            if s % cfg.log.eval_every == 0:
                logger.metrics(s, epoch, "val", evaluate(model, xv, yv, names, ds.num_classes))

            observe = record_bn_output_grad_norms(model.cen_layers()) if (logging_step and cfg.log.grads) \
                else contextlib.nullcontext({})
            with observe as dxprime:
                loss, branch, ens = forward_backward(model, optimizer, xb, yb)
            loss_value = float(loss)  # one host sync per step, to stop at the first non-finite loss
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"data loss is {loss_value} at step {s} (epoch {epoch}); everything logged before is kept in "
                    f"{out}. Lower train.lr or train.lam, or check the data."
                )
            if logging_step:
                penalty = float(l1_penalty([w.detach() for w in weights], masks, lam))
                alpha = torch.softmax(model.alpha.detach(), 0).cpu().tolist()
                pen_g = np.abs(gamma[logger.penalised])
                values = {f"loss/{n}": float(v) for n, v in zip(names, branch.detach().cpu().tolist())}
                values.update({"loss/ensemble": float(ens.detach()), "loss/total": loss_value, "penalty": penalty})
                values.update({f"alpha/{n}": a for n, a in zip(names, alpha)})
                values["sparsity/below_threshold"] = float((pen_g < thr).mean()) if pen_g.size else float("nan")
                values["exchange/ratio"] = logger.exchange_ratio(exchanged)
                logger.metrics(s, epoch, "train", values)
                if cfg.log.grads:
                    logger.grads(s, dxprime)
                bar.set_postfix(loss=f"{loss_value:.3f}", below_thr=f"{values['sparsity/below_threshold']:.2f}", refresh=False)

            penalised_update(optimizer, weights, masks, cfg.train)
            bar.update(1)

            done = s + 1
            if done % cfg.train.ckpt_every == 0 and done < end:
                writer.checkpoint(done, model, optimizer)
        s = end
        final_epoch = (end - 1) // steps_per_epoch if end > 0 else 0
        if end == cfg.train.steps:  # the final state is logged and evaluated once more
            logger.state(end, final_epoch)
            logger.metrics(end, final_epoch, "val", evaluate(model, xv, yv, names, ds.num_classes))
            writer.flush(upper=end + 1)
            writer.manifest["train_seconds"] = writer.manifest.get("train_seconds", 0.0) + time.perf_counter() - clock
            writer.checkpoint(end, model, optimizer)
            writer.finish("complete", end)
        else:
            writer.manifest["train_seconds"] = writer.manifest.get("train_seconds", 0.0) + time.perf_counter() - clock
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


def _load_initial_weights(model: CENNet, source: str) -> None:
    """Load model weights (not the optimizer state) from a checkpoint file or a run directory's latest one."""
    from .errors import RunFormatError
    from .runlog import _checkpoint_steps, checkpoint_path, load_checkpoint

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
    """tqdm, notebook-aware; plain text every few seconds when ``CEN_LAB_PROGRESS=text`` (set when notebooks run
    headless under papermill, whose log shows text but not widgets)."""
    if os.environ.get("CEN_LAB_PROGRESS") == "text":
        import sys

        from tqdm.std import tqdm

        return tqdm(mininterval=3.0, ascii=True, leave=True, file=sys.stdout, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(leave=True, **kwargs)
