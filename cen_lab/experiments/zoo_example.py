"""The zoo's example, end to end: the reference-style CEN of ``cen_lab.network.zoo`` trained by the plain loop a
user of such a codebase writes, with ``cen_lab.observe`` watching (what ``notebooks/bring_your_own.ipynb`` calls).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._util.progress import progress_bar
from ..network.zoo import ReferenceStyleCEN, effective_lam, reference_l1, reference_slim_params
from .regime import SMOKE_PRESETS, SMOKE_TEST

if TYPE_CHECKING:  # annotations only
    import pandas as pd

    from ..config import DataConfig
    from ..data import MultimodalDataset
    from ..runs.reader import Run

__all__ = ["loss_metrics", "hand_written_loop", "ZooRun", "train_reference_style", "regime", "EXAMPLE_PRESETS", "run_example"]


def loss_metrics(names: list[str], losses: list[torch.Tensor], penalty: torch.Tensor,
                 alpha_soft: torch.Tensor) -> dict[str, float]:
    """What the zoo's loops log each logged step: ``loss/<branch>`` and ``loss/ensemble`` (``losses``, the branches
    then the ensemble), ``penalty``, ``alpha/<branch>`` and ``loss/total``, with one host sync."""
    values = torch.stack([v.detach() for v in losses] + [penalty.detach()]).tolist()
    metrics = dict(zip([f"loss/{k}" for k in names + ["ensemble"]] + ["penalty"], values))
    metrics.update({f"alpha/{k}": a for k, a in zip(names, alpha_soft.detach().tolist())})
    metrics["loss/total"] = sum(values[:-1])
    return metrics


def hand_written_loop(model: ReferenceStyleCEN, data, observer, *, steps: int = 300, lam: float = 4e-3,
                      lr: float = 0.05, momentum: float = 0.9, batch_size: int = 32, log_every: int = 5,
                      eval_every: int = 50, grads_every: int = 25, seed: int = 0, device: str = "cpu",
                      progress: bool = True, on_step: Callable[[int], None] | None = None,
                      save_every: int = 0) -> None:
    """Train ``model`` on a ``MultimodalDataset`` (task ``seg``) the way a reference-style codebase does, with
    ``observer`` logging.

    The loop is the reference's: SGD with momentum, the L1 term ``lam * sum|gamma|`` over
    ``reference_slim_params`` added to the loss once per output (M + 1 times per step). Every ``log_every``
    steps the observer logs the state before the update with the minibatch losses, every ``eval_every`` steps
    the validation mIoU, and every ``grads_every`` steps the gradients (``dL/dgamma`` is then the data-loss
    gradient: the penalty is back-propagated after the ``grads`` block). With ``save_every``, ``on_step(s)`` is
    called with the model at state s every ``save_every`` steps and at the end (to save checkpoints). The
    observer is closed at the end (status ``failed`` if the loop raises).
    """
    from ..network.tasks import TaskMetrics

    names = observer.writer.manifest["modalities"]
    x_np, y_np = data.stacked(0)
    xv_np, yv_np = data.stacked(1)
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    xv, yv = torch.from_numpy(xv_np).to(device), torch.from_numpy(yv_np).to(device)
    m, n = x.shape[0], x.shape[1]
    slim = reference_slim_params(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    rng = np.random.default_rng(seed)
    model.to(device).train()

    def validate() -> dict[str, float]:
        model.eval()
        acc = TaskMetrics("seg", m + 1, data.num_classes)
        with torch.no_grad():
            for s in range(0, xv.shape[1], 128):
                outputs, _ = model([xv[i, s:s + 128] for i in range(m)])
                acc.update(torch.stack(outputs), yv[s:s + 128])
        model.train()
        return acc.result(names + ["ensemble"])

    with observer:
        for step in progress_bar(range(steps), desc="hand-written loop", disable=not progress):
            idx = torch.from_numpy(rng.choice(n, batch_size, replace=False)).to(device)
            xs, target = [x[i, idx] for i in range(m)], y[idx]
            if step % eval_every == 0:
                observer.log_metrics(step, validate(), split="val")
            grads = observer.grads(step) if step % grads_every == 0 else contextlib.nullcontext()
            with grads:  # the data loss only, so that the logged dL/dgamma is the data-loss gradient
                outputs, alpha_soft = model(xs)
                losses = [F.cross_entropy(o, target) for o in outputs]
                opt.zero_grad()
                sum(losses).backward()
            penalty = effective_lam(lam, m) * reference_l1(slim)  # counted once per output, as the reference
            penalty.backward()
            if step % log_every == 0:
                observer.log(step, loss_metrics(names, losses, penalty, alpha_soft))
            opt.step()
            if save_every and on_step is not None and (step + 1) % save_every == 0 and step + 1 < steps:
                on_step(step + 1)
        observer.log(steps)
        observer.log_metrics(steps, validate(), split="val")
        if on_step is not None:
            on_step(steps)


@dataclass
class ZooRun:
    """A trained reference-style model with its observed run and the settings it was trained with."""

    run: "Run"
    model: ReferenceStyleCEN
    data: "MultimodalDataset"
    settings: dict[str, Any]
    checkpoint_dir: Path


def train_reference_style(out_dir: str | Path, *, steps: int = 300, lam: float = 4e-3, seed: int = 0,
                          threshold: float = 2e-2, lr: float = 0.05, momentum: float = 0.9, batch_size: int = 32,
                          save_every: int = 50, data: "DataConfig | None" = None, progress: bool = True) -> ZooRun:
    """Train a ``ReferenceStyleCEN`` on the toy scenes with ``hand_written_loop`` under ``cen_lab.observe``.

    The run goes to ``out_dir``; the loop also saves the model every ``save_every`` steps the reference's way
    (``{"segmenter": state_dict, "epoch_start": step}``) into ``out_dir/user_checkpoints/``, the files
    ``cen_lab.import_checkpoints`` reads. A complete run there with the same settings is reused, not
    retrained (its final checkpoint is loaded); anything else in ``out_dir`` is replaced.
    """
    from ..config import DataConfig
    from ..data import load_data
    from ..runs.attach import observe
    from ..runs.reader import load_run

    out = Path(out_dir)
    ckpt_dir = out / "user_checkpoints"
    data_cfg = data or DataConfig()
    ds = load_data(data_cfg)
    settings = {"architecture": "ReferenceStyleCEN(stem=16, planes=(8, 16))", "steps": steps, "lam": lam,
                "lam_per_step": effective_lam(lam, len(ds.modalities)), "seed": seed, "threshold": threshold,
                "optimizer": f"SGD(lr={lr}, momentum={momentum})", "batch_size": batch_size,
                "penalised": "alternate-halves (reference's bn2 filter)", "data": data_cfg.source}
    final = ckpt_dir / f"epoch-{steps}.pth"
    torch.manual_seed(seed)
    model = ReferenceStyleCEN(ds.stacked(0)[0].shape[2], ds.num_classes, len(ds.modalities), threshold=threshold)
    if final.is_file():
        saved = torch.load(final, map_location="cpu", weights_only=True)
        run = load_run(out) if saved.get("settings") == settings and (out / "manifest.json").is_file() else None
        if run is not None and run.complete:
            model.load_state_dict(saved["segmenter"])
            return ZooRun(run, model, ds, settings, ckpt_dir)
    obs = observe(model, out, layers="*.bn2", threshold=threshold, penalised="alternate-halves",
                  modality_names=list(ds.modalities), reference_lamda=lam, seed=seed, total_steps=steps,
                  overwrite=True)

    def save(step: int) -> None:
        from .._util.atomic import atomic_path

        with atomic_path(ckpt_dir / f"epoch-{step}.pth") as tmp:
            torch.save({"segmenter": model.state_dict(), "epoch_start": step, "settings": settings}, tmp)

    hand_written_loop(model, ds, obs, steps=steps, lam=lam, lr=lr, momentum=momentum, batch_size=batch_size,
                      seed=seed, progress=progress, on_step=save, save_every=save_every)
    return ZooRun(load_run(out), model, ds, settings, ckpt_dir)


def regime(zoo_run: ZooRun, **checked: Any) -> "pd.DataFrame":
    """The regime the example's numbers hold in, as a two-column table (setting, value); ``checked`` adds rows
    (e.g. how the Theorem 1 check was made). Values are kept under pandas' 50-character display width, so that a
    notebook shows them whole."""
    import pandas as pd

    rows = {**zoo_run.settings, "trained steps": zoo_run.run.manifest["last_step"], **checked}
    return pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]})


# the example's sizes: "default" for the report, "tiny" a smoke test (its numbers carry no evidence)
EXAMPLE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"steps": 300, "batch_size": 32, "save_every": 50, "check_batches": 8, "max_channels": None},
    "tiny": {"steps": 6, "batch_size": 16, "save_every": 3, "check_batches": 1, "max_channels": 6},
}


def run_example(preset: str = "default", runs_dir: str | Path = "runs", *, lam: float = 4e-3, seed: int = 0,
                threshold: float = 2e-2, progress: bool = True) -> ZooRun:
    """``train_reference_style`` at the size of ``EXAMPLE_PRESETS[preset]`` into
    ``runs_dir/bring-your-own-<preset>-seed<seed>`` (reused when complete with the same settings)."""
    if preset not in EXAMPLE_PRESETS:
        raise ValueError(f"preset must be one of {sorted(EXAMPLE_PRESETS)}, got {preset!r}")
    p = EXAMPLE_PRESETS[preset]
    out = Path(runs_dir) / f"bring-your-own-{preset}-seed{seed}"
    z = train_reference_style(out, steps=p["steps"], lam=lam, seed=seed, threshold=threshold,
                              batch_size=p["batch_size"], save_every=p["save_every"], progress=progress)
    z.settings["preset"] = preset
    z.settings["evidence"] = SMOKE_TEST if preset in SMOKE_PRESETS else "one seed, toy data; not the paper's regime"
    return z
