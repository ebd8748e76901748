"""The figures of ``cen_lab.diagnose``: the portion of gammas under the threshold over training (penalised per
branch, unpenalised as the control), and when the penalised channels crossed against when the schedule says;
and several runs' exchange side by side (``compute_regime_comparison``: trajectories, crossing step against
importance and the schedule, portion under the threshold)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from ._common import (BRANCH_COLOURS, FORMULA_COLOUR, FREE_COLOUR, PENALISED_COLOUR, check_backend, mpl_figure,
                      plotly_grid, takes)

__all__ = ["compute_diagnosis", "plot_diagnosis", "compute_regime_comparison", "plot_regime_comparison"]


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


def compute_regime_comparison(runs: Mapping[str, Any], diagnoses: Mapping[str, Any] | None = None,
                              layer: str | None = None) -> pd.DataFrame:
    """Several runs' exchange side by side (for example the ``default`` and ``collapse`` presets on one seed).

    ``runs`` maps a label to a ``Run``; ``diagnoses`` to its ``cen_lab.diagnose`` answer (computed when not
    given). ``layer``: the layer whose penalised gammas are drawn (default: each run's first). Rows of ``kind``:

    - ``"trajectory"``: ``step``, ``channel`` (``<branch>:<channel>``), ``value`` = |gamma| of every penalised
      channel of ``layer``, ``crossed`` whether it ever went under the threshold;
    - ``"channel"``: one per penalised channel of every layer: ``crossing_step`` (NaN: never),
      ``predicted_step`` (the penalty's schedule alone; NaN: not within the run), ``importance`` (the diagnosis's
      within-step percentile of ``|dL/dgamma|``; NaN without logged gradients);
    - ``"portion"``: ``step``, ``series`` (``penalised`` / ``unpenalised``), ``value`` = the portion under the
      threshold over all layers.
    Every row has ``regime`` (the label), ``threshold`` and ``last_step``.
    """
    from ...experiments.diagnosis import diagnose

    frames = []
    for label, run in runs.items():
        d = diagnoses[label] if diagnoses is not None and label in diagnoses else diagnose(run)
        thr = float(run.threshold)
        g = run.gammas[run.gammas["penalised"]]
        name = layer if layer is not None else str(g["layer"].iloc[0])
        if name not in set(g["layer"]):
            raise ValueError(f"{label}: no penalised layer {name!r}; it has {list(dict.fromkeys(g['layer']))}")
        c = d.crossings
        crossed = set(zip(c.loc[c["crossing_step"].notna(), "layer"], c.loc[c["crossing_step"].notna(), "branch"],
                          c.loc[c["crossing_step"].notna(), "channel"]))
        t = g[g["layer"] == name]
        names = [run.branches[b] if b < len(run.branches) else str(b) for b in t["branch"]]
        frames.append(pd.DataFrame({
            "kind": "trajectory", "step": t["step"].to_numpy(), "value": t["gamma"].abs().to_numpy(float),
            "channel": [f"{n}:{ch}" for n, ch in zip(names, t["channel"])],
            "crossed": [(name, b, ch) in crossed for b, ch in zip(t["branch"], t["channel"])]}))
        frames[-1]["regime"] = label
        frames.append(pd.DataFrame({
            "kind": "channel", "regime": label, "channel": [f"{a}/{b}:{ch}" for a, b, ch in
                                                            zip(c["layer"], c["branch"], c["channel"])],
            "crossing_step": c["crossing_step"].astype("float64").to_numpy(),
            "predicted_step": c["predicted_step"].astype("float64").to_numpy(),
            "importance": c["importance"].to_numpy(float)}))
        p = d.portion.assign(count=d.portion["below"] * d.portion["n"])
        tot = p.groupby(["step", "penalised"])[["count", "n"]].sum().reset_index()
        frames.append(pd.DataFrame({"kind": "portion", "regime": label, "step": tot["step"].to_numpy(),
                                    "series": np.where(tot["penalised"], "penalised", "unpenalised"),
                                    "value": (tot["count"] / tot["n"]).to_numpy(float)}))
        for f in frames[-3:]:
            f["threshold"], f["last_step"] = thr, int(run.gammas["step"].max())
    cols = ["regime", "kind", "step", "channel", "value", "crossed", "crossing_step", "predicted_step", "importance",
            "series", "threshold", "last_step"]
    return pd.concat(frames, ignore_index=True).reindex(columns=cols)


@takes("compute_regime_comparison", ("regime", "kind", "step", "value", "crossing_step", "importance"))
def plot_regime_comparison(frame: pd.DataFrame, *, title: str | None = None, backend: str = "matplotlib",
                           panel_size=(4.2, 2.9)):
    """One row per regime. Left: |gamma| of one layer's penalised channels over steps (red: crossed the
    threshold at some step; grey: never), the threshold dashed. Middle: each penalised channel's crossing step
    against its importance (never-crossed channels on the top line), the step the penalty's schedule alone
    predicts as a dashed line. Right: the portion under the threshold, penalised against unpenalised."""
    check_backend(backend)
    regimes = list(dict.fromkeys(frame["regime"]))
    titles = [t for r in regimes for t in (f"{r}: penalised |gamma|", f"{r}: crossing step vs importance",
                                           f"{r}: under the threshold")]
    title = title or "Exchange regimes side by side"

    def parts(r):
        sub = frame[frame["regime"] == r]
        traj, ch, por = (sub[sub["kind"] == k] for k in ("trajectory", "channel", "portion"))
        last = int(sub["last_step"].iloc[0])
        never = last * 1.06
        y = ch["crossing_step"].fillna(never)
        pred = ch["predicted_step"].dropna()
        return traj, ch, por, float(sub["threshold"].iloc[0]), last, never, y, (float(pred.median()) if len(pred) else None)

    if backend == "plotly":
        fig = plotly_grid(len(regimes), 3, titles, shared_xaxes=False, height_per_row=300)
        for i, r in enumerate(regimes, start=1):
            traj, ch, por, thr, last, never, y, pred = parts(r)
            for (cname, crossed), sub in traj.groupby(["channel", "crossed"], sort=False):
                fig.add_scatter(x=sub["step"], y=sub["value"], mode="lines", showlegend=False, hoverinfo="skip",
                                line=dict(color=PENALISED_COLOUR if crossed else "#aaaaaa", width=1), row=i, col=1)
            fig.add_hline(y=thr, line_dash="dash", row=i, col=1)
            fig.add_scatter(x=ch["importance"], y=y, mode="markers", text=ch["channel"], name=f"{r}: channels",
                            marker=dict(size=4, color=np.where(ch["crossing_step"].isna(), "#aaaaaa", PENALISED_COLOUR)),
                            row=i, col=2)
            if pred is not None:
                fig.add_hline(y=pred, line_dash="dash", line_color=FORMULA_COLOUR, row=i, col=2)
            for series, sub in por.groupby("series", sort=False):
                fig.add_scatter(x=sub["step"], y=sub["value"], mode="lines", name=f"{r}: {series}",
                                line=dict(color=PENALISED_COLOUR if series == "penalised" else FREE_COLOUR), row=i, col=3)
            for col, (xt, yt) in enumerate((("step", "|gamma|"), ("importance (percentile of |dL/dgamma|)",
                                                                 "crossing step (top: never)"),
                                            ("step", "portion under the threshold")), start=1):
                if i == len(regimes):  # on the last row only: a title under an upper row covers the next one's
                    fig.update_xaxes(title_text=xt, row=i, col=col)
                fig.update_yaxes(title_text=yt, row=i, col=col)
            fig.update_yaxes(range=[-0.02, 1.02], row=i, col=3)
        fig.update_layout(title=title)
        return fig
    fig, axes = mpl_figure(len(regimes), 3, panel_size)
    for i, r in enumerate(regimes):
        traj, ch, por, thr, last, never, y, pred = parts(r)
        ax = axes[i, 0]
        for (cname, crossed), sub in traj.groupby(["channel", "crossed"], sort=False):
            ax.plot(sub["step"], sub["value"], color=PENALISED_COLOUR if crossed else "#aaaaaa", lw=0.7, alpha=0.8)
        ax.axhline(thr, color="k", ls="--", lw=0.8)
        ax.set(title=titles[3 * i], xlabel="step", ylabel="|gamma|")
        ax = axes[i, 1]
        done = ch["crossing_step"].notna().to_numpy()
        ax.scatter(ch["importance"][done], y[done], s=6, color=PENALISED_COLOUR, label=f"crossed ({done.sum()})")
        ax.scatter(ch["importance"][~done], y[~done], s=6, color="#aaaaaa", label=f"never ({(~done).sum()})")
        if pred is not None:
            ax.axhline(pred, color=FORMULA_COLOUR, ls="--", lw=1, label="schedule alone (median)")
        ax.text(0.01, never, "never", transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="#666666")
        ax.set(title=titles[3 * i + 1], xlabel="importance (percentile of |dL/dgamma|)", ylabel="crossing step",
               ylim=(-0.03 * last, never * 1.04))
        ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax = axes[i, 2]
        for series, sub in por.groupby("series", sort=False):
            ax.plot(sub["step"], sub["value"], color=PENALISED_COLOUR if series == "penalised" else FREE_COLOUR,
                    ls="-" if series == "penalised" else "--", label=series)
        ax.set(title=titles[3 * i + 2], xlabel="step", ylabel="portion", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig
