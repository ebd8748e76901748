"""Theorem 1 across training regimes (``cen_lab.theory.regimes.compare_regimes``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import takes, ENSEMBLE_COLOUR, FORMULA_COLOUR, check_backend, mpl_figure, plotly_grid

__all__ = ["plot_regime_calibration", "plot_regime_outcome"]

# (column, its interval's columns, panel title, x-axis label, the value under the theorem)
_PANELS = [("ece", "ece_low", "ece_high", "Calibration error (ECE)", "ECE, 0 = calibrated", 0.0),
           ("spearman", "spearman_low", "spearman_high", "Ranking of channels (Spearman)", "Spearman, 1 = perfect", 1.0),
           ("z_mean", None, None, "Drift: mean of dL/dγ / ‖dL/dx'‖", "mean, 0 under independence", 0.0)]


@takes('compare_regimes(...).calibration (cen_lab.theory.regimes)', ('regime',))
def plot_regime_calibration(frame: pd.DataFrame, *, backend: str = "matplotlib", panel_size=(3.6, 2.8)):
    """Per regime (rows of ``RegimeComparison.calibration``): the ECE and the Spearman correlation of the
    prediction at gamma = 0 with their 95% bootstrap intervals, and the mean of ``dL/dgamma / ||dL/dx'||``; a
    dashed line marks each value under the theorem."""
    check_backend(backend)
    labels = list(frame["regime"])
    y = np.arange(len(labels))
    if backend == "plotly":
        fig = plotly_grid(1, len(_PANELS), [p[3] for p in _PANELS], shared_xaxes=False, height_per_row=320,
                          shared_yaxes=True)
        for j, (col, lo, hi, _, xlabel, ideal) in enumerate(_PANELS, 1):
            err = None if lo is None else dict(type="data", array=frame[hi] - frame[col], arrayminus=frame[col] - frame[lo])
            fig.add_scatter(x=frame[col], y=labels, error_x=err, mode="markers", showlegend=False,
                            marker=dict(color=ENSEMBLE_COLOUR, size=9), row=1, col=j)
            fig.add_vline(x=ideal, line_dash="dash", line_color=FORMULA_COLOUR, row=1, col=j)
            fig.update_xaxes(title_text=xlabel, row=1, col=j)
        return fig
    fig, axes = mpl_figure(1, len(_PANELS), panel_size, sharey=True)
    for ax, (col, lo, hi, title, xlabel, ideal) in zip(axes[0], _PANELS):
        xerr = None if lo is None else np.vstack([frame[col] - frame[lo], frame[hi] - frame[col]])
        ax.errorbar(frame[col], y, xerr=xerr, fmt="o", color=ENSEMBLE_COLOUR, capsize=3)
        ax.axvline(ideal, ls="--", color=FORMULA_COLOUR, lw=1)
        ax.set(title=title, xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yticks(y, labels)
    axes[0, 0].invert_yaxis()
    return fig


@takes('compare_regimes(...).outcome (cen_lab.theory.regimes)', ('regime',))
def plot_regime_outcome(frame: pd.DataFrame, *, backend: str = "matplotlib", panel_size=(3.4, 3.0)):
    """Channels ending at zero per lam, observed (95% Wilson) against predicted at the first checkpoint; one panel
    per regime (``RegimeComparison.outcome``)."""
    check_backend(backend)
    regimes = list(dict.fromkeys(frame["regime"]))
    title = "Channels ending at zero: observed vs predicted"
    if backend == "plotly":
        fig = plotly_grid(1, len(regimes), regimes, shared_xaxes=False, height_per_row=340)
        for j, regime in enumerate(regimes, 1):
            sub = frame[frame["regime"] == regime]
            fig.add_scatter(x=sub["lam"], y=sub["observed"], mode="markers", name="observed", showlegend=j == 1,
                            error_y=dict(type="data", array=sub["ci_high"] - sub["observed"],
                                         arrayminus=sub["observed"] - sub["ci_low"]),
                            marker=dict(color=ENSEMBLE_COLOUR), row=1, col=j)
            fig.add_scatter(x=sub["lam"], y=sub["predicted"], mode="lines+markers", name="predicted", showlegend=j == 1,
                            line=dict(color=FORMULA_COLOUR), row=1, col=j)
            fig.update_xaxes(type="log", title_text="λ", row=1, col=j)
        fig.update_yaxes(range=[-0.02, 1.02], title_text="fraction at zero", col=1)
        fig.update_layout(title=title)
        return fig
    fig, axes = mpl_figure(1, len(regimes), panel_size, sharey=True)
    for j, (ax, regime) in enumerate(zip(axes[0], regimes)):
        sub = frame[frame["regime"] == regime]
        err = np.vstack([sub["observed"] - sub["ci_low"], sub["ci_high"] - sub["observed"]])
        ax.errorbar(sub["lam"], sub["observed"], yerr=err, fmt="o", color=ENSEMBLE_COLOUR, capsize=3,
                    label="observed (95% Wilson)")
        ax.plot(sub["lam"], sub["predicted"], "s-", color=FORMULA_COLOUR, label="predicted (first checkpoint)")
        ax.set(xscale="log", xlabel="λ", ylim=(-0.02, 1.02), title=regime)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("fraction at zero")
    axes[0, 0].legend(fontsize=7, frameon=False)
    fig.suptitle(title)
    return fig
