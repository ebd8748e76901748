"""A run's exchange forecast as it goes: the forecast made at each point of the run, converging on its end, with
the generic peer (learning-curve extrapolation) beside it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._common import check_backend, mpl_figure, plotly_grid, takes

__all__ = ["compute_forecast_path", "plot_forecast_path"]

_STYLE = {"forecast": ("#1f77b4", "solid"), "peer": ("#ff7f0e", "dash")}


def compute_forecast_path(run: Any, points: int = 30, *, peer: bool = True, **forecast_kw) -> pd.DataFrame:
    """The forecast (and the peer's) made from the first ``k`` logged states of ``run``, at ``points`` steps
    spread over what it has logged (from the first state a forecast can use).

    Parameters
    ----------
    run : Run or run directory
        A trained run (its schedule is its config's), or an observed one with ``lr=`` and ``budget=`` given in
        ``forecast_kw`` (passed to ``cen_lab.forecast``).
    points : int
        How many forecasts.
    peer : bool
        Also the learning-curve extrapolation of the portion itself (``cen_lab.theory.curve_peer``).

    Returns
    -------
    pandas.DataFrame
        Columns ``method, step, fraction, predicted, low, high``: ``method`` ``observed`` (the portion under the
        threshold at every logged step; ``low == high == predicted``), ``forecast`` and ``peer`` (at each of the
        ``points`` steps, the portion expected at the budget's end and its interval); ``fraction = step / budget``.
    """
    from ...runs.reader import Run, load_run
    from ...theory.curve_peer import extrapolate_curve
    from ...theory.forecast import MIN_LOGS, forecast, truncate_run
    from ...theory.forecast_bench import _curve

    run = run if isinstance(run, Run) else load_run(run)
    steps, portion = _curve(run)
    if len(steps) < MIN_LOGS:
        raise ValueError(f"{run.path}: a forecast needs {MIN_LOGS} logged steps; the run has {len(steps)}")
    first = forecast(truncate_run(run, int(steps[MIN_LOGS - 1])), n_boot=0, **forecast_kw)
    budget = first.budget
    rows = [{"method": "observed", "step": int(s), "predicted": float(p), "low": float(p), "high": float(p)}
            for s, p in zip(steps, portion)]
    idx = np.unique(np.linspace(MIN_LOGS - 1, len(steps) - 1, points).round().astype(int))
    for k in idx:
        fc = forecast(truncate_run(run, int(steps[k])), seed=int(steps[k]), **forecast_kw)
        rows.append({"method": "forecast", "step": int(steps[k]), "predicted": fc.predicted, "low": fc.low,
                     "high": fc.high})
        if peer:
            ex = extrapolate_curve(steps[:k + 1], portion[:k + 1], budget)
            rows.append({"method": "peer", "step": int(steps[k]), "predicted": ex.predicted, "low": ex.low,
                         "high": ex.high})
    df = pd.DataFrame(rows)
    df.insert(2, "fraction", df["step"] / budget)
    return df


@takes("compute_forecast_path", ("method", "step", "fraction", "predicted", "low", "high"))
def plot_forecast_path(frame: pd.DataFrame, *, title: str | None = None, backend: str = "matplotlib",
                       size=(7.0, 4.0)):
    """The portion of penalised gammas under the threshold over the run (black), and at each point the final
    portion the forecast (blue, with its band) and the peer (orange, dashed, with its band) expected from what
    had been logged by then. A good forecast is flat at the run's end from early on; the run's last value is the
    dotted line when the run is finished."""
    check_backend(backend)
    title = title or "Where will the run end? The forecast made at each point of the run"
    obs = frame[frame["method"] == "observed"]
    end = float(obs["predicted"].iloc[-1]) if len(obs) else None
    methods = [m for m in _STYLE if m in set(frame["method"])]
    if backend == "plotly":
        fig = plotly_grid(1, 1, [""], height_per_row=380)
        for m in methods:
            sub = frame[frame["method"] == m]
            colour, dash = _STYLE[m]
            fig.add_scatter(x=np.r_[sub["fraction"], sub["fraction"][::-1]], y=np.r_[sub["high"], sub["low"][::-1]],
                            fill="toself", fillcolor=colour, opacity=0.15, line=dict(width=0), name=f"{m}: interval",
                            hoverinfo="skip")
            fig.add_scatter(x=sub["fraction"], y=sub["predicted"], mode="lines+markers", name=f"{m}: final portion",
                            line=dict(color=colour, dash=dash))
        fig.add_scatter(x=obs["fraction"], y=obs["predicted"], mode="lines", name="under the threshold now",
                        line=dict(color="#222222"))
        if end is not None:
            fig.add_hline(y=end, line_dash="dot", line_color="#222222")
        fig.update_xaxes(title_text="fraction of the budget (when the forecast was made)", range=[0, 1.02])
        fig.update_yaxes(title_text="portion of penalised gammas", range=[-0.02, 1.02])
        fig.update_layout(title=title)
        return fig
    fig, axes = mpl_figure(1, 1, size)
    ax = axes[0, 0]
    for m in methods:
        sub = frame[frame["method"] == m]
        colour, dash = _STYLE[m]
        ax.fill_between(sub["fraction"], sub["low"], sub["high"], color=colour, alpha=0.15, lw=0)
        ax.plot(sub["fraction"], sub["predicted"], color=colour, ls="-" if dash == "solid" else "--", marker="o",
                ms=3, lw=1.2, label=f"{m}: final portion expected")
    ax.plot(obs["fraction"], obs["predicted"], color="#222222", lw=1.2, label="under the threshold now")
    if end is not None:
        ax.axhline(end, color="#222222", ls=":", lw=0.9, label=f"the run's last value, {end:.2f}")
    ax.set(xlabel="fraction of the budget (when the forecast was made)", ylabel="portion of penalised gammas",
           xlim=(0, 1.02), ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig
