"""Figures of the channel-exchange maps: maps over time, snapshots and their animation, ratios, flip events."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ._common import (reads_run, takes, KEPT_COLOUR, MEAN_COLOUR, BRANCH_COLOURS, check_backend, branch_names, branch_table,
                      mpl_figure, plotly_grid, select_layers, sort_by_layer)

__all__ = ["compute_exchange_snapshot", "compute_exchange_animation", "compute_exchange_maps", "plot_exchange_maps", "plot_exchange_snapshot", "plot_exchange_animation",
           "compute_exchange_ratio", "plot_exchange_ratio", "compute_flip_events", "compute_flip_counts",
           "plot_flip_counts"]


@reads_run("exchange", branches="branches")
def compute_exchange_maps(exchange: pd.DataFrame, branches: Sequence[str] | None = None,
                          layers: Sequence[str] | None = None) -> pd.DataFrame:
    """The exchange state of every channel at every logged step.

    Returns
    -------
    pandas.DataFrame
        Columns ``layer, branch, branch_name, channel, step, exchanged, source, code, state``: ``code`` is
        0 when kept, ``1 + j`` when received from branch j, ``M + 1`` when it is the mean of all others;
        ``state`` is the same as text (``"kept"``, ``"from <name>"``, ``"mean of others"``).
    """
    df, order = select_layers(exchange, layers)
    names = branch_names(exchange, branches)
    n_branch = len(names)
    source = df["source"].to_numpy()
    code = np.where(~df["exchanged"].to_numpy(), 0, np.where(source < 0, n_branch + 1, source + 1))
    labels = np.array(["kept"] + [f"from {n}" for n in names] + ["mean of others"], dtype=object)
    out = pd.DataFrame({
        "layer": df["layer"].astype(str).to_numpy(), "branch": df["branch"].to_numpy(),
        "branch_name": names[df["branch"].to_numpy()], "channel": df["channel"].to_numpy(),
        "step": df["step"].to_numpy(), "exchanged": df["exchanged"].to_numpy(), "source": source,
        "code": code.astype(np.int64), "state": labels[code],
    })
    out.attrs["state_labels"] = list(labels)
    return sort_by_layer(out, order, ["branch", "channel", "step"])


def _palette(n_branch: int) -> list[str]:
    return [KEPT_COLOUR] + [BRANCH_COLOURS[j % len(BRANCH_COLOURS)] for j in range(n_branch)] + [MEAN_COLOUR]


def _discrete_scale(colours: list[str]) -> list[list]:
    """A plotly colorscale with one flat band per state (use with zmin=-0.5, zmax=len(colours)-0.5)."""
    n = len(colours)
    return [[v, colour] for k, colour in enumerate(colours) for v in (k / n, (k + 1) / n)]


def _labels(frame: pd.DataFrame) -> list[str]:
    return frame.attrs.get("state_labels") or (
        ["kept"] + [f"from {n}" for _, n in branch_table(frame)] + ["mean of others"])


@takes('compute_exchange_maps', ('layer', 'branch', 'branch_name', 'channel', 'step', 'code', 'state'))
def plot_exchange_maps(frame: pd.DataFrame, *, backend: str = "matplotlib", title: str | None = None,
                       panel_size: tuple[float, float] = (4.2, 2.2)):
    """Channel x step maps per (layer, branch): which channels are exchanged, and from which branch.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of ``compute_exchange_maps``.
    """
    check_backend(backend)
    if frame.empty:
        raise ValueError("no exchange records to plot")
    labels = _labels(frame)
    colours = _palette(len(labels) - 2)
    layers = list(dict.fromkeys(frame["layer"]))
    mods = branch_table(frame)
    steps = np.sort(frame["step"].unique())
    title = title or "Exchange maps over training"
    panels = [(layer, m, name) for layer in layers for m, name in mods]

    def matrix(layer: str, m: int) -> np.ndarray:  # [C, steps]
        sub = frame[(frame["layer"] == layer) & (frame["branch"] == m)]
        return sub.pivot(index="channel", columns="step", values="code").reindex(columns=steps).to_numpy()

    if backend == "plotly":
        n = len(colours)
        scale = _discrete_scale(colours)
        fig = plotly_grid(len(layers), len(mods), [f"{layer} · {name}" for layer, _, name in panels])
        for k, (layer, m, _) in enumerate(panels):
            z = matrix(layer, m)
            text = np.asarray(labels, dtype=object)[np.nan_to_num(z, nan=0).astype(int)]
            fig.add_heatmap(z=z, x=steps, y=np.arange(z.shape[0]), zmin=-0.5, zmax=n - 0.5, colorscale=scale,
                            showscale=k == 0, text=text, hovertemplate="step %{x}<br>channel %{y}<br>%{text}<extra></extra>",
                            colorbar=dict(tickvals=list(range(n)), ticktext=labels, title="state"),
                            row=k // len(mods) + 1, col=k % len(mods) + 1)
        fig.update_xaxes(title_text="step", row=len(layers))
        fig.update_yaxes(title_text="channel", col=1)
        fig.update_layout(title=title)
        return fig

    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(len(colours) + 1) - 0.5, len(colours))
    fig, axes = mpl_figure(len(layers), len(mods), panel_size, sharex=True)
    for k, (layer, m, name) in enumerate(panels):
        ax = axes[k // len(mods), k % len(mods)]
        z = matrix(layer, m)
        ax.imshow(z, aspect="auto", interpolation="nearest", origin="lower", cmap=cmap, norm=norm,
                  extent=(steps[0], steps[-1], -0.5, z.shape[0] - 0.5))
        ax.set_title(f"{layer} · {name}", fontsize=9)
        if k % len(mods) == 0:
            ax.set_ylabel("channel")
        if k // len(mods) == len(layers) - 1:
            ax.set_xlabel("step")
    fig.legend(handles=[Patch(color=c, label=lab) for c, lab in zip(colours, labels)], loc="outside lower center",
               ncols=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def _snapshot(frame: pd.DataFrame, step: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """[rows = (layer, branch), cols = channel] codes at ``step`` (NaN where a layer has fewer channels)."""
    sub = frame[frame["step"] == step]
    if sub.empty:
        raise ValueError(f"no exchange records at step {step}")
    rows = list(dict.fromkeys(zip(sub["layer"], sub["branch_name"])))
    width = int(sub["channel"].max()) + 1
    z = np.full((len(rows), width), np.nan)
    index = {r: i for i, r in enumerate(rows)}
    r = np.array([index[key] for key in zip(sub["layer"], sub["branch_name"])])
    z[r, sub["channel"].to_numpy()] = sub["code"].to_numpy()
    return z, [f"{layer} · {name}" for layer, name in rows], np.arange(width)


@takes('compute_exchange_snapshot (= compute_exchange_maps)', ('layer', 'branch', 'branch_name', 'channel', 'step', 'code', 'state'))
def plot_exchange_snapshot(frame: pd.DataFrame, step: int, *, backend: str = "matplotlib", title: str | None = None,
                           figsize: tuple[float, float] = (7.0, 3.0)):
    """All exchange maps at one step: rows are (layer, branch), columns channels."""
    check_backend(backend)
    labels = _labels(frame)
    colours = _palette(len(labels) - 2)
    z, rows, channels = _snapshot(frame, step)
    title = title or f"Exchange state at step {step}"
    if backend == "plotly":
        import plotly.graph_objects as go

        n = len(colours)
        scale = _discrete_scale(colours)
        fig = go.Figure(go.Heatmap(z=z, x=channels, y=rows, zmin=-0.5, zmax=n - 0.5, colorscale=scale,
                                   colorbar=dict(tickvals=list(range(n)), ticktext=labels)))
        fig.update_layout(title=title, template="plotly_white", xaxis_title="channel", height=120 + 30 * len(rows))
        return fig
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.subplots()
    ax.imshow(np.ma.masked_invalid(z), aspect="auto", interpolation="nearest", cmap=ListedColormap(colours),
              norm=BoundaryNorm(np.arange(len(colours) + 1) - 0.5, len(colours)))
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("channel")
    ax.set_title(title, fontsize=10)
    fig.legend(handles=[Patch(color=c, label=lab) for c, lab in zip(colours, labels)], loc="outside lower center",
               ncols=len(labels), fontsize=8, frameon=False)
    return fig


@takes('compute_exchange_animation (= compute_exchange_maps)', ('layer', 'branch', 'branch_name', 'channel', 'step', 'code', 'state'))
def plot_exchange_animation(frame: pd.DataFrame, *, title: str | None = None, frame_ms: int = 150):
    """Plotly only: the exchange snapshot animated over the logged steps, with a step slider and play button."""
    import plotly.graph_objects as go

    labels = _labels(frame)
    colours = _palette(len(labels) - 2)
    n = len(colours)
    scale = _discrete_scale(colours)
    steps = [int(s) for s in np.sort(frame["step"].unique())]
    first, rows, channels = _snapshot(frame, steps[0])
    heat = dict(x=channels, y=rows, zmin=-0.5, zmax=n - 0.5, colorscale=scale,
                colorbar=dict(tickvals=list(range(n)), ticktext=labels))
    fig = go.Figure(go.Heatmap(z=first, **heat),
                    frames=[go.Frame(data=[go.Heatmap(z=_snapshot(frame, s)[0], **heat)], name=str(s)) for s in steps])
    play = dict(frame=dict(duration=frame_ms, redraw=True), fromcurrent=True, transition=dict(duration=0))
    fig.update_layout(
        title=title or "Exchange state over training", template="plotly_white", xaxis_title="channel",
        height=200 + 30 * len(rows),
        updatemenus=[dict(type="buttons", x=0, y=-0.15, xanchor="left", showactive=False, buttons=[
            dict(label="play", method="animate", args=[None, play]),
            dict(label="pause", method="animate", args=[[None], dict(mode="immediate", frame=dict(duration=0))])])],
        sliders=[dict(active=0, x=0.12, len=0.88, y=-0.1, currentvalue=dict(prefix="step "),
                      steps=[dict(label=str(s), method="animate",
                                  args=[[str(s)], dict(mode="immediate", frame=dict(duration=0, redraw=True))])
                             for s in steps])],
    )
    return fig


# the snapshot and the animation draw the same frame as the maps; these names pair them with their plot_*
compute_exchange_snapshot = compute_exchange_maps
compute_exchange_animation = compute_exchange_maps


@reads_run("exchange", branches="branches")
def compute_exchange_ratio(exchange: pd.DataFrame, branches: Sequence[str] | None = None) -> pd.DataFrame:
    """Portion of exchanged channels per step, layer and branch.

    Returns
    -------
    pandas.DataFrame
        Columns ``step, layer, branch, branch_name, ratio``.
    """
    names = branch_names(exchange, branches)
    _, order = select_layers(exchange, None)
    out = (exchange.assign(layer=exchange["layer"].astype(str))
           .groupby(["layer", "branch", "step"], sort=False)["exchanged"].mean().rename("ratio").reset_index())
    out["branch_name"] = names[out["branch"].to_numpy()]
    out = sort_by_layer(out, order, ["branch", "step"])
    return out[["step", "layer", "branch", "branch_name", "ratio"]]


@takes('compute_exchange_ratio', ('step', 'layer', 'branch', 'branch_name', 'ratio'))
def plot_exchange_ratio(frame: pd.DataFrame, *, backend: str = "matplotlib", title: str | None = None,
                        panel_size: tuple[float, float] = (4.2, 2.8)):
    """Exchange ratio over training: one panel per branch, one line per layer."""
    check_backend(backend)
    mods = branch_table(frame)
    layers = list(dict.fromkeys(frame["layer"]))
    title = title or "Exchange ratio over training"
    if backend == "plotly":
        fig = plotly_grid(1, len(mods), [name for _, name in mods])
        for j, (m, _) in enumerate(mods):
            for i, layer in enumerate(layers):
                sub = frame[(frame["branch"] == m) & (frame["layer"] == layer)]
                fig.add_scatter(x=sub["step"], y=sub["ratio"], mode="lines", name=layer, legendgroup=layer,
                                showlegend=j == 0, line=dict(color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)]),
                                row=1, col=j + 1)
        fig.update_yaxes(title_text="exchanged portion", range=[0, 1.02], col=1)
        fig.update_xaxes(title_text="step")
        fig.update_layout(title=title)
        return fig
    fig, axes = mpl_figure(1, len(mods), panel_size, sharey=True)
    for j, (m, name) in enumerate(mods):
        ax = axes[0, j]
        for i, layer in enumerate(layers):
            sub = frame[(frame["branch"] == m) & (frame["layer"] == layer)]
            ax.plot(sub["step"], sub["ratio"], label=layer, color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)])
        ax.set(title=name, xlabel="step", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("exchanged portion")
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


@reads_run("exchange", branches="branches")
def compute_flip_events(exchange: pd.DataFrame, branches: Sequence[str] | None = None) -> pd.DataFrame:
    """Channels entering or leaving exchange between consecutive logged steps.

    Returns
    -------
    pandas.DataFrame
        Columns ``step, layer, branch, branch_name, channel, event``; ``event`` is ``"enter"`` (exchanged at
        ``step`` but not at the previous logged step) or ``"leave"``.
    """
    names = branch_names(exchange, branches)
    df = exchange.sort_values(["layer", "branch", "channel", "step"], kind="stable")
    prev = df.groupby(["layer", "branch", "channel"], sort=False)["exchanged"].shift()
    changed = prev.notna() & (prev.astype("boolean") != df["exchanged"])
    ev = df[changed.to_numpy(dtype=bool)]
    out = pd.DataFrame({
        "step": ev["step"].to_numpy(), "layer": ev["layer"].astype(str).to_numpy(),
        "branch": ev["branch"].to_numpy(), "branch_name": names[ev["branch"].to_numpy()],
        "channel": ev["channel"].to_numpy(),
        "event": np.where(ev["exchanged"].to_numpy(), "enter", "leave").astype(object),
    })
    return out.sort_values(["step", "layer", "branch", "channel"], kind="stable").reset_index(drop=True)


@reads_run("exchange", branches="branches")
def compute_flip_counts(exchange: pd.DataFrame, branches: Sequence[str] | None = None) -> pd.DataFrame:
    """Number of channels entering and leaving exchange per logged step and branch (all layers pooled),
    zeros included.

    Returns
    -------
    pandas.DataFrame
        Columns ``step, branch, branch_name, entered, left``.
    """
    names = branch_names(exchange, branches)
    events = compute_flip_events(exchange, branches)
    grid = pd.MultiIndex.from_product([np.sort(exchange["step"].unique()), np.sort(exchange["branch"].unique())],
                                      names=["step", "branch"])
    counts = (events.assign(entered=events["event"] == "enter", left=events["event"] == "leave")
              .groupby(["step", "branch"])[["entered", "left"]].sum()
              .reindex(grid, fill_value=0).astype("int64").reset_index())
    counts["branch_name"] = names[counts["branch"].to_numpy()]
    return counts[["step", "branch", "branch_name", "entered", "left"]]


@takes('compute_flip_counts', ('step', 'branch', 'branch_name', 'entered', 'left'))
def plot_flip_counts(frame: pd.DataFrame, *, backend: str = "matplotlib", title: str | None = None,
                     panel_size: tuple[float, float] = (4.2, 2.6)):
    """Channels entering (up) and leaving (down) exchange per logged step, one panel per branch."""
    check_backend(backend)
    mods = branch_table(frame)
    title = title or "Channels entering and leaving exchange"
    if backend == "plotly":
        fig = plotly_grid(1, len(mods), [name for _, name in mods])
        for j, (m, _) in enumerate(mods):
            sub = frame[frame["branch"] == m]
            fig.add_bar(x=sub["step"], y=sub["entered"], name="entered", marker_color="#c0392b", showlegend=j == 0,
                        row=1, col=j + 1)
            fig.add_bar(x=sub["step"], y=-sub["left"], name="left", marker_color="#2e86c1", showlegend=j == 0,
                        row=1, col=j + 1)
        fig.update_layout(barmode="relative", title=title)
        fig.update_yaxes(title_text="channels", col=1)
        fig.update_xaxes(title_text="step")
        return fig
    fig, axes = mpl_figure(1, len(mods), panel_size, sharey=True)
    for j, (m, name) in enumerate(mods):
        ax = axes[0, j]
        sub = frame[frame["branch"] == m]
        width = float(np.diff(np.sort(sub["step"].unique())).min()) if sub["step"].nunique() > 1 else 1.0
        ax.bar(sub["step"], sub["entered"], width=width, color="#c0392b", label="entered")
        ax.bar(sub["step"], -sub["left"], width=width, color="#2e86c1", label="left")
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=name, xlabel="step")
    axes[0, 0].set_ylabel("channels")
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig
