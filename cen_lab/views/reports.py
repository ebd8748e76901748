"""Parameterised notebooks and the figure report.

- ``FigureSink``: what notebooks call to display a figure; when given a folder it also writes the figure
  there (matplotlib: PNG and SVG; plotly: an HTML file that loads one shared ``plotly.min.js``).
- ``run_notebook`` and friends (from ``cen_lab.views.notebooks``): a notebook's ``parameters`` cell is its
  signature; unknown names and wrong types are rejected before any cell runs, then papermill executes it.
- ``build_report``: executes the report notebooks into one folder with HTML, figures, ``summary.json`` and
  an ``index.html``; it works offline (plotly.js is written once into the folder). The pages themselves are
  made in ``cen_lab.views.pages``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from .._util.atomic import atomic_write_bytes, atomic_write_json
from .display import display_figure
from .notebooks import (NotebookExecutionError, NotebookParameterError, notebook_parameters, run_notebook,
                        validate_parameters)
from .pages import (MATHJAX_CONFIG, MATHJAX_DIR, RUN_COLUMNS, TEMPLATES, VERDICT_COLUMNS, _index_html,  # noqa: F401
                    _to_html, report_evidence, write_mathjax)  # (the constants and report_evidence: importable here)

log = logging.getLogger(__name__)

__all__ = ["NOTEBOOK_DIR", "REPORT_NOTEBOOKS", "FigureSink", "NotebookParameterError", "NotebookExecutionError",
           "notebook_parameters", "validate_parameters", "run_notebook", "build_report", "obtain_run", "obtain_runs",
           "obtain_regime_pair"]

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
# notebooks the report executes, in order; the explorer needs a live kernel and is not part of it
REPORT_NOTEBOOKS = ("quickstart", "exchange_dynamics", "theorem1", "bring_your_own")
PLOTLY_JS = "plotly.min.js"


# -- figures --------------------------------------------------------------------------------------------------


class FigureSink:
    """Display figures in a notebook and, when ``out_dir`` is set, write them to files.

    Parameters
    ----------
    out_dir : str or Path, optional
        Folder for the files (``""`` or None: display only).
    plotly_js : str or Path, optional
        Path of a shared ``plotly.min.js``. Plotly figures then load it by relative path, so the notebook's
        HTML (next to that file) and the figure files work offline; otherwise plotly.js comes from its CDN.
    """

    def __init__(self, out_dir: str | Path | None = None, plotly_js: str | Path | None = None):
        self.out_dir = Path(out_dir) if out_dir else None
        self.plotly_js = Path(plotly_js).resolve() if plotly_js else None
        self.summary: dict[str, Any] = {}
        self.written: list[Path] = []
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def show(self, fig: Any, name: str) -> None:
        """Display ``fig`` and write it as ``<out_dir>/<name>.png|svg`` (matplotlib) or ``.html`` (plotly)."""
        from IPython.display import display

        if not name or any(c in name for c in "/\\"):
            raise ValueError(f"figure name must be a plain file stem, got {name!r}")
        if _is_plotly(fig):
            display(self._plotly_bundle(fig), raw=True)
            if self.out_dir is not None:
                src = os.path.relpath(self.plotly_js, self.out_dir) if self.plotly_js else "cdn"
                path = self.out_dir / f"{name}.html"
                atomic_write_bytes(path, fig.to_html(full_html=True, include_plotlyjs=src).encode())
                self.written.append(path)
            return
        display_figure(fig)
        if self.out_dir is not None:
            for ext in ("png", "svg"):
                path = self.out_dir / f"{name}.{ext}"
                fig.savefig(path, dpi=130)
                self.written.append(path)

    def _plotly_bundle(self, fig: Any) -> dict[str, Any]:
        # JupyterLab renders the plotly mime type itself; exported HTML uses the text/html fallback
        src = self.plotly_js.name if self.plotly_js else "cdn"
        return {"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
                "text/html": fig.to_html(full_html=False, include_plotlyjs=src),
                "text/plain": f"<plotly figure: {fig.layout.title.text or ''}>"}

    def table(self, frame: pd.DataFrame, key: str) -> None:
        """``record`` ``frame`` under ``key`` and display it whole: pandas' display cuts text cells at 50
        characters, which hides what a regime line says after its architecture (the optimiser, lam, ...)."""
        from IPython.display import HTML, display

        self.record(key, frame)
        display(HTML(frame.to_html(index=False)))

    def record_all(self, values: Mapping[str, Any]) -> None:
        """``record`` every item of ``values``."""
        for key, value in values.items():
            self.record(key, value)

    def record(self, key: str, value: Any) -> None:
        """Add ``key: value`` to this notebook's summary (``<out_dir>/summary.json`` when writing).

        DataFrames are stored as lists of records.
        """
        if isinstance(value, pd.DataFrame):
            value = json.loads(value.to_json(orient="records"))
        self.summary[key] = value
        if self.out_dir is not None:
            atomic_write_json(self.out_dir / "summary.json", self.summary)


def _is_plotly(fig: Any) -> bool:
    return type(fig).__module__.startswith("plotly")


# -- runs for notebooks ---------------------------------------------------------------------------------------


def _name_for(preset: str, overrides: Mapping[str, Any]) -> str:
    if "name" in overrides:
        return str(overrides["name"])
    if not overrides:
        return preset
    digest = hashlib.sha1(json.dumps(dict(overrides), sort_keys=True).encode()).hexdigest()[:8]
    return f"{preset}-{digest}"


def obtain_run(preset: str = "default", overrides: Mapping[str, Any] | None = None, run_dir: str = "",
               runs_dir: str = "runs", progress: bool = True):
    """The run a notebook works on: ``load_run(run_dir)`` when given, else train ``preset`` + ``overrides``
    into ``runs_dir/<name>`` (a complete run there is reused, an incomplete one resumed).

    The name is the preset's when there are no overrides, else ``<preset>-<hash of the overrides>``, unless
    the overrides set ``name``.
    """
    from ..config import ExperimentConfig
    from ..runs.reader import load_run
    from ..experiments.training import train

    if run_dir:
        return load_run(run_dir)
    overrides = dict(overrides or {})
    cfg = ExperimentConfig.preset(preset).override({**overrides, "name": _name_for(preset, overrides)})
    return train(cfg, Path(runs_dir) / cfg.name, resume=True, progress=progress)


def obtain_runs(preset: str = "default", grid: Mapping[str, Sequence[Any]] | None = None,
                run_dirs: Sequence[str] = (), runs_dir: str = "runs", progress: bool = True) -> dict[str, Any]:
    """Several runs: the runs in ``run_dirs`` when given (each a run folder, or a folder of runs: see
    ``widgets.runs_under``), else one run per point of the cartesian ``grid`` of dotted overrides
    (``{"train.lam": [1e-3, 5e-3]}``), trained or reused as ``obtain_run`` does.

    Returns a dict label -> Run; labels read ``train.lam=0.001`` (or the run's folder relative to the folder
    given; the full path where two folders give the same label).
    """
    if run_dirs:
        from .widgets import runs_under

        runs: dict[str, Any] = {}
        for d in run_dirs:
            for label, run in runs_under(d).items():
                runs[str(run.path) if label in runs else label] = run
        return runs
    from ..experiments.sweeps import grid_points

    runs = {}
    for overrides in grid_points(grid or {}):
        label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or preset
        runs[label] = obtain_run(preset, overrides, "", runs_dir, progress)
    return runs


def obtain_regime_pair(preset: str = "default", seed: int = 0, runs_dir: str = "runs",
                       progress: bool = True) -> dict[str, Any]:
    """Two runs of ``preset`` on one seed, with gradients logged (for the diagnosis's importance): in the preset's
    own regime, and in the ``collapse`` preset's training settings (``cen_lab.config.COLLAPSE_TRAIN``: SGD with
    momentum at a constant rate). Trained or reused as ``obtain_run`` does. Returns ``{preset: run, "collapse":
    run}`` (only ``{"collapse": run}`` when the preset already is ``collapse``)."""
    from ..config import COLLAPSE_TRAIN

    common = {"seed": seed, "log.grads": True}
    pair = {"collapse": obtain_run(preset, {**COLLAPSE_TRAIN, **common}, "", runs_dir, progress)}
    if preset != "collapse":
        pair = {preset: obtain_run(preset, common, "", runs_dir, progress), **pair}
    return pair


# -- the report -----------------------------------------------------------------------------------------------


@dataclass
class ReportResult:
    """What ``build_report`` produced: the folder, its index, and the notebooks that failed."""

    out_dir: Path
    index: Path
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def build_report(out_dir: str | Path, parameters: Mapping[str, Mapping[str, Any]] | None = None, *,
                 common: Mapping[str, Any] | None = None, notebooks: Sequence[str] = REPORT_NOTEBOOKS,
                 notebook_dir: str | Path = NOTEBOOK_DIR, hide_code: bool = False, log_output: bool = True,
                 echo: Callable[[str], None] = print) -> ReportResult:
    """Execute the report notebooks into ``out_dir`` and write the HTML pages, figures and index.

    Parameters
    ----------
    out_dir : str or Path
        The report folder (created). It receives, per notebook, the executed ``<name>.ipynb`` and
        ``<name>.html`` and ``figures/<name>/`` (PNG + SVG per matplotlib figure, HTML per plotly figure), then
        ``plotly.min.js`` once, ``summary.json`` and ``index.html``.
    parameters : mapping, optional
        Notebook name -> parameters for that notebook.
    common : mapping, optional
        Parameters given to every notebook that declares them (e.g. ``preset``, ``runs_dir``).
    hide_code : bool
        Leave code cells out of the HTML pages.

    Returns
    -------
    ReportResult
        A failing notebook does not stop the others; it is listed in ``failures`` (notebook -> message), its
        partial output is kept, and what succeeded stays in place.
    """
    import plotly.offline

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    js = out / PLOTLY_JS
    if not js.is_file():
        atomic_write_bytes(js, plotly.offline.get_plotlyjs().encode("utf-8"))
    write_mathjax(out)
    parameters = {k: dict(v) for k, v in (parameters or {}).items()}
    unknown = [k for k in parameters if k not in notebooks]
    if unknown:
        raise NotebookParameterError(f"parameters given for {unknown[0]!r}, which is not one of {list(notebooks)}")
    result = ReportResult(out, out / "index.html")
    entries = []
    for i, name in enumerate(notebooks, 1):
        path = Path(notebook_dir) / f"{name}.ipynb"
        declared = notebook_parameters(path)
        params = {k: v for k, v in (common or {}).items() if k in declared}
        params.update(parameters.get(name, {}))
        params.update(figures_dir=str(out / "figures" / name), plotly_js=str(js))
        echo(f"[report] ({i}/{len(notebooks)}) {path.name}")
        entry: dict[str, Any] = {"name": name, "status": "ok", "error": None}
        try:
            executed = run_notebook(path, params, out, log_output=log_output)
        except NotebookExecutionError as e:
            executed, entry["status"], entry["error"] = e.output, "failed", str(e)
            result.failures[name] = str(e)
            echo(f"[report] FAILED: {e}")
        except NotebookParameterError as e:
            entry["status"], entry["error"] = "failed", str(e)
            result.failures[name] = str(e)
            echo(f"[report] FAILED: {e}")
            executed = None
        if executed is not None and executed.is_file():
            entry["html"] = _to_html(executed, hide_code).name
            entry["ipynb"] = executed.name
        fig_dir = out / "figures" / name
        entry["summary"] = json.loads((fig_dir / "summary.json").read_text()) if (fig_dir / "summary.json").is_file() else {}
        entry["figures"] = sorted(str(p.relative_to(out)) for p in fig_dir.glob("*") if p.suffix in (".png", ".svg", ".html"))
        entries.append(entry)
    from .._version import __version__

    settings = {"common": {k: v for k, v in (common or {}).items()}, "notebooks": parameters}
    summary = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cen_lab": __version__,
               "ok": result.ok, "settings": settings, "evidence": report_evidence(settings),
               "notebooks": {e["name"]: {k: v for k, v in e.items() if k != "name"} for e in entries}}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(result.index, _index_html(summary).encode("utf-8"))
    echo(f"[report] wrote {result.index}")
    return result
