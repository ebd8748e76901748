"""Figures of the BN scaling factors: trajectories, distributions at a step, and sparsity over training."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ._common import (reads_run, takes, FREE_COLOUR, BRANCH_COLOURS, PENALISED_COLOUR, check_backend, branch_names,
                      branch_table, mpl_figure, plotly_grid, select_layers, sort_by_layer)

__all__ = ["compute_gamma_trajectories", "plot_gamma_trajectories", "compute_gamma_snapshot",
           "plot_gamma_snapshot", "plot_gamma_distributions", "compute_sparsity", "plot_sparsity"]


@reads_run("gammas", branches="branches")
def compute_gamma_trajectories(gammas: pd.DataFrame, branches: Sequence[str] | None = None,
                               layers: Sequence[str] | None = None) -> pd.DataFrame:
    """|gamma| over training per layer, branch and channel.

    Parameters
    ----------
    gammas : pandas.DataFrame
        The ``gammas`` table of a run (``Run.gammas``).
    branches : sequence of str, optional
        Names of the branch indices (``Run.branches``); default ``"b0"``, ``"b1"``, ...
    layers : sequence of str, optional
        Keep only these layers (default: all, in depth order of first appearance).

    Returns
    -------
    pandas.DataFrame
        Columns ``layer, branch, branch_name, channel, penalised, step, gamma, abs_gamma``, sorted by
        layer (input order), branch, channel and step.
    """
    df, order = select_layers(gammas, layers)
    names = branch_names(gammas, branches)
    out = pd.DataFrame({
        "layer": df["layer"].astype(str).to_numpy(),
        "branch": df["branch"].to_numpy(),
        "branch_name": names[df["branch"].to_numpy()],
        "channel": df["channel"].to_numpy(),
        "penalised": df["penalised"].to_numpy(),
        "step": df["step"].to_numpy(),
        "gamma": df["gamma"].to_numpy(),
        "abs_gamma": np.abs(df["gamma"].to_numpy()),
    })
    return sort_by_layer(out, order, ["branch", "channel", "step"])


@takes('compute_gamma_trajectories', ('layer', 'branch', 'branch_name', 'channel', 'penalised', 'step', 'abs_gamma'))
def plot_gamma_trajectories(frame: pd.DataFrame, threshold: float | None = None, *, backend: str = "matplotlib",
                            title: str | None = None, panel_size: tuple[float, float] = (3.6, 2.4)):
    """|gamma| trajectories: one panel per (layer, branch), one line per channel.

    Penalised channels are red, free channels blue; the exchange threshold is a dashed line.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of ``compute_gamma_trajectories``.
    threshold : float, optional
        The exchange threshold (``config.model.threshold``).
    backend : {"matplotlib", "plotly"}

    Returns
    -------
    matplotlib.figure.Figure or plotly.graph_objects.Figure
        Rows are layers, columns branches; panel titles read ``"<layer> · <branch>"``. With plotly each
        channel's trace is named ``"channel <c>"`` and hovering shows its values.
    """
    check_backend(backend)
    if frame.empty:
        raise ValueError("no gamma records to plot")
    layers = list(dict.fromkeys(frame["layer"]))
    mods = branch_table(frame)
    title = title or "BN scaling factors over training"
    panels = [(layer, m, name) for layer in layers for m, name in mods]
    if backend == "plotly":
        fig = plotly_grid(len(layers), len(mods), [f"{layer} · {name}" for layer, _, name in panels])
        for k, (layer, m, _) in enumerate(panels):
            row, col = k // len(mods) + 1, k % len(mods) + 1
            sub = frame[(frame["layer"] == layer) & (frame["branch"] == m)]
            for (channel, penalised), line in sub.groupby(["channel", "penalised"], sort=True):
                fig.add_scatter(x=line["step"], y=line["abs_gamma"], mode="lines", name=f"channel {channel}",
                                line=dict(width=1, color=PENALISED_COLOUR if penalised else FREE_COLOUR),
                                legendgroup="penalised" if penalised else "free", showlegend=False,
                                row=row, col=col)
            if threshold is not None:
                fig.add_hline(y=threshold, line_dash="dash", line_color="black", row=row, col=col)
        fig.update_xaxes(title_text="step", row=len(layers))
        fig.update_yaxes(title_text="|gamma|", col=1)
        fig.update_layout(title=f"{title} (red: penalised, blue: free, dashed: threshold)")
        return fig

    from matplotlib.lines import Line2D

    fig, axes = mpl_figure(len(layers), len(mods), panel_size, sharex=True)
    for k, (layer, m, name) in enumerate(panels):
        ax = axes[k // len(mods), k % len(mods)]
        sub = frame[(frame["layer"] == layer) & (frame["branch"] == m)]
        for (channel, penalised), line in sub.groupby(["channel", "penalised"], sort=True):
            ax.plot(line["step"], line["abs_gamma"], lw=0.9, alpha=0.75,
                    color=PENALISED_COLOUR if penalised else FREE_COLOUR, label=f"channel {channel}")
        if threshold is not None:
            ax.axhline(threshold, color="black", ls="--", lw=1.0)
        ax.set_title(f"{layer} · {name}", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if k % len(mods) == 0:
            ax.set_ylabel("|gamma|")
        if k // len(mods) == len(layers) - 1:
            ax.set_xlabel("step")
    handles = [Line2D([], [], color=PENALISED_COLOUR, label="penalised"), Line2D([], [], color=FREE_COLOUR, label="free")]
    if threshold is not None:
        handles.append(Line2D([], [], color="black", ls="--", label=f"threshold {threshold:g}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


@reads_run("gammas", threshold="threshold", branches="branches")
def compute_gamma_snapshot(gammas: pd.DataFrame, threshold: float, branches: Sequence[str] | None = None,
                           step: int | None = None, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Gammas of every layer at one logged step (default: the last), with their relation to the threshold.

    Returns
    -------
    pandas.DataFrame
        Columns ``step, layer, branch, branch_name, channel, penalised, gamma, abs_gamma, below_threshold``.
    """
    if gammas.empty:
        raise ValueError("no gamma records")
    steps = np.sort(gammas["step"].unique())
    step = int(steps[-1]) if step is None else int(step)
    if step not in set(steps.tolist()):
        raise ValueError(f"no gammas logged at step {step}; logged steps run {steps[0]}..{steps[-1]}")
    frame = compute_gamma_trajectories(gammas[gammas["step"] == step], branches, layers)
    if branches is None:
        frame["branch_name"] = branch_names(gammas, None)[frame["branch"].to_numpy()]
    frame["below_threshold"] = frame["abs_gamma"] < threshold
    return frame[["step", "layer", "branch", "branch_name", "channel", "penalised", "gamma", "abs_gamma",
                  "below_threshold"]]


@takes('compute_gamma_snapshot', ('step', 'branch', 'branch_name', 'penalised', 'abs_gamma'))
def plot_gamma_snapshot(frame: pd.DataFrame, threshold: float | None = None, *, backend: str = "matplotlib",
                             bins: int = 40, title: str | None = None, panel_size: tuple[float, float] = (4.0, 2.8)):
    """Histograms of |gamma| per branch (all layers pooled), penalised and free channels stacked.

    The panel title reports the portion of penalised gammas below the threshold (the number the reference
    code prints every epoch).

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of ``compute_gamma_snapshot``.
    """
    check_backend(backend)
    if frame.empty:
        raise ValueError("no gamma records to plot")
    mods = branch_table(frame)
    edges = np.linspace(0.0, float(frame["abs_gamma"].max()) * 1.02 + 1e-12, bins + 1)
    step = int(frame["step"].iloc[0])
    title = title or f"|gamma| at step {step}"
    panel_titles = []
    for m, name in mods:
        pen = frame[(frame["branch"] == m) & frame["penalised"]]
        portion = f", {pen['below_threshold'].mean():.0%} of penalised < threshold" if len(pen) and "below_threshold" in pen else ""
        panel_titles.append(f"{name}{portion}")
    if backend == "plotly":
        fig = plotly_grid(1, len(mods), panel_titles, shared_xaxes=False)
        for j, (m, _) in enumerate(mods):
            for penalised, colour in ((True, PENALISED_COLOUR), (False, FREE_COLOUR)):
                sub = frame[(frame["branch"] == m) & (frame["penalised"] == penalised)]
                fig.add_histogram(x=sub["abs_gamma"], xbins=dict(start=edges[0], end=edges[-1], size=edges[1] - edges[0]),
                                  marker_color=colour, name="penalised" if penalised else "free",
                                  showlegend=j == 0, row=1, col=j + 1)
            if threshold is not None:
                fig.add_vline(x=threshold, line_dash="dash", line_color="black", row=1, col=j + 1)
        fig.update_layout(barmode="stack", title=title)
        fig.update_xaxes(title_text="|gamma|")
        fig.update_yaxes(title_text="channels", col=1)
        return fig

    fig, axes = mpl_figure(1, len(mods), panel_size)
    for j, (m, _) in enumerate(mods):
        ax = axes[0, j]
        data = [frame[(frame["branch"] == m) & frame["penalised"]]["abs_gamma"],
                frame[(frame["branch"] == m) & ~frame["penalised"]]["abs_gamma"]]
        ax.hist(data, bins=edges, stacked=True, color=[PENALISED_COLOUR, FREE_COLOUR], label=["penalised", "free"])
        if threshold is not None:
            ax.axvline(threshold, color="black", ls="--", lw=1.0, label=f"threshold {threshold:g}")
        ax.set_title(panel_titles[j], fontsize=9)
        ax.set_xlabel("|gamma|")
        if j == 0:
            ax.set_ylabel("channels")
            ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


@reads_run("gammas", threshold="threshold", branches="branches")
def compute_sparsity(gammas: pd.DataFrame, threshold: float, branches: Sequence[str] | None = None) -> pd.DataFrame:
    """Portion of penalised gammas with |gamma| < threshold per step and branch (all layers pooled).

    Returns
    -------
    pandas.DataFrame
        Columns ``step, branch, branch_name, below_threshold, n_penalised``.
    """
    pen = gammas[gammas["penalised"]]
    names = branch_names(gammas, branches)
    below = (pen["gamma"].abs() < threshold).rename("below")
    out = (pen.assign(below=below).groupby(["step", "branch"], sort=True)["below"]
           .agg(below_threshold="mean", n_penalised="size").reset_index())
    out["branch_name"] = names[out["branch"].to_numpy()]
    return out[["step", "branch", "branch_name", "below_threshold", "n_penalised"]]



plot_gamma_distributions = plot_gamma_snapshot  # its name before 2026-12-04: the frame is compute_gamma_snapshot's


@takes('compute_sparsity', ('step', 'branch', 'branch_name', 'below_threshold'))
def plot_sparsity(frame: pd.DataFrame, *, backend: str = "matplotlib", title: str | None = None,
                  panel_size: tuple[float, float] = (5.0, 3.0)):
    """Portion of penalised gammas below the threshold over training, one line per branch."""
    check_backend(backend)
    title = title or "Penalised gammas below the threshold"
    mods = branch_table(frame)
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title])
        for m, name in mods:
            sub = frame[frame["branch"] == m]
            fig.add_scatter(x=sub["step"], y=sub["below_threshold"], mode="lines", name=name,
                            line=dict(color=BRANCH_COLOURS[m % len(BRANCH_COLOURS)]))
        fig.update_yaxes(title_text="portion", range=[0, 1.02])
        fig.update_xaxes(title_text="step")
        return fig
    fig, axes = mpl_figure(1, 1, panel_size)
    ax = axes[0, 0]
    for m, name in mods:
        sub = frame[frame["branch"] == m]
        ax.plot(sub["step"], sub["below_threshold"], color=BRANCH_COLOURS[m % len(BRANCH_COLOURS)], label=name)
    ax.set(xlabel="step", ylabel="portion", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    return fig
