"""Runs as TensorBoard events: ``tensorboard(run, log_dir)`` for any run (trained, observed, imported), and the
``TensorBoardSink`` that the observer writes to as it logs (``observe(..., tensorboard=writer)``).

What is written, per logged step (``<b>`` a branch name: a modality, or ``<task>/<modality>``):

- ``exchange_ratio/<layer>/<b>``: the portion of the layer's channels of that branch that are exchanged;
- ``below_threshold/<layer>/<b>``: the portion of its *penalised* gammas with ``|gamma| < threshold`` (not written
  where the branch has no penalised gamma);
- histograms ``gamma/penalised/<layer>/<b>`` and ``gamma/unpenalised/<layer>/<b>`` of the gammas;
- every logged metric as ``<split>/<name>`` (``train/loss/total``, ``val/miou/ensemble``);
- with gradients logged: ``dgamma_abs_mean/<layer>/<b>`` (mean ``|dL/dgamma|``), ``dxprime_norm_mean/<layer>/<b>``
  (mean ``||dL/dx'||``) and a histogram ``dgamma/<layer>/<b>``.

It needs the ``tensorboard`` package (``pip install -e ".[tensorboard]"``); TensorBoard reads the folder as usual
(``tensorboard --logdir DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import CenLabError, RunFormatError

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["TensorBoardSink", "tensorboard"]


class TensorBoardSink:
    """Writes one run's logged rows to a ``SummaryWriter`` (anything with ``add_scalar`` and ``add_histogram``).

    Parameters
    ----------
    writer : torch.utils.tensorboard.SummaryWriter
    layers, branches : arrays, one entry per row of the gammas table of one step
        The ``layer`` names and ``branch`` indices, in the order every step's arrays come in.
    branch_names : sequence of str
        Name of each branch index (``manifest["branches"]``).
    penalised : bool array, one per row
    threshold : float
    """

    def __init__(self, writer: Any, layers: np.ndarray, branches: np.ndarray, branch_names: Sequence[str],
                 penalised: np.ndarray, threshold: float):
        self.writer, self.threshold = writer, np.float32(threshold)
        self.groups = []  # (tag suffix, rows of that layer and branch, their penalised flags)
        layers, branches, penalised = np.asarray(layers), np.asarray(branches), np.asarray(penalised, dtype=bool)
        for layer in dict.fromkeys(layers.tolist()):
            for b in dict.fromkeys(branches[layers == layer].tolist()):
                rows = np.flatnonzero((layers == layer) & (branches == b))
                self.groups.append((f"{layer}/{branch_names[b]}", rows, penalised[rows]))

    def state(self, step: int, gamma: np.ndarray, exchanged: np.ndarray) -> None:
        """The gammas (float32) and exchanged flags of every row at ``step``."""
        for tag, rows, pen in self.groups:
            g = gamma[rows]
            self.writer.add_scalar(f"exchange_ratio/{tag}", float(exchanged[rows].mean()), step)
            if pen.any():
                self.writer.add_scalar(f"below_threshold/{tag}", float((np.abs(g[pen]) < self.threshold).mean()), step)
                self.writer.add_histogram(f"gamma/penalised/{tag}", g[pen], step)
            if (~pen).any():
                self.writer.add_histogram(f"gamma/unpenalised/{tag}", g[~pen], step)

    def forecast(self, step: int, res: Any) -> None:
        """The exchange forecast made at ``step`` (``cen_lab.runs.forecast_model.ForecastResult``)."""
        write_forecast(self.writer, step, res)

    def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
        write_metrics(self.writer, step, split, values)

    def grads(self, step: int, dgamma: np.ndarray, dxprime_norm: np.ndarray) -> None:
        for tag, rows, _ in self.groups:
            self.writer.add_scalar(f"dgamma_abs_mean/{tag}", float(np.abs(dgamma[rows]).mean()), step)
            norms = dxprime_norm[rows]
            if np.isfinite(norms).any():
                self.writer.add_scalar(f"dxprime_norm_mean/{tag}", float(np.nanmean(norms)), step)
            self.writer.add_histogram(f"dgamma/{tag}", dgamma[rows], step)


def write_forecast(writer: Any, step: int, res: Any) -> None:
    """``forecast/predicted``, ``forecast/low`` and ``forecast/high``: the final portion under the threshold that
    the forecast made at ``step`` expects (anything with those attributes: a ``ForecastResult``, a table row)."""
    for name in ("predicted", "low", "high"):
        writer.add_scalar(f"forecast/{name}", float(getattr(res, name)), step)


def write_metrics(writer: Any, step: int, split: str, values: Mapping[str, float]) -> None:
    """Each finite metric as the scalar ``<split>/<name>``."""
    for name, value in values.items():
        if np.isfinite(value):
            writer.add_scalar(f"{split}/{name}", float(value), step)


def summary_writer(log_dir: str | Path):
    """A ``SummaryWriter`` on ``log_dir``, with clear errors for a missing package or a folder it cannot write."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise CenLabError(f"TensorBoard export needs the tensorboard package: pip install -e \".[tensorboard]\" "
                          f"({e})") from None
    path = Path(log_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".cen_lab-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CenLabError(f"{path}: cannot write TensorBoard events there ({type(e).__name__}: {e})") from None
    return SummaryWriter(log_dir=str(path))


def tensorboard(run: "Run | str | Path", log_dir: str | Path) -> Path:
    """Write ``run`` (a ``Run`` or its directory) as TensorBoard events into ``log_dir``; returns ``log_dir``.

    Raises ``RunFormatError`` for a run with nothing to export (no logged step and no metric) and
    ``CenLabError`` for a folder that cannot be written.
    """
    from .reader import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    if run.gammas.empty and run.metrics.empty:
        raise RunFormatError(f"{run.path}: nothing to export (no logged step and no metric)")
    writer = summary_writer(log_dir)
    try:
        if not run.gammas.empty:
            steps = run.gammas.groupby("step", sort=True)
            first = run.gammas[run.gammas["step"] == run.gammas["step"].min()]
            sink = TensorBoardSink(writer, first["layer"].to_numpy(), first["branch"].to_numpy(), run.branches,
                                   first["penalised"].to_numpy(), run.threshold)
            exchange = {s: f for s, f in run.exchange.groupby("step", sort=True)}
            for step, rows in steps:
                ex = exchange[step]
                sink.state(int(step), rows["gamma"].to_numpy(), ex["exchanged"].to_numpy())
            for step, rows in run.grads.groupby("step", sort=True):
                sink.grads(int(step), rows["dgamma"].to_numpy(), rows["dxprime_norm"].to_numpy())
        for (step, split), rows in run.metrics.groupby(["step", "split"], sort=True):
            write_metrics(writer, int(step), split, dict(zip(rows["name"], rows["value"])))
        for row in run.forecasts.itertuples(index=False):  # the forecasts recorded as the run went
            write_forecast(writer, int(row.step), row)
    finally:
        writer.close()
    return Path(log_dir)
