"""A small CEN written the way the reference code and the codebases that copy it write one.

This is an example of the *foreign* layout that ``cen_lab.observe`` reads, kept small and tested; it is not a
second architecture for ``cen_lab.train``. Its pieces follow the reference code's pattern:

- ``ModuleParallel``: one shared module run on each modality's tensor of a list;
- ``BatchNorm2dParallel``: M private ``nn.BatchNorm2d`` children named ``bn_0 ... bn_{M-1}``;
- ``Exchange``: after ``bn2`` of each bottleneck, channel c of modality m keeps its own output where
  ``|gamma| >= threshold``, else takes the other modality's (for M > 2: the mean of the others);
- ``Bottleneck``: 1x1 -> 3x3 (stride) -> 1x1 convolutions with expansion 4 and a residual path, the downsample
  branch a shared 1x1 convolution and a private ``BatchNorm2dParallel``;
- ``reference_slim_params`` and ``reference_l1``: the penalised gammas picked by parameter name (``'bn2' in
  name``), alternating the first and the second half of each BN weight in parameter order, and the L1 term
  added to the loss once per output (M + 1 times per step), as the reference does.

``hand_written_loop`` trains it on the toy scenes in a plain loop that a user of such a codebase would write,
with a ``cen_lab.observer.Observer`` watching.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._progress import progress_bar
from .regime import SMOKE_PRESETS, SMOKE_TEST

if TYPE_CHECKING:  # annotations only
    import pandas as pd

    from .config import DataConfig
    from .data import MultimodalDataset
    from .runlog import Run

__all__ = ["ModuleParallel", "BatchNorm2dParallel", "Exchange", "Bottleneck", "ReferenceStyleCEN",
           "reference_slim_params", "reference_l1", "hand_written_loop", "segmentation_loss", "without_exchange",
           "effective_lam", "ZooRun", "train_reference_style", "training_batches", "regime",
           "EXAMPLE_PRESETS", "run_example", "check_theorem"]


class ModuleParallel(nn.Module):
    """Run one shared module on every modality: list of M ``[N, C, H, W]`` -> list of M tensors."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.module(x) for x in xs]


class BatchNorm2dParallel(nn.Module):
    """A private ``nn.BatchNorm2d`` per modality, as children ``bn_0 ... bn_{M-1}``."""

    def __init__(self, num_features: int, num_parallel: int):
        super().__init__()
        self.num_parallel = num_parallel
        for i in range(num_parallel):
            setattr(self, f"bn_{i}", nn.BatchNorm2d(num_features))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [getattr(self, f"bn_{i}")(x) for i, x in enumerate(xs)]


class Exchange(nn.Module):
    """Channel exchange after a ``BatchNorm2dParallel``: modality m keeps channel c where
    ``|gamma_m[c]| >= threshold``, else takes the mean of the other modalities' channel c."""

    def forward(self, xs: list[torch.Tensor], bns: Sequence[nn.BatchNorm2d], threshold: float) -> list[torch.Tensor]:
        m = len(xs)
        total = torch.stack(xs).sum(0)  # [N, C, H, W]
        out = []
        for i, (x, bn) in enumerate(zip(xs, bns)):
            keep = (bn.weight.abs() >= threshold).view(1, -1, 1, 1)  # [1, C, 1, 1]
            others = (total - x) / (m - 1)
            out.append(torch.where(keep, x, others))
        return out


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> ModuleParallel:
    return ModuleParallel(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias))


class Bottleneck(nn.Module):
    """The residual bottleneck of the reference: exchange after ``bn2`` (the identity path keeps each
    modality's own features)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, num_parallel: int, threshold: float, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = BatchNorm2dParallel(planes, num_parallel)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = BatchNorm2dParallel(planes, num_parallel)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = BatchNorm2dParallel(planes * self.expansion, num_parallel)
        self.relu = ModuleParallel(nn.ReLU())
        self.exchange = Exchange()
        self.threshold = threshold
        self.downsample = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(_conv(inplanes, planes * self.expansion, 1, stride),
                                            BatchNorm2dParallel(planes * self.expansion, num_parallel))

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if len(x) > 1:
            out = self.exchange(out, [getattr(self.bn2, f"bn_{i}") for i in range(len(x))], self.threshold)
        out = self.bn3(self.conv3(self.relu(out)))
        return self.relu([o + r for o, r in zip(out, residual)])


class ReferenceStyleCEN(nn.Module):
    """A compact segmentation CEN in the reference code's layout.

    stem (shared 3x3 conv, private BN, ReLU) -> one bottleneck per entry of ``planes`` (stride 1, then 2) ->
    a shared 1x1 classifier upsampled to the input size; the ensemble is ``sum_m softmax(alpha)_m *
    logits_m.detach()``.

    ``forward(xs)``: list of M ``[N, in_channels, H, W]`` -> (list of M + 1 logits ``[N, K, H, W]``, the M
    branches then the ensemble; ``softmax(alpha)`` ``[M]``), as the reference returns ``(outputs, alpha_soft)``.
    """

    def __init__(self, in_channels: int, num_classes: int, num_parallel: int = 2, stem: int = 16,
                 planes: Sequence[int] = (8, 16), threshold: float = 2e-2):
        super().__init__()
        self.num_parallel = num_parallel
        self.conv1 = _conv(in_channels, stem, 3)
        self.bn1 = BatchNorm2dParallel(stem, num_parallel)
        self.relu = ModuleParallel(nn.ReLU())
        blocks, cin = [], stem
        for i, p in enumerate(planes):
            blocks.append(nn.Sequential(Bottleneck(cin, p, num_parallel, threshold, stride=1 if i == 0 else 2)))
            cin = p * Bottleneck.expansion
        self.layers = nn.ModuleList(blocks)
        self.clf_conv = _conv(cin, num_classes, 1, bias=True)
        self.alpha = nn.Parameter(torch.ones(num_parallel))

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        size = xs[0].shape[-2:]
        x = self.relu(self.bn1(self.conv1(xs)))
        for layer in self.layers:
            x = layer(x)
        out = [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in self.clf_conv(x)]
        alpha_soft = torch.softmax(self.alpha, 0)
        ens = sum(alpha_soft[i] * o.detach() for i, o in enumerate(out))
        return out + [ens], alpha_soft


def without_exchange(model: ReferenceStyleCEN) -> ReferenceStyleCEN:
    """A copy of ``model`` whose bottlenecks never exchange (threshold 0: every ``|gamma| >= 0`` is kept), the
    setting of Theorem 1; ``model`` itself is unchanged."""
    import copy

    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, Bottleneck):
            module.threshold = 0.0
    return twin


def effective_lam(lam: float, num_parallel: int) -> float:
    """The L1 weight per step of ``hand_written_loop``: the reference adds ``lam * L1`` once per output, M + 1
    times."""
    return lam * (num_parallel + 1)


def reference_slim_params(model: nn.Module) -> list[torch.Tensor]:
    """The penalised gammas as the reference code picks them: every parameter that requires grad, ends with
    ``weight`` and has ``bn2`` in its name, in ``named_parameters()`` order; the k-th contributes its first half
    for even k and its second half for odd k (views, so the penalty's gradient reaches the parameter)."""
    slim = []
    for name, p in model.named_parameters():
        if p.requires_grad and name.endswith("weight") and "bn2" in name:
            slim.append(p[:len(p) // 2] if len(slim) % 2 == 0 else p[len(p) // 2:])
    return slim


def reference_l1(slim_params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum |gamma|`` over the slim parameters (multiply by lambda)."""
    return sum(p.abs().sum() for p in slim_params)


def segmentation_loss(model: nn.Module, batch: tuple[list[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The data loss of one batch ``(inputs, labels)``: cross-entropy of every output (branches and ensemble),
    summed, without the penalty. A ``loss_fn`` for ``cen_lab.theorem.local_check_model``."""
    xs, y = batch
    outputs, _ = model(xs)
    return sum(F.cross_entropy(o, y) for o in outputs)


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
    from .tasks import TaskMetrics

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
                values = torch.stack([v.detach() for v in losses] + [penalty.detach()]).tolist()  # one host sync
                metrics = dict(zip([f"loss/{k}" for k in names + ["ensemble"]] + ["penalty"], values))
                metrics.update({f"alpha/{k}": a for k, a in zip(names, alpha_soft.detach().tolist())})
                metrics["loss/total"] = sum(values[:-1])
                observer.log(step, metrics)
            opt.step()
            if save_every and on_step is not None and (step + 1) % save_every == 0 and step + 1 < steps:
                on_step(step + 1)
        observer.log(steps)
        observer.log_metrics(steps, validate(), split="val")
        if on_step is not None:
            on_step(steps)


# -- the example, end to end (what notebooks/bring_your_own.ipynb calls) ----------------------------------------


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
    from .config import DataConfig
    from .data import load_data
    from .observer import observe
    from .runlog import load_run

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
        if saved.get("settings") == settings and (out / "manifest.json").is_file() and load_run(out).complete:
            model.load_state_dict(saved["segmenter"])
            return ZooRun(load_run(out), model, ds, settings, ckpt_dir)
    obs = observe(model, out, layers="*.bn2", threshold=threshold, penalised="alternate-halves",
                  modality_names=list(ds.modalities), lam=settings["lam_per_step"], seed=seed, total_steps=steps,
                  overwrite=True)

    def save(step: int) -> None:
        from ._io import atomic_path

        with atomic_path(ckpt_dir / f"epoch-{step}.pth") as tmp:
            torch.save({"segmenter": model.state_dict(), "epoch_start": step, "settings": settings}, tmp)

    hand_written_loop(model, ds, obs, steps=steps, lam=lam, lr=lr, momentum=momentum, batch_size=batch_size,
                      seed=seed, progress=progress, on_step=save, save_every=save_every)
    return ZooRun(load_run(out), model, ds, settings, ckpt_dir)


def training_batches(data: "MultimodalDataset", n_batches: int = 8, batch_size: int = 32, seed: int = 0) -> list:
    """``n_batches`` training minibatches ``(inputs, labels)`` as ``segmentation_loss`` takes them."""
    from .theorem import minibatch_indices

    x_np, y_np = data.stacked(0)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    return [([x[m, idx] for m in range(x.shape[0])], y[idx])
            for idx in minibatch_indices(x.shape[1], batch_size, n_batches, seed)]


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


def check_theorem(zoo_run: ZooRun, preset: str = "default", seed: int = 0, progress: bool = True):
    """Theorem 1's local check on the example's trained model, exchange off (the theorem's setting), at the
    per-step L1 weight of its loop (``effective_lam``). Returns ``(local frame, calibration_summary)``."""
    from .theorem import calibration_summary, local_check_model

    p = EXAMPLE_PRESETS[preset]
    m = zoo_run.model.num_parallel
    batches = training_batches(zoo_run.data, p["check_batches"], p["batch_size"], seed)
    local = local_check_model(without_exchange(zoo_run.model), segmentation_loss, batches,
                              effective_lam(zoo_run.settings["lam"], m), layers="*.bn2", penalised="alternate-halves",
                              max_channels=p["max_channels"], step=zoo_run.run.manifest["last_step"],
                              name=zoo_run.run.path.name, seed=seed, progress=progress)
    return local, calibration_summary(local)
