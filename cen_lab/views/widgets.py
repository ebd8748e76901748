"""An ipywidgets explorer of exchange dynamics, for JupyterLab.

``explore(run)`` (or several runs) shows: a run, layer and branch picker; a step slider with a play button;
and, at the chosen step, the exchange state of the layer, the |gamma| histogram of that layer and branch,
and the training curves with a marker at the step. Every picture comes from a ``cen_lab.plots`` function. When
the run changes, the explorer keeps the step (or the nearest step the new run logged), not the slider's index.
Widgets need a live kernel and a frontend. In a headless run (``CEN_LAB_HEADLESS=1``, set by
``notebook_runner.run_notebook`` for papermill) the explorer shows its pictures at the first step as still images
with a note instead: exported HTML would show the widgets only as empty placeholders, and nbclient can hang while it
captures an Output widget's messages with no frontend (jupyter/nbclient#312; seen here once in four report builds).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..runs.reader import Run

log = logging.getLogger(__name__)

__all__ = ["Explorer", "explore", "runs_under", "in_jupyter"]

OUTSIDE_JUPYTER = ("the explorer is an ipywidgets app and needs Jupyter (JupyterLab or Notebook: `make lab`); from a "
                   "terminal, serve it in your browser with `cen-lab explore RUN_DIR ...` (or `make explore`)")


def in_jupyter() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, Voila, papermill), False in a script or a terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Explorer:
    """The widget tree and its state; ``explore`` builds one. Displaying it displays ``widget``.

    Attributes
    ----------
    widget : ipywidgets.VBox
    figures : dict of str -> matplotlib.figure.Figure
        The figures currently shown (``exchange``, ``gammas``, ``curves``), for inspection and tests.
    """

    def __init__(self, runs: Mapping[str, Run]):
        import ipywidgets as w

        from . import plots

        if not runs:
            raise ValueError("explore needs at least one run")
        self._plots = plots
        self.runs = dict(runs)
        self.figures: dict[str, Any] = {}
        # False: draw figures, never write to Output widgets (headless report runs; a terminal, where writing to one
        # prints the PNGs' base64 text to stdout)
        self.live = os.environ.get("CEN_LAB_HEADLESS") != "1" and in_jupyter()
        self.run_picker = w.Dropdown(options=list(self.runs), description="run")
        self.layer_picker = w.Dropdown(description="layer")
        self.branch_picker = w.Dropdown(description="branch")
        self.slider = w.IntSlider(min=0, max=0, description="step index", continuous_update=False)
        self.play = w.Play(min=0, max=0, interval=400, description="play")
        w.jslink((self.play, "value"), (self.slider, "value"))
        self.step_label = w.Label()
        self.forecast_label = w.Label()  # the forecast recorded at or before the step shown (cen_lab.forecast)
        self.outputs = {k: w.Output() for k in ("exchange", "gammas", "curves")}
        self.widget = w.VBox([
            w.HBox([self.run_picker, self.layer_picker, self.branch_picker]),
            w.HBox([self.play, self.slider, self.step_label]),
            self.forecast_label,
            w.HBox([self.outputs["exchange"], self.outputs["gammas"]]),
            self.outputs["curves"],
        ])
        self._load_run()
        self.run_picker.observe(lambda _: self._load_run(), names="value")
        for picker in (self.layer_picker, self.branch_picker, self.slider):
            picker.observe(lambda _: self.update(), names="value")

    @property
    def run(self) -> Run:
        return self.runs[self.run_picker.value]

    @property
    def step(self) -> int:
        return int(self.steps[self.slider.value])

    def _load_run(self) -> None:
        run = self.run
        p = self._plots
        previous = self.step if getattr(self, "steps", None) else None  # the step shown, kept across runs
        self.steps = sorted(int(s) for s in run.gammas["step"].unique())
        self.exchange_frame = p.compute_exchange_maps(run.exchange, run.branches)
        # observed and imported runs: every metric the loop logged, also outside the naming rule (loss/total, lr)
        self.curves_frame = p.compute_training_curves(run.metrics, run.outputs, others=run.source != "trained")
        self._updating = True  # one redraw for the whole change of run
        layer, branch = self.layer_picker.value, self.branch_picker.value
        layers = list(dict.fromkeys(run.gammas["layer"].astype(str)))
        self.layer_picker.options = layers
        self.layer_picker.value = layer if layer in layers else layers[0]  # ipywidgets 8 leaves None otherwise
        self.branch_picker.options = [(name, i) for i, name in enumerate(run.branches)]
        self.branch_picker.value = branch if branch is not None and branch < len(run.branches) else 0
        self.slider.max = self.play.max = len(self.steps) - 1
        # the same step in the new run, or the nearest one it logged (not the same slider index)
        self.slider.value = 0 if previous is None else int(np.argmin(np.abs(np.asarray(self.steps) - previous)))
        self._updating = False
        self.update()

    def update(self) -> None:
        """Redraw the three pictures for the current run, layer, branch and step."""
        if getattr(self, "_updating", False) or self.layer_picker.value is None:
            return
        from .display import display_figure

        p, run, step, layer = self._plots, self.run, self.step, self.layer_picker.value
        self.step_label.value = f"step {step}"
        self.forecast_label.value = forecast_text(run, step)
        thr = run.threshold
        snapshot = p.compute_gamma_snapshot(run.gammas, thr, run.branches, step=step, layers=[layer])
        snapshot = snapshot[snapshot["branch"] == self.branch_picker.value]
        layer_frame = self.exchange_frame[self.exchange_frame["layer"] == layer]
        self.figures = {
            "exchange": p.plot_exchange_snapshot(layer_frame, step, title=f"{layer} at step {step}", figsize=(5.5, 2.2)),
            "gammas": p.plot_gamma_snapshot(snapshot, thr, title=f"{layer}: |gamma| at step {step}",
                                                 panel_size=(4.0, 2.4)),
        }
        if not self.curves_frame.empty:  # an imported run has no metrics
            self.figures["curves"] = p.plot_training_curves(self.curves_frame, marker_step=step, panel_size=(3.0, 2.2))
        if not self.live:
            return
        for key, out in self.outputs.items():
            out.clear_output(wait=True)
            with out:
                if key in self.figures:
                    display_figure(self.figures[key])
                else:
                    print(f"{self.run_picker.value}: no training curves (the run logged no metrics)")

    def _ipython_display_(self) -> None:
        from IPython.display import Markdown, display

        if self.live:
            display(self.widget)
            return
        from .display import display_figure

        display(Markdown(f"*The explorer of {', '.join(self.runs)} needs a live kernel (`make lab`, or the web app "
                         f"`make explore`); here are its pictures for run {self.run_picker.value}, layer "
                         f"{self.layer_picker.value}, step {self.step}.*"))
        for fig in self.figures.values():
            display_figure(fig)


def forecast_text(run: Run, step: int) -> str:
    """The line the explorer shows under its slider: the latest forecast ``run`` recorded at or before ``step``."""
    f = run.forecasts[run.forecasts["step"] <= step]
    if f.empty:
        return ("forecast: none recorded by this step" if not run.forecasts.empty else
                "forecast: none recorded (cen_lab.train records one from its 8th logged step; observe needs lr=)")
    r = f.iloc[-1]
    at = "" if r["step_90"] < 0 else f"; 90% at step {int(r['step_90'])}"
    return (f"forecast at step {int(r['step'])}: {r['predicted']:.0%} of the penalised gammas under the threshold at "
            f"step {int(r['budget'])} (interval {r['low']:.0%}-{r['high']:.0%}), {r['state']}{at}")


def runs_under(folder: str | Path) -> dict[str, Run]:
    """Every readable run in ``folder`` or below it, labelled by its path relative to ``folder``; a folder that
    is one run gives that run. Unreadable run folders are skipped with a warning."""
    from ..errors import RunFormatError
    from ..runs.reader import load_run

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    found = {}
    for manifest in sorted(folder.rglob("manifest.json")):
        path = manifest.parent
        try:
            found[str(path.relative_to(folder)) if path != folder else path.name] = load_run(path)
        except RunFormatError as e:
            log.warning("skipping %s: %s", path, e)
    if not found:
        raise ValueError(f"no cen_lab run in {folder}")
    return found


def explore(runs: Run | Sequence[Run] | Mapping[str, Run] | str | Path) -> Explorer:
    """Build an ``Explorer`` for one run, a list of runs, a dict label -> run, or a folder (every run under it,
    see ``runs_under``)."""
    if isinstance(runs, (str, Path)):
        runs = runs_under(runs)
    elif isinstance(runs, Run):
        runs = {runs.path.name: runs}
    elif not isinstance(runs, Mapping):
        runs = {run.path.name: run for run in runs}
    if not in_jupyter() and os.environ.get("CEN_LAB_HEADLESS") != "1":
        warnings.warn(OUTSIDE_JUPYTER, stacklevel=2)  # the state and figures are still built (``.figures``)
    return Explorer(runs)
