"""Figure of the fusion benchmark (frames from ``cen_lab.fusion.compute_fusion_results``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...experiments.fusion import by_arch
from ._common import takes, ENSEMBLE_COLOUR, BRANCH_COLOURS, check_backend, mpl_figure, plotly_grid

__all__ = ["plot_fusion_results"]

FAMILY_COLOURS = {"unimodal": "#7f7f7f", "single-task": "#7f7f7f", "baseline": BRANCH_COLOURS[0], "cen": "#c0392b",
                  "scenario": BRANCH_COLOURS[2], "ablation": BRANCH_COLOURS[1], "reference": "#8e44ad"}


@takes('compute_fusion_results (cen_lab.fusion)', ('branch', 'metric', 'task'))
def plot_fusion_results(results: pd.DataFrame, *, task: str | None = None, backend: str = "matplotlib",
                        figsize=(7.0, 4.8)):
    """The final prediction's score on one task per variant (mean across seeds with its t interval), best at
    the top, coloured by family; small grey marks are the per-branch means. One panel per architecture (the
    ``arch`` column), stacked, with ``figsize`` for each.

    ``task`` is needed when ``results`` holds several tasks (``compute_fusion_results`` of scenario runs).
    """
    check_backend(backend)
    tasks = list(dict.fromkeys(results["task"]))
    if task is None and len(tasks) > 1:
        raise ValueError(f"results hold several tasks {tasks}; choose one with task=")
    task = tasks[0] if task is None else task
    results = results[results["task"] == task]
    if results[results["branch"] == "ensemble"].empty:
        raise ValueError(f"no ensemble rows to plot for task {task!r}")
    metric = results["metric"].iloc[0]
    panels = []
    for arch, sub in by_arch(results):
        ens = sub[sub["branch"] == "ensemble"].sort_values("mean", ascending=metric != "mae")  # the best at the top
        lo = (ens["mean"] - ens["ci_low"]).fillna(0).to_numpy()
        hi = (ens["ci_high"] - ens["mean"]).fillna(0).to_numpy()
        title = f"{task}: final {metric} (mean and 95% interval over seeds)" + ("" if arch is None else f", {arch}")
        panels.append((ens, sub[sub["branch"] != "ensemble"], lo, hi, title))
    if backend == "plotly":
        fig = plotly_grid(len(panels), 1, [p[-1] for p in panels], shared_xaxes=True,
                          height_per_row=40 * max(len(p[0]) for p in panels) + 80)
        for r, (ens, branches, lo, hi, _) in enumerate(panels, 1):
            colours = [FAMILY_COLOURS.get(f, ENSEMBLE_COLOUR) for f in ens["family"]]
            fig.add_scatter(x=ens["mean"], y=ens["variant"], mode="markers", name="prediction", showlegend=r == 1,
                            error_x=dict(type="data", array=hi, arrayminus=lo), marker=dict(color=colours, size=9),
                            customdata=ens[["n_seeds", "params"]].to_numpy(),
                            hovertemplate="%{y}: %{x:.3f}<br>seeds %{customdata[0]}, params %{customdata[1]}"
                                          "<extra></extra>", row=r, col=1)
            fig.add_scatter(x=branches["mean"], y=branches["variant"], mode="markers", name="branches",
                            showlegend=r == 1, text=branches["branch"],
                            marker=dict(color="lightgrey", symbol="line-ns-open", size=10), row=r, col=1)
        fig.update_xaxes(title_text=metric, row=len(panels), col=1)
        return fig
    fig, axes = mpl_figure(len(panels), 1, figsize, sharex=True)  # one score axis: architectures side by side
    from matplotlib.lines import Line2D

    for ax, (ens, branches, lo, hi, title) in zip(axes[:, 0], panels):
        colours = [FAMILY_COLOURS.get(f, ENSEMBLE_COLOUR) for f in ens["family"]]
        y = np.arange(len(ens))
        order = {v: i for i, v in enumerate(ens["variant"])}
        ax.scatter(branches["mean"], [order[v] for v in branches["variant"]], marker="|", s=120,
                   color="lightgrey", label="branch means", zorder=1)
        ax.errorbar(ens["mean"], y, xerr=np.vstack([lo, hi]), fmt="none", ecolor="black", elinewidth=1, zorder=2)
        ax.scatter(ens["mean"], y, color=colours, s=40, zorder=3)
        ax.set_yticks(y, ens["variant"], fontsize=8)
        ax.set(xlabel=metric, title=title)
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3, axis="x")
        handles = [Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in FAMILY_COLOURS.items()
                   if f in set(ens["family"])]
        ax.legend(handles=handles, fontsize=8, frameon=False, loc="lower right")
    return fig
