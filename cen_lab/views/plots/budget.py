"""Runs of different budgets on one axis: the fraction of each run's training budget (the long regime beside the
600-step default)."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from ._common import BRANCH_COLOURS, check_backend, mpl_figure, plotly_grid, takes

__all__ = ["BUDGET_PANELS", "compute_budget_curves", "plot_budget_curves"]

# panel -> (y label, log scale)
BUDGET_PANELS = {"under the threshold": ("portion of penalised gammas", False), "loss": ("ensemble loss", True),
                 "score": ("validation score", False)}


def compute_budget_curves(runs: Mapping[str, Any]) -> pd.DataFrame:
    """Each run's exchange, losses and scores against the fraction of its budget.

    Parameters
    ----------
    runs : mapping of str -> Run
        Label -> trained run (``manifest["total_steps"]`` is its budget).

    Returns
    -------
    pandas.DataFrame
        Columns ``run, panel, series, step, fraction, value`` (``fraction = step / total_steps``), rows in run
        order then panel and series:

        - panel ``under the threshold``, series ``penalised``: the training log's portion of penalised gammas under
          the threshold;
        - panel ``loss``, series ``train`` (the minibatch's ensemble loss) and ``validation``;
        - panel ``score``, series ``ensemble`` and ``weakest branch`` (the lowest branch score at each evaluation;
          mIoU for segmentation, accuracy for classification).
    """
    frames = []
    for label, run in runs.items():
        m = run.metrics
        total = float(run.manifest.get("total_steps") or run.config.train.steps)
        kind = "miou" if run.manifest.get("task", "seg") == "seg" else "accuracy"
        ensemble = run.manifest["ensembles"][0].split("/")[-1] if run.manifest.get("ensembles") else "ensemble"

        def rows(panel, series, split, name):
            sub = m[(m["split"] == split) & (m["name"] == name)].sort_values("step")
            return pd.DataFrame({"panel": panel, "series": series, "step": sub["step"].to_numpy(),
                                 "value": sub["value"].to_numpy(float)})

        val = m[m["split"] == "val"]
        branch = val[val["name"].isin([f"{kind}/{b}" for b in run.branches])]
        weakest = branch.groupby("step")["value"].min()
        parts = [rows("under the threshold", "penalised", "train", "sparsity/below_threshold"),
                 rows("loss", "train", "train", f"loss/{ensemble}"), rows("loss", "validation", "val", f"loss/{ensemble}"),
                 rows("score", "ensemble", "val", f"{kind}/{ensemble}"),
                 pd.DataFrame({"panel": "score", "series": "weakest branch", "step": weakest.index.to_numpy(),
                               "value": weakest.to_numpy(float)})]
        frame = pd.concat(parts, ignore_index=True)
        frame.insert(0, "run", label)
        frame["fraction"] = frame["step"] / total
        frames.append(frame)
    if not frames:
        raise ValueError("compute_budget_curves needs at least one run")
    return pd.concat(frames, ignore_index=True)[["run", "panel", "series", "step", "fraction", "value"]]


_DASH = {"penalised": "solid", "train": "dot", "validation": "solid", "ensemble": "solid", "weakest branch": "dash"}
_MPL_DASH = {"solid": "-", "dot": ":", "dash": "--"}


@takes("compute_budget_curves", ("run", "panel", "series", "fraction", "value"))
def plot_budget_curves(frame: pd.DataFrame, *, title: str | None = None, backend: str = "matplotlib",
                       panel_size=(4.2, 3.0)):
    """Three panels against the fraction of each run's budget, one colour per run: the portion of penalised gammas
    under the threshold, the ensemble's training (dotted) and validation (solid) loss on a log scale, and the
    validation score of the ensemble (solid) and the weakest branch (dashed). A validation loss that rises while the
    training loss falls is memorisation."""
    check_backend(backend)
    runs = list(dict.fromkeys(frame["run"]))
    colour = {r: BRANCH_COLOURS[i % len(BRANCH_COLOURS)] for i, r in enumerate(runs)}
    panels = [p for p in BUDGET_PANELS if p in set(frame["panel"])]
    title = title or "Runs of different budgets, on the fraction of each budget"
    if backend == "plotly":
        fig = plotly_grid(1, len(panels), panels, shared_xaxes=False, height_per_row=340)
        for col, panel in enumerate(panels, start=1):
            for (r, series), sub in frame[frame["panel"] == panel].groupby(["run", "series"], sort=False):
                fig.add_scatter(x=sub["fraction"], y=sub["value"], mode="lines", name=f"{r}: {series}",
                                line=dict(color=colour[r], dash=_DASH.get(series, "solid")), row=1, col=col)
            ylabel, log = BUDGET_PANELS[panel]
            fig.update_xaxes(title_text="fraction of the budget", range=[0, 1.02], row=1, col=col)
            fig.update_yaxes(title_text=ylabel, type="log" if log else "linear", row=1, col=col)
        fig.update_layout(title=title)
        return fig
    fig, axes = mpl_figure(1, len(panels), panel_size)
    for col, panel in enumerate(panels):
        ax = axes[0, col]
        for (r, series), sub in frame[frame["panel"] == panel].groupby(["run", "series"], sort=False):
            ax.plot(sub["fraction"], sub["value"], color=colour[r], ls=_MPL_DASH[_DASH.get(series, "solid")], lw=1.1,
                    label=f"{r}: {series}")
        ylabel, log = BUDGET_PANELS[panel]
        if log:
            ax.set_yscale("log")
        ax.set(title=panel, xlabel="fraction of the budget", ylabel=ylabel, xlim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig
