"""Figures of run data: ``compute_*`` prepares a tidy frame (tested exactly), ``plot_*`` draws it.

``plot_*`` functions take such a frame and return a ``matplotlib.figure.Figure`` built without pyplot: they
never show or save anything themselves and leave no global state behind.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["compute_gamma_trajectories", "plot_gamma_trajectories"]

PENALISED_COLOUR = "#c0392b"
FREE_COLOUR = "#2e86c1"


def compute_gamma_trajectories(gammas: pd.DataFrame, modalities: Sequence[str] | None = None,
                               layers: Sequence[str] | None = None) -> pd.DataFrame:
    """|gamma| over training per layer, modality and channel.

    Parameters
    ----------
    gammas : pandas.DataFrame
        The ``gammas`` table of a run (``Run.gammas``).
    modalities : sequence of str, optional
        Names of the modality indices (``Run.modalities``); default ``"m0"``, ``"m1"``, ...
    layers : sequence of str, optional
        Keep only these layers (default: all, in depth order of first appearance).

    Returns
    -------
    pandas.DataFrame
        Columns ``layer, modality, modality_name, channel, penalised, step, gamma, abs_gamma``, sorted by
        layer (input order), modality, channel and step.
    """
    df = gammas
    order = list(dict.fromkeys(df["layer"])) if layers is None else list(layers)
    unknown = [name for name in order if name not in set(df["layer"])]
    if unknown:
        raise ValueError(f"no layer {unknown[0]!r} in the gammas table; it has {sorted(set(df['layer']))}")
    df = df[df["layer"].isin(order)]
    n_mod = int(df["modality"].max()) + 1 if len(df) else 0
    names = list(modalities) if modalities is not None else [f"m{i}" for i in range(n_mod)]
    if len(names) < n_mod:
        raise ValueError(f"{n_mod} modalities in the table but only {len(names)} names given")
    out = pd.DataFrame({
        "layer": df["layer"].astype(str).to_numpy(),
        "modality": df["modality"].to_numpy(),
        "modality_name": np.asarray(names, dtype=object)[df["modality"].to_numpy()],
        "channel": df["channel"].to_numpy(),
        "penalised": df["penalised"].to_numpy(),
        "step": df["step"].to_numpy(),
        "gamma": df["gamma"].to_numpy(),
        "abs_gamma": np.abs(df["gamma"].to_numpy()),
    })
    out["layer_order"] = out["layer"].map({name: i for i, name in enumerate(order)})
    out = out.sort_values(["layer_order", "modality", "channel", "step"], kind="stable")
    return out.drop(columns="layer_order").reset_index(drop=True)


def plot_gamma_trajectories(frame: pd.DataFrame, threshold: float | None = None, *, title: str | None = None,
                            panel_size: tuple[float, float] = (3.6, 2.4)):
    """|gamma| trajectories: one panel per (layer, modality), one line per channel.

    Penalised channels are drawn red, free channels blue; the exchange threshold is a dashed line.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of ``compute_gamma_trajectories``.
    threshold : float, optional
        The exchange threshold (``config.model.threshold``).

    Returns
    -------
    matplotlib.figure.Figure
        Rows are layers, columns modalities; each axes' title is ``"<layer> · <modality>"``.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if frame.empty:
        raise ValueError("no gamma records to plot")
    layers = list(dict.fromkeys(frame["layer"]))
    mods = frame[["modality", "modality_name"]].drop_duplicates().sort_values("modality")
    fig = Figure(figsize=(panel_size[0] * len(mods), panel_size[1] * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), len(mods), sharex=True, squeeze=False)
    for i, layer in enumerate(layers):
        for j, (mod, mod_name) in enumerate(mods.itertuples(index=False)):
            ax = axes[i, j]
            sub = frame[(frame["layer"] == layer) & (frame["modality"] == mod)]
            for (channel, penalised), line in sub.groupby(["channel", "penalised"], sort=True):
                ax.plot(line["step"], line["abs_gamma"], lw=0.9, alpha=0.75,
                        color=PENALISED_COLOUR if penalised else FREE_COLOUR, label=f"channel {channel}")
            if threshold is not None:
                ax.axhline(threshold, color="black", ls="--", lw=1.0)
            ax.set_title(f"{layer} · {mod_name}", fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("|gamma|")
            if i == len(layers) - 1:
                ax.set_xlabel("step")
    handles = [Line2D([], [], color=PENALISED_COLOUR, label="penalised"), Line2D([], [], color=FREE_COLOUR, label="free")]
    if threshold is not None:
        handles.append(Line2D([], [], color="black", ls="--", label=f"threshold {threshold:g}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title or "BN scaling factors over training", fontsize=11)
    return fig
