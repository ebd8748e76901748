"""Figures of the metrics table: losses and scores per branch and ensemble, and alpha."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ._common import reads_run, takes, ENSEMBLE_COLOUR, BRANCH_COLOURS, check_backend, mpl_figure, plotly_grid

__all__ = ["compute_training_curves", "plot_training_curves", "compute_metric_across_runs", "plot_metric_across_runs"]

# (split, kind) of each panel, in display order, and its title
_PANELS = [(("train", "loss"), "train loss (minibatch)"), (("val", "loss"), "validation loss"),
           (("val", "miou"), "validation mIoU"), (("val", "accuracy"), "validation accuracy"),
           (("val", "mae"), "validation depth MAE"), (("val", "f1"), "validation edge F1"),
           (("train", "alpha"), "softmax(alpha) weights")]  # short: the explorer's panels are 3 in wide
_KINDS = [kind for (_, kind), _ in _PANELS]
_UNIT_RANGE = ("miou", "accuracy", "f1")  # scores in [0, 1]


OTHER = "other"  # the task value of metrics that are not per-branch curves (see compute_training_curves)


@reads_run("metrics", outputs="outputs")
def compute_training_curves(metrics: pd.DataFrame, outputs: Sequence[str] | None = None, *,
                            others: bool = False) -> pd.DataFrame:
    """Per-branch curves from the ``metrics`` table, and optionally every other metric.

    The naming rule: names ``<kind>/<branch>`` (one task) or ``<kind>/<task>/<branch>`` (several tasks), with
    ``kind`` one of loss, miou, accuracy, mae, f1, alpha and ``branch`` a prediction branch or ``ensemble``, are
    split into ``kind``, ``task`` and ``branch`` and drawn as one line per branch. Every other name
    (``loss/total``, ``penalty``, ``sparsity/below_threshold``, a user's ``lr`` or ``grad_norm``) is dropped, or,
    with ``others=True``, kept as a curve of its own: ``task = "other"``, ``kind`` and ``branch`` the full name,
    drawn in a panel of its own.

    Parameters
    ----------
    metrics : pandas.DataFrame
        A run's ``metrics`` table.
    outputs : sequence of str, optional
        The prediction branches to keep, in display order (``Run.outputs``; a ``<task>/`` prefix is ignored);
        default all, sorted by name.

    Returns
    -------
    pandas.DataFrame
        Columns ``step, split, kind, task, branch, value``: ``task`` is ``""`` for single-task runs, ``branch``
        a modality name (or ``fused``) or ``"ensemble"``; sorted by split, kind, task (in the order of
        ``outputs``), branch order (modalities first, then the ensemble) and step.
    """
    columns = ["step", "split", "kind", "task", "branch", "value"]
    if metrics.empty:  # e.g. an imported run: checkpoints carry no metrics
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "step" else "float64" if c == "value" else object)
                             for c in columns})
    parts = metrics["name"].astype(str).str.split("/", n=2, expand=True)
    for col in (1, 2):
        if col not in parts:
            parts[col] = None
    three = parts[2].notna()
    df = pd.DataFrame({"step": metrics["step"].to_numpy(), "split": metrics["split"].astype(str).to_numpy(),
                       "kind": parts[0].to_numpy(), "task": np.where(three, parts[1], "").astype(object),
                       "branch": np.where(three, parts[2], parts[1]), "value": metrics["value"].to_numpy()})
    branches = list(dict.fromkeys(o.rsplit("/", 1)[-1] for o in outputs)) if outputs is not None else sorted(
        {b for b in df["branch"].dropna() if b not in ("ensemble", "total", "below_threshold", "ratio")})
    keep = df["kind"].isin(_KINDS) & df["branch"].isin(branches + ["ensemble"])
    if others:  # every finite value of any other name: its own curve
        rest = ~keep & np.isfinite(df["value"].to_numpy(dtype=float))
        names = metrics["name"].astype(str).to_numpy()
        df.loc[rest, "task"], df.loc[rest, "kind"], df.loc[rest, "branch"] = OTHER, names[rest], names[rest]
        keep = keep | rest
    df = df[keep].copy()
    df["_order"] = df["branch"].map({b: i for i, b in enumerate(branches + ["ensemble"])}).fillna(len(branches) + 1)
    # tasks in the run's order (that of ``outputs``), else by name
    tasks = list(dict.fromkeys(o.rsplit("/", 1)[0] for o in outputs if "/" in o)) if outputs is not None else []
    df["_task"] = df["task"].map(lambda t: tasks.index(t) if t in tasks else len(tasks) + (t == OTHER))
    df = df.sort_values(["split", "kind", "_task", "task", "_order", "step"], kind="stable").drop(
        columns=["_order", "_task"])
    return df.reset_index(drop=True)


def _colour(branch: str, branches: list[str]) -> str:
    if branch == "ensemble":
        return ENSEMBLE_COLOUR
    return BRANCH_COLOURS[branches.index(branch) % len(BRANCH_COLOURS)] if branch in branches else "#555555"


@takes('compute_training_curves', ('step', 'split', 'kind', 'task', 'branch', 'value'))
def plot_training_curves(frame: pd.DataFrame, *, backend: str = "matplotlib", marker_step: int | None = None,
                         title: str | None = None, panel_size: tuple[float, float] = (3.6, 2.6)):
    """Losses, validation scores and alpha over training, one line per branch (ensemble in black); one row of
    panels per task.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of ``compute_training_curves``.
    marker_step : int, optional
        Draw a vertical line at this step (used by the explorer).
    """
    check_backend(backend)
    if frame.empty:
        raise ValueError("no metric records to plot")
    tasks = list(dict.fromkeys(frame["task"]))
    rows = []  # per task: the (split, kind) panels it has, and their titles
    for task in tasks:
        if task == OTHER:  # metrics outside the naming rule: a panel each, in the frame's order
            present = list(dict.fromkeys(zip(*[frame.loc[frame["task"] == task, c] for c in ("split", "kind")])))
            rows.append([((split, kind), kind if split == "train" else f"{kind} ({split})") for split, kind in present])
            continue
        present = set(zip(*[frame.loc[frame["task"] == task, c] for c in ("split", "kind")]))
        rows.append([(key, f"{task}: {name}" if task else name) for key, name in _PANELS if key in present])
    ncols = max(len(r) for r in rows)
    branches = list(dict.fromkeys(b for b, t in zip(frame["branch"], frame["task"]) if b != "ensemble" and t != OTHER))
    title = title or "Training curves"

    def lines(task, split, kind):
        sub = frame[(frame["task"] == task) & (frame["split"] == split) & (frame["kind"] == kind)]
        return sub, sub.groupby("branch", sort=False)

    if backend == "plotly":
        titles = [name for r in rows for name in [n for _, n in r] + [""] * (ncols - len(r))]
        fig = plotly_grid(len(rows), ncols, titles, shared_xaxes=False, height_per_row=320)
        for i, (task, row) in enumerate(zip(tasks, rows)):
            for j, ((split, kind), _) in enumerate(row):
                for branch, line in lines(task, split, kind)[1]:
                    fig.add_scatter(x=line["step"], y=line["value"], mode="lines", name=branch, legendgroup=branch,
                                    showlegend=i == 0 and j == 0, line=dict(color=_colour(branch, branches)),
                                    row=i + 1, col=j + 1)
                if marker_step is not None:
                    fig.add_vline(x=marker_step, line_dash="dot", line_color="grey", row=i + 1, col=j + 1)
        fig.update_xaxes(title_text="step")
        fig.update_layout(title=title)
        return fig
    fig, axes = mpl_figure(len(rows), ncols, panel_size)
    for i, (task, row) in enumerate(zip(tasks, rows)):
        for j in range(len(row), ncols):
            axes[i, j].set_visible(False)
        for j, ((split, kind), name) in enumerate(row):
            ax = axes[i, j]
            sub, groups = lines(task, split, kind)
            for branch, line in groups:
                ax.plot(line["step"], line["value"], label=branch, color=_colour(branch, branches),
                        lw=1.6 if branch == "ensemble" else 1.1)
            if marker_step is not None:
                ax.axvline(marker_step, color="grey", ls=":", lw=1.0)
            ax.set(title=name, xlabel="step")
            ax.grid(alpha=0.3)
            if kind in _UNIT_RANGE + ("alpha",):
                ax.set_ylim(0, 1.0 if kind != "alpha" else max(0.6, float(np.nanmax(sub["value"])) * 1.1))
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def compute_metric_across_runs(runs: Mapping[str, Any], name: str, split: str = "train") -> pd.DataFrame:
    """One metric of several runs over training.

    Parameters
    ----------
    runs : mapping of str -> Run
        Label -> run (e.g. from ``cen_lab.reports.obtain_runs``).
    name : str
        A ``metrics`` name such as ``"sparsity/below_threshold"``, ``"exchange/ratio"`` or ``"miou/ensemble"``;
        ``"score/<branch>"`` means ``miou/<branch>`` for segmentation runs and ``accuracy/<branch>`` for
        classification runs.

    Returns
    -------
    pandas.DataFrame
        Columns ``run, step, value`` in run order, then step.
    """
    frames = []
    for label, run in runs.items():
        m = run.metrics
        wanted = name
        if name.startswith("score/"):
            wanted = ("miou/" if run.manifest["task"] == "seg" else "accuracy/") + name.split("/", 1)[1]
        sub = m[(m["name"] == wanted) & (m["split"] == split)]
        frames.append(pd.DataFrame({"run": label, "step": sub["step"].to_numpy(), "value": sub["value"].to_numpy()}))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "step", "value"])
    if out.empty:
        raise ValueError(f"no {split!r} records named {name!r} in these runs")
    return out


@takes('compute_metric_across_runs', ('run', 'step', 'value'))
def plot_metric_across_runs(frame: pd.DataFrame, *, ylabel: str = "value", backend: str = "matplotlib",
                            title: str | None = None, figsize: tuple[float, float] = (5.5, 3.2)):
    """One line per run (output of ``compute_metric_across_runs``)."""
    check_backend(backend)
    runs = list(dict.fromkeys(frame["run"]))
    title = title or ylabel
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=340)
        for i, label in enumerate(runs):
            sub = frame[frame["run"] == label]
            fig.add_scatter(x=sub["step"], y=sub["value"], mode="lines", name=label,
                            line=dict(color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)]))
        fig.update_xaxes(title_text="step")
        fig.update_yaxes(title_text=ylabel)
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    for i, label in enumerate(runs):
        sub = frame[frame["run"] == label]
        ax.plot(sub["step"], sub["value"], label=label, color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)])
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig
