"""The lambda figure: the predicted portion of penalised gammas under the threshold against lambda, with its band,
plain Theorem 1's, the probes' lambdas and the held-out runs' measured portions (``cen_lab.predict_exchange``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._common import FORMULA_COLOUR, MEAN_COLOUR, PENALISED_COLOUR, check_backend, mpl_figure, takes

__all__ = ["compute_lambda_curve", "plot_lambda_curve"]

PREDICTION_COLOUR = "#1f77b4"


def compute_lambda_curve(prediction: Any, validation: pd.DataFrame | None = None) -> pd.DataFrame:
    """The frame of ``plot_lambda_curve``: rows of ``kind``

    - ``"prediction"``: ``lam``, ``value`` (predicted portion), ``low``, ``high`` (its interval), ``theorem1``;
    - ``"probe"``: ``lam`` of every probe the prediction came from;
    - ``"validation"``: ``lam``, ``value`` (a full run's final portion), ``seed``, from ``validation`` (columns
      ``lam``, ``actual`` and optionally ``seed``: ``cen-lab bench-lambda``'s table, or ``held_out_portions``).

    Every row has ``budget``, ``threshold`` and ``level``.
    """
    t = prediction.table
    frames = [pd.DataFrame({"kind": "prediction", "lam": t["lam"].to_numpy(float),
                            "value": t["predicted"].to_numpy(float), "low": t["low"].to_numpy(float),
                            "high": t["high"].to_numpy(float), "theorem1": t["theorem1"].to_numpy(float)}),
              pd.DataFrame({"kind": "probe", "lam": [f.lam for f in (prediction.fits or [prediction.fit])]})]
    if validation is not None and len(validation):
        missing = [c for c in ("lam", "actual") if c not in validation.columns]
        if missing:
            raise ValueError(f"validation needs the columns lam and actual (a full run's final portion); "
                             f"it lacks {missing}")
        frames.append(pd.DataFrame({"kind": "validation", "lam": validation["lam"].to_numpy(float),
                                    "value": validation["actual"].to_numpy(float),
                                    "seed": validation["seed"].to_numpy() if "seed" in validation else np.nan}))
    out = pd.concat(frames, ignore_index=True)
    out["budget"] = prediction.budget
    out["threshold"] = prediction.fit.threshold
    out["level"] = prediction.level
    return out


@takes("compute_lambda_curve", ("kind", "lam", "value", "low", "high", "theorem1", "budget", "threshold", "level"))
def plot_lambda_curve(frame: pd.DataFrame, *, title: str | None = None, backend: str = "matplotlib",
                      figsize=(6.4, 4.0)):
    """The predicted final portion under the threshold against lambda (log axis), its interval as a band, plain
    Theorem 1's portion dashed, the probes' lambdas as grey ticks, the held-out runs' measured portions as dots;
    shaded: the ``collapsing`` (>= 0.9) and ``none`` (< 0.01) zones of the predicted state."""
    check_backend(backend)
    p = frame[frame["kind"] == "prediction"].sort_values("lam")
    if p.empty:
        raise ValueError("no prediction rows to plot")
    v = frame[frame["kind"] == "validation"]
    probes = frame.loc[frame["kind"] == "probe", "lam"].to_numpy(float)
    budget, level = int(p["budget"].iloc[0]), float(p["level"].iloc[0])
    title = title or f"Exchange at step {budget}: predicted from a probe, against held-out runs"
    ylabel = f"penalised gammas under the threshold ({float(p['threshold'].iloc[0]):g}) at step {budget}"
    band = f"predicted ({level:.0%} interval)"
    if backend == "plotly":
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_scatter(x=np.r_[p["lam"], p["lam"][::-1]], y=np.r_[p["high"], p["low"][::-1]], fill="toself",
                        line=dict(width=0), fillcolor="rgba(31,119,180,0.2)", name=band, hoverinfo="skip")
        fig.add_scatter(x=p["lam"], y=p["value"], mode="lines+markers", name="predicted",
                        line=dict(color=PREDICTION_COLOUR))
        fig.add_scatter(x=p["lam"], y=p["theorem1"], mode="lines", name="plain Theorem 1",
                        line=dict(color=FORMULA_COLOUR, dash="dash"))
        if len(v):
            fig.add_scatter(x=v["lam"], y=v["value"], mode="markers", name="held-out full runs",
                            marker=dict(color=PENALISED_COLOUR, size=8, symbol="circle-open", line=dict(width=2)))
        for lam in probes:
            fig.add_vline(x=lam, line_color=MEAN_COLOUR, line_dash="dot")
        fig.add_hrect(y0=0.9, y1=1.02, fillcolor="#999999", opacity=0.15, line_width=0)
        fig.update_xaxes(type="log", title_text="lambda (per step; dotted: the probes')")
        fig.update_yaxes(range=[-0.02, 1.02], title_text=ylabel)
        fig.update_layout(title=title, height=420)
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    ax.axhspan(0.9, 1.02, color="#999999", alpha=0.15, lw=0)
    ax.axhspan(-0.02, 0.01, color="#999999", alpha=0.15, lw=0)
    ax.text(0.5, 0.95, "collapsing (>= 0.9)", transform=ax.get_yaxis_transform(), ha="center", va="center",
            fontsize=7, color="#555555")  # the curve rises left to right: the middle and the right are clear
    ax.text(0.99, 0.0, "none (< 0.01)", transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=7,
            color="#555555")
    ax.fill_between(p["lam"], p["low"], p["high"], color=PREDICTION_COLOUR, alpha=0.2, lw=0, label=band)
    ax.plot(p["lam"], p["value"], "-o", color=PREDICTION_COLOUR, ms=3, label="predicted")
    ax.plot(p["lam"], p["theorem1"], "--", color=FORMULA_COLOUR, lw=1, label="plain Theorem 1")
    if len(v):
        ax.scatter(v["lam"], v["value"], s=28, facecolors="none", edgecolors=PENALISED_COLOUR, lw=1.5,
                   label="held-out full runs", zorder=3)
    for i, lam in enumerate(probes):
        ax.axvline(lam, color=MEAN_COLOUR, ls=":", lw=1, label="probe lambdas" if i == 0 else None)
    ax.set(xscale="log", ylim=(-0.02, 1.02), xlabel="lambda (per step)", ylabel=ylabel, title=title)
    ax.yaxis.label.set_size(8)
    ax.title.set_size(9)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return fig
