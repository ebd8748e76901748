"""Shared pieces of the figure functions: colours, branch names, layer order, backend dispatch."""

from __future__ import annotations

import functools
import inspect
from typing import Sequence

import numpy as np
import pandas as pd

BACKENDS = ("matplotlib", "plotly")
PENALISED_COLOUR = "#c0392b"
FORMULA_COLOUR = "#c0392b"  # what a theory predicts, in every Theorem 1 figure
FREE_COLOUR = "#2e86c1"
KEPT_COLOUR = "#eeeeee"
MEAN_COLOUR = "#7f7f7f"
# colour of "received from branch k"; also the colour of branch k in curves
BRANCH_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                    "#7f7f7f", "#d62728")  # matplotlib tab10, red last (red marks penalised channels)
ENSEMBLE_COLOUR = "#222222"


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def branch_names(frame: pd.DataFrame, branches: Sequence[str] | None) -> np.ndarray:
    """Names for the ``branch`` indices of ``frame`` (default ``m0``, ``m1``, ...)."""
    n = int(frame["branch"].max()) + 1 if len(frame) else 0
    names = list(branches) if branches is not None else [f"b{i}" for i in range(n)]
    if len(names) < n:
        raise ValueError(f"{n} branches in the table but only {len(names)} names given")
    return np.asarray(names, dtype=object)


def select_layers(frame: pd.DataFrame, layers: Sequence[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Rows of the chosen layers (default all, in order of first appearance) and that order."""
    present = list(dict.fromkeys(frame["layer"].astype(str)))
    order = present if layers is None else list(layers)
    unknown = [name for name in order if name not in present]
    if unknown:
        raise ValueError(f"no layer {unknown[0]!r} in the table; it has {present}")
    return frame[frame["layer"].isin(order)], order


def sort_by_layer(frame: pd.DataFrame, order: list[str], keys: list[str]) -> pd.DataFrame:
    rank = frame["layer"].map({name: i for i, name in enumerate(order)})
    return (frame.assign(_rank=rank).sort_values(["_rank", *keys], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def branch_table(frame: pd.DataFrame) -> list[tuple[int, str]]:
    """(index, name) pairs of the branches in ``frame``, in index order."""
    pairs = frame[["branch", "branch_name"]].drop_duplicates().sort_values("branch")
    return [(int(m), str(n)) for m, n in pairs.itertuples(index=False)]


def mpl_figure(nrows: int, ncols: int, panel_size: tuple[float, float], **kw):
    """A pyplot-free matplotlib figure with a grid of axes (always 2-D)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def plotly_grid(nrows: int, ncols: int, titles: list[str], *, shared_xaxes: bool = True, height_per_row: int = 260,
                **kw):
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles, shared_xaxes=shared_xaxes,
                        vertical_spacing=min(0.12, 0.35 / max(nrows, 1)), **kw)
    fig.update_layout(height=80 + height_per_row * nrows, template="plotly_white", margin=dict(t=70, l=60, r=20, b=50))
    return fig


def reads_run(table: str, **from_run: str):
    """Decorate a ``compute_*`` whose first argument is one table of a run (``gammas``, ``exchange``, ``metrics``):
    a ``Run`` given instead is read for that table, and each keyword argument named in ``from_run`` that the call
    does not give is the run's attribute of that name (``branches="branches"``: the run's branch names). So
    ``compute_gamma_trajectories(run)`` and ``compute_gamma_trajectories(run.gammas, run.branches)`` are the same."""

    def decorate(compute):
        sig = inspect.signature(compute)

        @functools.wraps(compute)
        def reading(first, *args, **kwargs):
            from ...runs.reader import Run

            if isinstance(first, Run):
                given = sig.bind_partial(first, *args, **kwargs).arguments
                kwargs.update({k: getattr(first, attr) for k, attr in from_run.items() if k not in given})
                first = getattr(first, table)
            return compute(first, *args, **kwargs)

        reading.__doc__ = (compute.__doc__ or "") + (f"\n\n    A ``Run`` may stand for its ``{table}`` table"
                                                     + (f" (and {', '.join(from_run)})" if from_run else "") + ".\n")
        return reading

    return decorate


def takes(maker: str, columns: Sequence[str]):
    """Decorate a ``plot_*`` whose first argument is the frame ``maker`` returns: a frame without ``columns`` is a
    ``ValueError`` that names ``maker`` (and says so when a raw run table was passed), before any drawing."""

    def decorate(plot):
        @functools.wraps(plot)
        def checked(frame, *args, **kwargs):
            check_frame(frame, plot.__name__, maker, columns)
            return plot(frame, *args, **kwargs)

        checked.__doc__ = (plot.__doc__ or "") + f"\n\n    Takes the frame of ``{maker}``.\n"
        checked.maker = maker
        checked.columns = tuple(columns)
        return checked

    return decorate


_RUN_TABLES = {"gammas": ("gamma", "beta", "penalised"), "exchange": ("exchanged", "source"),
               "metrics": ("split", "name", "value"), "grads": ("dgamma", "dxprime_norm")}


def check_frame(frame, plot: str, maker: str, columns: Sequence[str]) -> None:
    """Raise a ``TypeError`` / ``ValueError`` naming ``maker`` when ``frame`` is not the frame ``plot`` draws."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{plot} takes the DataFrame that {maker} returns, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if not missing:
        return
    raw = next((t for t, cols in _RUN_TABLES.items() if all(c in frame.columns for c in cols)), None)
    hint = f" It looks like a run's raw {raw!r} table (run.{raw}): pass it through {maker} first." if raw else ""
    raise ValueError(f"{plot} takes the frame of {maker}, which has the columns {list(columns)}; this frame lacks "
                     f"{missing}.{hint}")
