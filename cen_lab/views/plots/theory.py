"""Figures of the Theorem 1 and Corollary 1 checks (frames from ``cen_lab.theory`` and ``cen_lab.theorem``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ...theory.corollary import corollary_check
from ...theory.formula import controlled_check, dynamic_check, reliability_table
from ...theory.local_checks import outcome_table
from ._common import takes, BRANCH_COLOURS, ENSEMBLE_COLOUR, FORMULA_COLOUR, check_backend, mpl_figure, plotly_grid

__all__ = ["plot_controlled_check", "plot_dynamic_check", "plot_reliability", "compute_qq", "plot_qq",
           "plot_outcome", "plot_corollary"]


def _curve(ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.geomspace(max(ratios.min(), 1e-3), ratios.max(), 200)
    return r, 2 * stats.norm.cdf(r) - 1


def _errors(frame: pd.DataFrame, y: str) -> tuple[np.ndarray, np.ndarray]:
    return (frame[y] - frame["ci_low"]).to_numpy(), (frame["ci_high"] - frame[y]).to_numpy()


# each plot_* beside the function that makes its frame, under the name that pairs them
compute_controlled_check = controlled_check
compute_dynamic_check = dynamic_check
compute_reliability = reliability_table
compute_outcome = outcome_table
compute_corollary = corollary_check


@takes('compute_controlled_check (= cen_lab.theory.controlled_check)', ('grad_norm', 'ratio'))
def plot_controlled_check(frame: pd.DataFrame, *, backend: str = "matplotlib", figsize=(6.0, 3.8)):
    """Monte Carlo frequency (with intervals) against ``lam / |dL/dx'|``, the formula (red) and the
    inverse-less variant for each ``|dL/dx'|`` (dashed). Input: ``theory.controlled_check``."""
    check_backend(backend)
    r, p = _curve(frame["ratio"].to_numpy())
    norms = list(dict.fromkeys(frame["grad_norm"]))
    title = "Controlled check: P(0 is a local minimum)"
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=380)
        fig.add_scatter(x=r, y=p, mode="lines", name="2Φ(λ/|dL/dx'|)−1", line=dict(color=FORMULA_COLOUR))
        for i, g in enumerate(norms):
            sub = frame[frame["grad_norm"] == g]
            lo, hi = _errors(sub, "frequency")
            colour = BRANCH_COLOURS[i % len(BRANCH_COLOURS)]
            fig.add_scatter(x=sub["ratio"], y=sub["frequency"], mode="markers", name=f"Monte Carlo, |dL/dx'|={g:g}",
                            error_y=dict(type="data", array=hi, arrayminus=lo), marker=dict(color=colour))
            fig.add_scatter(x=sub["ratio"], y=sub["predicted_inverseless"], mode="lines", line=dict(dash="dash", color=colour),
                            name=f"inverse-less, |dL/dx'|={g:g}")
        fig.update_xaxes(type="log", title_text="λ / |dL/dx'|")
        fig.update_yaxes(title_text="probability", range=[-0.02, 1.02])
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    ax.plot(r, p, color=FORMULA_COLOUR, label="2Φ(λ/|dL/dx'|)−1")
    for i, g in enumerate(norms):
        sub = frame[frame["grad_norm"] == g]
        colour = BRANCH_COLOURS[i % len(BRANCH_COLOURS)]
        ax.errorbar(sub["ratio"], sub["frequency"], yerr=np.vstack(_errors(sub, "frequency")), fmt="o", ms=3,
                    color=colour, label=f"Monte Carlo, |dL/dx'| = {g:g}")
        ax.plot(sub["ratio"], sub["predicted_inverseless"], ls="--", color=colour, label=f"inverse-less, |dL/dx'| = {g:g}")
    ax.set(xscale="log", xlabel="λ / |dL/dx'|", ylabel="probability", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


@takes('compute_dynamic_check (= cen_lab.theory.dynamic_check)', ('ratio', 'rule'))
def plot_dynamic_check(frame: pd.DataFrame, *, backend: str = "matplotlib", figsize=(6.0, 3.6)):
    """Fraction of optimiser runs found at zero after training, per rule, against the static formula.
    Input: ``theory.dynamic_check``."""
    check_backend(backend)
    r, p = _curve(frame["ratio"].to_numpy())
    title = "Dynamic check: runs ending at zero (a different quantity)"
    rules = list(dict.fromkeys(frame["rule"]))
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=360)
        fig.add_scatter(x=r, y=p, mode="lines", name="static formula", line=dict(color=FORMULA_COLOUR))
        for i, rule in enumerate(rules):
            sub = frame[frame["rule"] == rule]
            lo, hi = _errors(sub, "frequency")
            fig.add_scatter(x=sub["ratio"], y=sub["frequency"], mode="markers+lines", name=rule,
                            error_y=dict(type="data", array=hi, arrayminus=lo),
                            line=dict(color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)]))
        fig.update_xaxes(type="log", title_text="λ / |dL/dx'|")
        fig.update_yaxes(title_text="fraction at zero", range=[-0.02, 1.02])
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    ax.plot(r, p, color=FORMULA_COLOUR, label="static formula")
    for i, rule in enumerate(rules):
        sub = frame[frame["rule"] == rule]
        ax.errorbar(sub["ratio"], sub["frequency"], yerr=np.vstack(_errors(sub, "frequency")), fmt="o-", ms=3,
                    color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)], label=f"{rule} (tol {sub['tol'].max():.2g})")
    ax.set(xscale="log", xlabel="λ / |dL/dx'|", ylabel="fraction at zero", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


@takes('compute_reliability (= cen_lab.theory.reliability_table)', ('mean_predicted', 'observed', 'n'))
def plot_reliability(table: pd.DataFrame, *, backend: str = "matplotlib", title: str | None = None, figsize=(4.6, 4.2)):
    """Reliability diagram: observed frequency (Wilson intervals) against mean prediction per bin; the diagonal is
    perfect calibration; marker labels give the bin counts. Input: ``theory.reliability_table``."""
    check_backend(backend)
    title = title or "Reliability in trained networks"
    lo, hi = _errors(table, "observed")
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=420)
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line=dict(color="grey", dash="dot"))
        # counts to the right of the markers (not on the error bars), drawn past the axes rather than clipped
        fig.add_scatter(x=table["mean_predicted"], y=table["observed"], mode="markers+text", name="bins",
                        text=[str(n) for n in table["n"]], textposition="middle right", cliponaxis=False,
                        error_y=dict(type="data", array=hi, arrayminus=lo), marker=dict(color=FORMULA_COLOUR))
        fig.update_xaxes(title_text="predicted probability", range=[0, 1.1])
        fig.update_layout(margin=dict(r=60))
        fig.update_yaxes(title_text="observed frequency", range=[0, 1.05])
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.errorbar(table["mean_predicted"], table["observed"], yerr=np.vstack([lo, hi]), fmt="o", color=FORMULA_COLOUR,
                label="bins (95% Wilson)")
    for x, y, n in zip(table["mean_predicted"], table["observed"], table["n"]):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(6, 0), fontsize=7, va="center",
                    annotation_clip=False)  # beside the marker, clear of its error bar
    ax.set(xlim=(0, 1.1), ylim=(0, 1.05), xlabel="predicted probability", ylabel="observed frequency", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return fig


def compute_qq(local: pd.DataFrame, max_points: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Normal QQ data of ``z = g / ||dL/dx'||`` from a ``local_check`` frame (subsampled to ``max_points``).

    Returns
    -------
    pandas.DataFrame
        ``theoretical`` (standard normal quantiles) and ``observed`` (sorted z), one row per point.
    """
    z = local["z"].to_numpy()
    z = z[np.isfinite(z)]
    if len(z) > max_points:
        z = np.random.default_rng(seed).choice(z, max_points, replace=False)
    z = np.sort(z)
    theoretical = stats.norm.ppf((np.arange(1, len(z) + 1) - 0.5) / len(z))
    return pd.DataFrame({"theoretical": theoretical, "observed": z})


@takes('compute_qq', ('observed', 'theoretical'))
def plot_qq(frame: pd.DataFrame, *, backend: str = "matplotlib", figsize=(4.6, 4.2)):
    """QQ plot of ``dL/dgamma / ||dL/dx'||`` against N(0, 1); the theorem's assumption is the line y = x."""
    check_backend(backend)
    lim = float(np.abs(frame.to_numpy()).max()) * 1.05
    title = "dL/dγ / ||dL/dx'|| against N(0, 1)"
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=420)
        fig.add_scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", name="N(0, 1)", line=dict(color="grey", dash="dot"))
        fig.add_scatter(x=frame["theoretical"], y=frame["observed"], mode="markers", name="measured",
                        marker=dict(size=3, color=FORMULA_COLOUR))
        fig.update_xaxes(title_text="standard normal quantile")
        fig.update_yaxes(title_text="observed quantile")
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    ax.plot([-lim, lim], [-lim, lim], ls=":", color="grey", label="N(0, 1)")
    ax.plot(frame["theoretical"], frame["observed"], ".", ms=2, color=FORMULA_COLOUR, label="measured")
    ax.set(xlabel="standard normal quantile", ylabel="observed quantile", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


@takes('compute_outcome (= cen_lab.theorem.outcome_table)', ('lam', 'observed', 'predicted'))
def plot_outcome(frame: pd.DataFrame, *, backend: str = "matplotlib", figsize=(5.0, 3.6)):
    """Fraction of penalised channels ending at zero per lam (95% Wilson intervals) against the mean prediction
    from an early checkpoint. Input: ``theorem.outcome_table`` (per lam)."""
    check_backend(backend)
    title = "Channels ending at zero: observed vs predicted"
    lo, hi = _errors(frame, "observed")
    if backend == "plotly":
        fig = plotly_grid(1, 1, [title], height_per_row=360)
        fig.add_scatter(x=frame["lam"], y=frame["observed"], mode="markers", name="observed",
                        error_y=dict(type="data", array=hi, arrayminus=lo), marker=dict(color=ENSEMBLE_COLOUR))
        fig.add_scatter(x=frame["lam"], y=frame["predicted"], mode="lines+markers", name="predicted (early checkpoint)",
                        line=dict(color=FORMULA_COLOUR))
        fig.update_xaxes(type="log", title_text="λ")
        fig.update_yaxes(title_text="fraction at zero", range=[-0.02, 1.02])
        return fig
    fig, axes = mpl_figure(1, 1, figsize)
    ax = axes[0, 0]
    ax.errorbar(frame["lam"], frame["observed"], yerr=np.vstack([lo, hi]), fmt="o", color=ENSEMBLE_COLOUR,
                label="observed (95% Wilson)")
    ax.plot(frame["lam"], frame["predicted"], "s-", color=FORMULA_COLOUR, label="predicted at an early checkpoint")
    ax.set(xscale="log", xlabel="λ", ylabel="fraction at zero", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


_STAGES = [("loss_base", "trained\nwithout exchange"), ("loss_switched", "exchange on,\nno fine-tuning"),
           ("loss_exchange", "fine-tuned\nwith exchange"), ("loss_control", "fine-tuned\nwithout exchange")]


@takes('compute_corollary (= cen_lab.theorem.corollary_check)', ('share_convs',))
def plot_corollary(frame: pd.DataFrame, *, backend: str = "matplotlib", panel_size=(4.6, 3.4)):
    """Training loss per seed at each stage, one panel per ``share_convs`` setting; one line per seed.
    Input: ``theorem.corollary_check``."""
    check_backend(backend)
    shares = list(dict.fromkeys(frame["share_convs"]))
    titles = [f"{'shared' if s else 'unshared'} convolutions" for s in shares]
    labels = [label for _, label in _STAGES]
    if backend == "plotly":
        fig = plotly_grid(1, len(shares), titles, shared_xaxes=False, height_per_row=380)
        for j, share in enumerate(shares):
            for i, row in enumerate(frame[frame["share_convs"] == share].itertuples(index=False)):
                fig.add_scatter(x=[label.replace("\n", " ") for label in labels], y=[getattr(row, c) for c, _ in _STAGES],
                                mode="lines+markers", name=f"seed {row.seed}", showlegend=j == 0,
                                line=dict(color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)]), row=1, col=j + 1)
        fig.update_yaxes(title_text="training loss", col=1)
        fig.update_layout(title="Corollary 1: training loss before and after exchange")
        return fig
    fig, axes = mpl_figure(1, len(shares), panel_size, sharey=True)
    for j, share in enumerate(shares):
        ax = axes[0, j]
        for i, row in enumerate(frame[frame["share_convs"] == share].itertuples(index=False)):
            ax.plot(range(len(_STAGES)), [getattr(row, c) for c, _ in _STAGES], "o-",
                    color=BRANCH_COLOURS[i % len(BRANCH_COLOURS)], label=f"seed {row.seed}")
        ax.set_xticks(range(len(_STAGES)), labels, fontsize=7)
        ax.set_title(titles[j], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("training loss")
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.suptitle("Corollary 1: training loss before and after exchange", fontsize=11)
    return fig
