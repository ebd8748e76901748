"""Parameterised notebooks and the figure report.

- ``FigureSink``: what notebooks call to display a figure; when given a folder it also writes the figure
  there (matplotlib: PNG and SVG; plotly: an HTML file that loads one shared ``plotly.min.js``).
- ``run_notebook`` and friends (from ``cen_lab.notebook_runner``): a notebook's ``parameters`` cell is its
  signature; unknown names and wrong types are rejected before any cell runs, then papermill executes it.
- ``build_report``: executes the report notebooks into one folder with HTML, figures, ``summary.json`` and
  an ``index.html``; it works offline (plotly.js is written once into the folder).
"""

from __future__ import annotations

import hashlib
import html
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
from ..experiments.regime import SMOKE_PRESETS, SMOKE_TEST, evidence
from .notebooks import (NotebookExecutionError, NotebookParameterError, notebook_parameters, run_notebook,
                              validate_parameters)

log = logging.getLogger(__name__)

__all__ = ["NOTEBOOK_DIR", "REPORT_NOTEBOOKS", "FigureSink", "NotebookParameterError", "NotebookExecutionError",
           "notebook_parameters", "validate_parameters", "run_notebook", "build_report", "obtain_run", "obtain_runs"]

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


TEMPLATES = Path(__file__).resolve().parent / "templates"
MATHJAX_DIR = "mathjax"  # in the report folder, written once
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
# the parts of jupyter-server-mathjax's MathJax 2.7 that this configuration loads (about 2.7 of its 12 MB): the
# combined TeX/MathML config, the extensions it may load (not the 3.7 MB accessibility ones), the HTML-CSS output
# with its STIX-Web font data and web fonts (not the SVG output nor the translations)
_MATHJAX_PARTS = ("MathJax.js", "LICENSE", "config/", "extensions/", "jax/input/", "jax/element/",
                  "jax/output/HTML-CSS/", "fonts/HTML-CSS/")


def write_mathjax(out_dir: str | Path) -> Path:
    """Copy the MathJax files the report's pages need into ``out_dir/mathjax`` (once; atomically as a folder)."""
    import shutil

    import jupyter_server_mathjax

    target = Path(out_dir) / MATHJAX_DIR
    if (target / "MathJax.js").is_file():
        return target
    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    tmp = target.with_name(f".{MATHJAX_DIR}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in source.rglob("*"):
        rel = path.relative_to(source).as_posix()
        if path.is_file() and rel.startswith(_MATHJAX_PARTS) and not rel.startswith("extensions/a11y/"):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp / rel)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _to_html(executed: Path, hide_code: bool) -> Path:
    """The executed notebook as an offline page: MathJax from the report's own copy (``write_mathjax``), no
    require.js, widget manager or other script from a CDN (``templates/cen_lab_offline``)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=hide_code, exclude_input_prompt=hide_code, template_name="cen_lab_offline",
                            extra_template_basedirs=[str(TEMPLATES)],
                            mathjax_url=f"{MATHJAX_DIR}/MathJax.js?config={MATHJAX_CONFIG}")
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    out = executed.with_suffix(".html")
    atomic_write_bytes(out, body.encode("utf-8"))
    return out


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


# the verdict tables' columns: the claim, how it was measured, the number, the verdict and where it holds
VERDICT_COLUMNS = ("claim", "measured", "number", "interval", "verdict", "regime")
# the run tables' columns: the run, then its settings, then its scores (summary.json stores keys sorted)
RUN_COLUMNS = ("run", "status", "steps", "seed", "lam", "threshold", "l1_rule", "optimiser", "architecture", "exchange",
               "modalities", "tasks")


def _column_order(columns: list[str], leading: Sequence[str] = RUN_COLUMNS) -> list[str]:
    first = [c for c in leading if c in columns]
    return first + [c for c in columns if c not in first]


def _interval_text(interval: Any) -> str:
    if not isinstance(interval, (list, tuple)) or any(v is None or v != v for v in interval):
        return "n/a"  # a number without an interval (JSON stores NaN as null)
    return f"[{interval[0]:.3g}, {interval[1]:.3g}]"


def report_evidence(settings: dict[str, Any]) -> str:
    """What a report's numbers can show, from its settings: ``regime.SMOKE_TEST`` when the report or any of its
    notebooks was built from a smoke-test preset, else ``regime.evidence`` of its preset."""
    presets = {settings.get("common", {}).get("preset", "default")}
    presets |= {p["preset"] for p in settings.get("notebooks", {}).values() if "preset" in p}
    smoke = sorted(presets & SMOKE_PRESETS)
    return SMOKE_TEST if smoke else evidence(sorted(presets)[0])


def _evidence_html(summary: dict[str, Any]) -> str:
    if summary.get("evidence") != SMOKE_TEST:
        return ""
    return ("<div class='smoke'><b>Smoke test: these numbers carry no evidence.</b> This report was built from the "
            "<code>tiny</code> preset: its networks train for a few steps on a few images, only to show that every "
            "notebook runs. Its verdicts (\"holds\", \"does not hold\") and scores say nothing about CEN or "
            "Theorem 1. Build the default report (<code>make report</code>) for numbers that mean something.</div>")


def _settings_html(settings: dict[str, Any]) -> str:
    """What the report was built from: the preset and every parameter given to the notebooks."""
    esc = html.escape
    common = settings.get("common", {})
    items = [f"<li><b>{esc(str(k))}</b> = {esc(json.dumps(v))}</li>" for k, v in common.items()]
    for name, params in settings.get("notebooks", {}).items():
        given = ", ".join(f"{esc(str(k))}={esc(json.dumps(v))}" for k, v in params.items())
        items.append(f"<li><b>{esc(name)}</b>: {given}</li>")
    preset = common.get("preset", "the notebooks' defaults")
    lines = [f"<h2>Settings</h2><p>Built from the preset <b>{esc(str(preset))}</b>; each notebook states the "
             "regime of its numbers.</p>"]
    if items:
        lines.append("<ul>" + "".join(items) + "</ul>")
    return "".join(lines)


def _index_html(summary: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cen_lab report</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}",
        "th{background:#f4f4f4}.failed{color:#b00}.figs{display:flex;flex-wrap:wrap;gap:12px}",
        ".figs a img{width:320px;border:1px solid #ddd}.scroll{overflow-x:auto;max-width:100%}",
        "td:first-child,th:first-child{text-align:left;position:sticky;left:0;background:#fff}",
        ".verdicts td{text-align:left;vertical-align:top}.verdicts td:nth-child(3){text-align:right}",
        ".smoke{border:2px solid #b00;background:#fff4f4;padding:0.6em 1em;margin:1em 0}</style></head><body>",
        f"<h1>cen_lab report</h1><p>created {esc(summary['created'])} with cen_lab {esc(summary['cen_lab'])}</p>",
        _evidence_html(summary),
        _settings_html(summary.get("settings", {})),
        "<h2>Notebooks</h2><ul>",
    ]
    for name, e in summary["notebooks"].items():
        links = " · ".join(f"<a href='{esc(e[k])}'>{k}</a>" for k in ("html", "ipynb") if e.get(k))
        status = f"<span class='failed'>failed: {esc(e['error'] or '')}</span>" if e["status"] != "ok" else "ok"
        parts.append(f"<li><b>{esc(name)}</b> ({status}) {links}</li>")
    parts.append("</ul>")
    for name, e in summary["notebooks"].items():
        for key, heading in (("verdicts", "Verdicts of"), ("runs", "Runs of")):
            rows = e.get("summary", {}).get(key)
            if rows:
                parts.append(f"<h2>{heading} {esc(name)}</h2>")
                table = pd.DataFrame(rows)
                table = table[_column_order(list(table.columns), RUN_COLUMNS if key == "runs" else VERDICT_COLUMNS)]
                if "interval" in table:
                    table["interval"] = [_interval_text(v) for v in table["interval"]]
                html_table = table.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0,
                                           classes="verdicts" if key == "verdicts" else None)
                parts.append(f"<div class='scroll'>{html_table}</div>")
        figs = e.get("figures", [])
        if figs:
            parts.append(f"<h2>Figures of {esc(name)}</h2><div class='figs'>")
            stems = dict.fromkeys(Path(f).with_suffix("") for f in figs)
            for stem in stems:
                png, svg, page = (f"{stem}.{x}" for x in ("png", "svg", "html"))
                label = esc(stem.name)
                if png in figs:
                    extra = f" · <a href='{esc(svg)}'>svg</a>" if svg in figs else ""
                    parts.append(f"<div><a href='{esc(png)}'><img src='{esc(png)}' alt='{label}'></a><br>{label}{extra}</div>")
                elif page in figs:
                    parts.append(f"<div><a href='{esc(page)}'>{label} (interactive)</a></div>")
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
