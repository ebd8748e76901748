"""The figure of ``cen_lab.diagnose``: the portion of gammas under the threshold over training (penalised per
branch, unpenalised as the control), and when the penalised channels crossed against when the schedule says."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import BRANCH_COLOURS, FORMULA_COLOUR, check_backend, mpl_figure, plotly_grid, takes

__all__ = ["compute_diagnosis", "plot_diagnosis"]


def compute_diagnosis(diagnosis) -> pd.DataFrame:
    """One tidy frame of a ``Diagnosis``: ``kind`` ``"portion"`` rows (step, series, value: the portion under the
    threshold, summed over layers by channel count) and ``"crossing"`` / ``"predicted"`` rows (step, one per
    channel)."""
    p = diagnosis.portion
    p = p.assign(count=p["below"] * p["n"])
    pen = p[p["penalised"]].groupby(["step", "branch_name"], sort=False)[["count", "n"]].sum().reset_index()
    free = p[~p["penalised"]].groupby("step")[["count", "n"]].sum().reset_index()
    rows = [pd.DataFrame({"kind": "portion", "step": pen["step"], "series": "penalised: " + pen["branch_name"],
                          "value": pen["count"] / pen["n"]})]
    if not free.empty:
        rows.append(pd.DataFrame({"kind": "portion", "step": free["step"], "series": "unpenalised (control)",
                                  "value": free["count"] / free["n"]}))
    for kind, col in (("crossing", "crossing_step"), ("predicted", "predicted_step")):
        steps = diagnosis.crossings[col].dropna().astype("int64")
        rows.append(pd.DataFrame({"kind": kind, "step": steps.to_numpy(), "series": kind, "value": 1.0}))
    return pd.concat(rows, ignore_index=True)


@takes("compute_diagnosis", ("kind", "step", "series", "value"))
def plot_diagnosis(frame: pd.DataFrame, *, title: str | None = None, backend: str = "matplotlib",
                   panel_size=(4.6, 3.0)):
    """Left: the portion under the threshold per series over steps. Right: histograms of the penalised channels'
    crossing steps and of the steps the schedule predicts for them."""
    check_backend(backend)
    portion = frame[frame["kind"] == "portion"]
    series = list(dict.fromkeys(portion["series"]))
    colour = {s: ("#999999" if s.startswith("unpenalised") else BRANCH_COLOURS[i % len(BRANCH_COLOURS)])
              for i, s in enumerate(series)}
    cross, pred = frame[frame["kind"] == "crossing"]["step"], frame[frame["kind"] == "predicted"]["step"]
    both = np.concatenate([cross.to_numpy(), pred.to_numpy()])
    bins = np.linspace(both.min(), both.max() + 1, 21) if len(both) else np.linspace(0, 1, 2)
    titles = ["under the threshold", "crossing steps"]
    title = title or "Diagnosis"
    if backend == "plotly":
        fig = plotly_grid(1, 2, titles, shared_xaxes=False)
        for s in series:
            sub = portion[portion["series"] == s]
            fig.add_scatter(x=sub["step"], y=sub["value"], mode="lines", name=s, line=dict(color=colour[s]),
                            row=1, col=1)
        fig.add_histogram(x=cross, name="crossed", xbins=dict(start=bins[0], end=bins[-1],
                                                              size=bins[1] - bins[0]), row=1, col=2)
        fig.add_histogram(x=pred, name="schedule predicts", opacity=0.5, marker_color=FORMULA_COLOUR,
                          xbins=dict(start=bins[0], end=bins[-1], size=bins[1] - bins[0]), row=1, col=2)
        fig.update_layout(title=title, barmode="overlay")
        return fig
    fig, axes = mpl_figure(1, 2, panel_size)
    ax = axes[0, 0]
    for s in series:
        sub = portion[portion["series"] == s]
        ax.plot(sub["step"], sub["value"], color=colour[s], label=s, ls="--" if s.startswith("unpenalised") else "-")
    ax.set(title=titles[0], xlabel="step", ylabel="portion", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, frameon=False)
    ax = axes[0, 1]
    ax.hist(cross, bins=bins, color="#4C72B0", alpha=0.8, label=f"crossed ({len(cross)})")
    if len(pred):
        ax.hist(pred, bins=bins, histtype="step", color=FORMULA_COLOUR, lw=1.6, label="schedule predicts")
    ax.set(title=titles[1], xlabel="step", ylabel="channels")
    ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig
