"""Why Theorem 1's prediction is miscalibrated (``cen_lab.miscalibration``): drift against spread, and the ECE of
the formula next to the check (a) and the corrected prediction (b); and how each predicts which channels CEN
training exchanges (``cen_lab.theory.exchange_predictors``)."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from ._common import takes, BRANCH_COLOURS, ENSEMBLE_COLOUR, FORMULA_COLOUR, check_backend, mpl_figure, plotly_grid

__all__ = ["compute_drift", "plot_drift", "plot_prediction_ece", "plot_exchange_predictors"]


def compute_drift(channels: pd.DataFrame) -> pd.DataFrame:
    """Per channel (``channel_statistics``): ``drift`` = mean of dL/dγ over minibatches in units of ‖dL/dx'‖ (the
    mean correlation of dL/dx' with x̂ over its scale 1/√n; 0 under independence) and ``spread`` = its std in the
    same units (1 under independence), with ``layer``."""
    return pd.DataFrame({"layer": channels["layer"].to_numpy(),
                         "drift": (channels["g_mean"] / channels["norm_mean"]).to_numpy(),
                         "spread": (channels["g_std"] / channels["norm_mean"]).to_numpy()})


@takes('compute_drift', ('layer',))
def plot_drift(frame: pd.DataFrame, *, backend: str = "matplotlib", figsize=(5.4, 4.0)):
    """Each checked channel at (drift, spread); the cross marks (0, 1), where independence puts every channel."""
    check_backend(backend)
    title = "dL/dγ at γ = 0, in units of ‖dL/dx'‖: drift and spread"
    layers = list(dict.fromkeys(frame["layer"]))
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=380)
        for i, layer in enumerate(layers):
            sub = frame[frame["layer"] == layer]
            fig.add_scatter(x=sub["drift"], y=sub["spread"], mode="markers", name=layer,
                            marker=dict(color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)], size=6, opacity=0.6))
        fig.add_scatter(x=[0], y=[1], mode="markers", name="independence (0, 1)",
                        marker=dict(symbol="x", size=14, color=FORMULA_COLOUR))
        fig.update_xaxes(title_text="drift: mean over minibatches")
        fig.update_yaxes(title_text="spread: std over minibatches")
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    for i, layer in enumerate(layers):
        sub = frame[frame["layer"] == layer]
        ax.scatter(sub["drift"], sub["spread"], s=12, alpha=0.6, color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)],
                   label=layer)
    ax.plot([0], [1], "x", ms=12, mew=2.5, color=FORMULA_COLOUR, label="independence (0, 1)")
    ax.axvline(0, color=FORMULA_COLOUR, lw=0.8, ls="--")
    ax.set(xlabel="drift: mean over minibatches", ylabel="spread: std over minibatches", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


@takes('compare_predictions (cen_lab.miscalibration)', ('predictor', 'ece', 'ci_low', 'ci_high'))
def plot_prediction_ece(frame: pd.DataFrame, *, backend: str = "matplotlib", figsize=(6.4, 2.6)):
    """The ECE of each prediction on the same held-out rows, with its 95% bootstrap interval
    (``MiscalibrationResult.ece``)."""
    check_backend(backend)
    title = "Calibration on held-out data"  # the labels say which is a check and which a prediction
    labels = [textwrap.fill(str(p), 28) for p in frame["predictor"]]  # wrapped: long labels squeeze the axes
    lo, hi = frame["ece"] - frame["ci_low"], frame["ci_high"] - frame["ece"]
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=260)
        fig.add_scatter(x=frame["ece"], y=[t.replace("\n", "<br>") for t in labels], mode="markers", error_x=dict(type="data", array=hi, arrayminus=lo),
                        marker=dict(color=ENSEMBLE_COLOUR, size=10), showlegend=False)
        fig.update_xaxes(title_text="ECE (0 = calibrated)", rangemode="tozero")
        fig.update_yaxes(autorange="reversed")
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    y = np.arange(len(labels))
    ax.errorbar(frame["ece"], y, xerr=np.vstack([lo, hi]), fmt="o", color=ENSEMBLE_COLOUR, capsize=3)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set(xlabel="ECE (0 = calibrated)", title=title)
    ax.grid(alpha=0.3)
    return fig


@takes('predictor_scores (cen_lab.theory.exchange_predictors)',
       ('arch', 'predictor', 'AUC', 'AUC low', 'AUC high', 'ECE', 'ECE low', 'ECE high'))
def plot_exchange_predictors(frame: pd.DataFrame, *, backend: str = "matplotlib", figsize=None):
    """Which channels CEN training exchanges, by predictor: the AUC (left; 0.5 is chance, 1 a perfect ranking) and
    the ECE (right; 0 is calibrated), each with its bootstrap interval over runs, one colour per architecture
    (``predictor_scores``); ``figsize`` is one panel's (default: its height grows with the predictors)."""
    check_backend(backend)
    names = list(dict.fromkeys(frame["predictor"]))
    labels = [textwrap.fill(str(p), 34) for p in names]
    archs = list(dict.fromkeys(frame["arch"]))
    offsets = np.linspace(-0.15, 0.15, len(archs)) if len(archs) > 1 else [0.0]
    panels = (("AUC", "AUC (0.5 = chance)", 0.5), ("ECE", "ECE (0 = calibrated)", None))
    title = "Which channels CEN training exchanges"
    if backend == "plotly":
        fig = plotly_grid(1, 2, [f"{title}: ranking", "calibration"], shared_xaxes=False,
                          height_per_row=70 + 45 * len(names), shared_yaxes=True)
        for a, (arch, off) in enumerate(zip(archs, offsets)):
            sub = frame[frame["arch"] == arch].set_index("predictor").reindex(names)
            for col, (measure, _, _) in enumerate(panels, start=1):
                fig.add_scatter(x=sub[measure], y=np.arange(len(names)) + off, mode="markers", name=str(arch),
                                legendgroup=str(arch), showlegend=col == 1,
                                marker=dict(color=BRANCH_COLOURS[a], size=9),
                                error_x=dict(type="data", array=sub[f"{measure} high"] - sub[measure],
                                             arrayminus=sub[measure] - sub[f"{measure} low"]), row=1, col=col)
        for col, (_, axis, ref) in enumerate(panels, start=1):
            fig.update_xaxes(title_text=axis, range=[0, 1.02], row=1, col=col)
            if ref is not None:
                fig.add_vline(x=ref, line=dict(color="grey", dash="dot"), row=1, col=col)
        fig.update_yaxes(tickvals=list(range(len(names))), ticktext=[t.replace("\n", "<br>") for t in labels],
                         autorange="reversed", row=1, col=1)
        return fig
    fig, axes = mpl_figure(1, 2, figsize or (4.2, 1.2 + 0.5 * len(names)), sharey=True)
    for col, (measure, axis, ref) in enumerate(panels):
        ax = axes[0, col]
        for a, (arch, off) in enumerate(zip(archs, offsets)):
            sub = frame[frame["arch"] == arch].set_index("predictor").reindex(names)
            err = np.vstack([sub[measure] - sub[f"{measure} low"], sub[f"{measure} high"] - sub[measure]])
            ax.errorbar(sub[measure], np.arange(len(names)) + off, xerr=err, fmt="o", capsize=3,
                        color=BRANCH_COLOURS[a], label=str(arch))
        if ref is not None:
            ax.axvline(ref, ls=":", color="grey")
        ax.set(xlim=(0, 1.02), xlabel=axis, title=f"{title}: ranking" if col == 0 else "calibration")
        ax.grid(alpha=0.3)
    axes[0, 0].set_yticks(np.arange(len(names)), labels, fontsize=8)
    axes[0, 0].invert_yaxis()
    axes[0, 0].legend(fontsize=8, frameon=False, loc="best")
    return fig
