"""Learning curves of the fusion benchmark (``cen_lab.experiments.learning_curves``): validation scores over training with t
bands across seeds, and the exchange ratio with the step where it settles."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...experiments.fusion import by_arch
from ._common import takes, check_backend, mpl_figure, plotly_grid

__all__ = ["plot_learning_curves", "plot_exchange_settling"]


# matplotlib's tab20, darker shades first: a benchmark has 13 variants, more than the ten BRANCH_COLOURS
_MANY = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
         "#dbdb8d", "#9edae5")


def _colour(i: int) -> str:
    return _MANY[i % len(_MANY)]


@takes('compute_learning_curves (cen_lab.learning_curves)', ('task', 'variant'))
def plot_learning_curves(frame: pd.DataFrame, *, backend: str = "matplotlib", panel_size=(6.0, 3.8)):
    """One panel per architecture and task (a row per architecture): each variant's mean validation score over
    steps with its 95% t band across seeds (``compute_learning_curves``). A variant keeps its colour in every
    panel."""
    check_backend(backend)
    tasks = list(dict.fromkeys(frame["task"]))
    panels = by_arch(frame)
    variants = list(dict.fromkeys(frame["variant"]))
    metric = {t: frame[frame["task"] == t]["metric"].iloc[0] for t in tasks}
    titles = [f"{t}: {metric[t]} (validation)" + ("" if a is None else f", {a}") for a, _ in panels for t in tasks]
    if backend == "plotly":
        fig = plotly_grid(len(panels), len(tasks), titles, shared_xaxes=False, height_per_row=360)
        shown: set[str] = set()  # one legend entry per variant, where it is first drawn (some predict one task)
        for r, (_, rows) in enumerate(panels, 1):
            for j, task in enumerate(tasks, 1):
                for i, variant in enumerate(variants):
                    sub = rows[(rows["task"] == task) & (rows["variant"] == variant)]
                    if sub.empty:
                        continue
                    band = sub.dropna(subset=["ci_low"])
                    if len(band):
                        fig.add_scatter(x=list(band["step"]) + list(band["step"])[::-1],
                                        y=list(band["ci_high"]) + list(band["ci_low"])[::-1], fill="toself",
                                        line=dict(width=0), fillcolor=_colour(i), opacity=0.15, showlegend=False,
                                        hoverinfo="skip", row=r, col=j)
                    fig.add_scatter(x=sub["step"], y=sub["mean"], mode="lines+markers", name=variant,
                                    legendgroup=variant, line=dict(color=_colour(i)),
                                    showlegend=variant not in shown, row=r, col=j)
                    shown.add(variant)
                fig.update_xaxes(title_text="step", row=r, col=j)
        return fig
    fig, axes = mpl_figure(len(panels), len(tasks), panel_size)
    for r, (_, rows) in enumerate(panels):
        for ax, task, title in zip(axes[r], tasks, titles[r * len(tasks):]):
            for i, variant in enumerate(variants):
                sub = rows[(rows["task"] == task) & (rows["variant"] == variant)]
                if sub.empty:
                    continue
                ax.plot(sub["step"], sub["mean"], "o-", ms=3, color=_colour(i), label=variant)
                ax.fill_between(sub["step"], sub["ci_low"], sub["ci_high"], color=_colour(i), alpha=0.15, lw=0)
            ax.set(xlabel="step", title=title)
            ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ms=3, color=_colour(i), label=v) for i, v in enumerate(variants)]
    axes[0, -1].legend(handles=handles, fontsize=7, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0))  # beside, not on, the curves; one legend for every panel
    return fig


@takes('exchange_curves (cen_lab.learning_curves)', ('variant', 'step', 'exchange_ratio'))
def plot_exchange_settling(exchange: pd.DataFrame, settling: pd.DataFrame, *, backend: str = "matplotlib",
                           figsize=(6.0, 3.6)):
    """Each exchanging variant's mean exchange ratio over steps (``exchange_curves``), with a dotted line at its
    plateau step (``settling_table``); one panel per architecture."""
    check_backend(backend)
    archs = [a for a, _ in by_arch(settling)]
    titles = ["Exchange ratio over training, and where it settles" + ("" if a is None else f": {a}")
              for a in archs]
    moving_all = list(dict.fromkeys(settling[settling["final_exchange_ratio"] > 0]["variant"]))
    colour = {v: _colour(i) for i, v in enumerate(moving_all)}
    settlings, curves = dict(by_arch(settling)), dict(by_arch(exchange))

    def panel(arch):
        st = settlings[arch]
        moving = st[st["final_exchange_ratio"] > 0]["variant"].tolist()
        ex = curves.get(arch, exchange)
        means = ex[ex["variant"].isin(moving)].groupby(["variant", "step"], sort=False)["exchange_ratio"].mean()
        return moving, means, st.set_index("variant")["plateau_step"]

    if backend == "plotly":
        fig = plotly_grid(len(archs), 1, titles, height_per_row=360, shared_xaxes=False)
        shown: set[str] = set()  # one legend entry per variant
        for r, arch in enumerate(archs, 1):
            moving, means, plateau = panel(arch)
            for variant in moving:
                m = means.loc[variant]
                fig.add_scatter(x=m.index, y=m.to_numpy(), mode="lines", name=variant, legendgroup=variant,
                                showlegend=variant not in shown, line=dict(color=colour[variant]), row=r, col=1)
                shown.add(variant)
                if pd.notna(plateau[variant]):
                    fig.add_vline(x=float(plateau[variant]), line_dash="dot", line_color=colour[variant], row=r, col=1)
            fig.update_xaxes(title_text="step", row=r, col=1)
            fig.update_yaxes(title_text="portion of channels exchanged", range=[-0.02, 1.02], row=r, col=1)
        return fig
    fig, axes = mpl_figure(len(archs), 1, figsize)
    for ax, arch, title in zip(axes[:, 0], archs, titles):
        moving, means, plateau = panel(arch)
        for variant in moving:
            m = means.loc[variant]
            ax.plot(m.index, m.to_numpy(), color=colour[variant], label=variant)
            if pd.notna(plateau[variant]):
                ax.axvline(float(plateau[variant]), color=colour[variant], ls=":", lw=1)
        top = max(0.6, float(np.nanmax(means)) + 0.05) if len(means) else 1.0
        ax.set(xlabel="step", ylabel="portion of channels exchanged", ylim=(-0.02, top), title=title)
        ax.grid(alpha=0.3)
        if moving:
            ax.legend(fontsize=7, frameon=False)
        else:
            ax.text(0.5, 0.5, "no variant exchanged any channel", transform=ax.transAxes, ha="center",
                    color="#7f7f7f")
    return fig
