"""Parameterised notebooks and the figure report.

- ``FigureSink``: what notebooks call to display a figure; when given a folder it also writes the figure
  there (matplotlib: PNG and SVG; plotly: an HTML file that loads one shared ``plotly.min.js``).
- ``notebook_parameters`` / ``validate_parameters`` / ``run_notebook``: a notebook's ``parameters`` cell is
  its signature. Unknown names and values of the wrong type are rejected before any cell runs (papermill
  itself only warns), then papermill executes it.
- ``build_report``: executes the report notebooks into one folder with HTML, figures, ``summary.json`` and
  an ``index.html``; it works offline (plotly.js is written once into the folder).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import html
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import product
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ._io import atomic_write_bytes, atomic_write_json
from .display import display_figure
from .errors import CenLabError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["NOTEBOOK_DIR", "REPORT_NOTEBOOKS", "FigureSink", "NotebookParameterError", "NotebookExecutionError",
           "notebook_parameters", "validate_parameters", "run_notebook", "build_report", "obtain_run", "obtain_runs"]

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# notebooks the report executes, in order; the explorer needs a live kernel and is not part of it
REPORT_NOTEBOOKS = ("quickstart", "exchange_dynamics", "theorem1")
PLOTLY_JS = "plotly.min.js"


class NotebookParameterError(CenLabError, ValueError):
    """An unknown parameter name or a value of the wrong type for a notebook."""


class NotebookExecutionError(CenLabError, RuntimeError):
    """A notebook cell raised; the partially executed notebook is kept at ``output``."""

    def __init__(self, notebook: Path, cell: int | None, ename: str, evalue: str, output: Path):
        self.notebook, self.cell, self.ename, self.evalue, self.output = notebook, cell, ename, evalue, output
        where = f"cell In [{cell}]" if cell is not None else "a cell"
        super().__init__(f"{notebook.name}: {where} failed with {ename}: {evalue} (executed notebook kept at {output})")


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
    from .config import ExperimentConfig
    from .runlog import load_run
    from .training import train

    if run_dir:
        return load_run(run_dir)
    overrides = dict(overrides or {})
    cfg = ExperimentConfig.preset(preset).override({**overrides, "name": _name_for(preset, overrides)})
    return train(cfg, Path(runs_dir) / cfg.name, resume=True, progress=progress)


def obtain_runs(preset: str = "default", grid: Mapping[str, Sequence[Any]] | None = None,
                run_dirs: Sequence[str] = (), runs_dir: str = "runs", progress: bool = True) -> dict[str, Any]:
    """Several runs: ``load_run`` of each of ``run_dirs`` when given, else one run per point of the cartesian
    ``grid`` of dotted overrides (``{"train.lam": [1e-3, 5e-3]}``), trained or reused as ``obtain_run`` does.

    Returns a dict label -> Run; labels read ``train.lam=0.001`` (or the run folder's name).
    """
    from .runlog import load_run

    if run_dirs:
        return {Path(d).name: load_run(d) for d in run_dirs}
    grid = dict(grid or {})
    runs = {}
    for values in product(*grid.values()):
        overrides = dict(zip(grid, values))
        label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or preset
        runs[label] = obtain_run(preset, overrides, "", runs_dir, progress)
    return runs


# -- notebook parameters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotebookParameter:
    name: str
    default: Any
    help: str


def _read_notebook(path: Path):
    import nbformat

    if not path.is_file():
        raise NotebookParameterError(f"{path}: no such notebook")
    return nbformat.read(path, as_version=4)


def notebook_parameters(path: str | Path) -> dict[str, NotebookParameter]:
    """The parameters a notebook declares in its ``parameters``-tagged cell: ``name = literal  # help``."""
    path = Path(path)
    nb = _read_notebook(path)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise NotebookParameterError(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
    source = cells[0].source
    lines = source.splitlines()
    params = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            raise NotebookParameterError(f"{path.name}: the parameters cell may hold only 'name = literal' lines")
        try:
            default = ast.literal_eval(value)
        except ValueError:
            raise NotebookParameterError(f"{path.name}: parameter {target!r} must have a literal default") from None
        line = lines[node.lineno - 1]
        help_text = line.split("#", 1)[1].strip() if "#" in line else ""
        params[target] = NotebookParameter(target, default, help_text)
    return params


def _type_ok(value: Any, default: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        return not default or all(_type_ok(v, default[0]) for v in value)
    return isinstance(value, type(default))


def _check_preset(value: Any) -> None:
    from .config import PRESETS

    if value not in PRESETS:
        raise NotebookParameterError(f"parameter 'preset' must be one of {sorted(PRESETS)}, got {value!r}")


def _check_paths(value: Any) -> None:
    for p in [value] if isinstance(value, str) else value:
        if p and not Path(p).is_dir():
            raise NotebookParameterError(f"run directory {p!r} does not exist")


def _check_variants(value: Any) -> None:
    from .fusion import VARIANTS

    unknown = [v for v in value if v not in VARIANTS]
    if unknown:
        raise NotebookParameterError(f"parameter 'variants': unknown variant {unknown[0]!r}; choose from {list(VARIANTS)}")


# parameters with a meaning across notebooks get a semantic check on top of the type check
_VALIDATORS: dict[str, Callable[[Any], None]] = {"preset": _check_preset, "run_dir": _check_paths,
                                                  "run_dirs": _check_paths, "variants": _check_variants}


def validate_parameters(path: str | Path, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``parameters`` against the notebook's declared ones; return the full set (defaults filled in).

    Raises ``NotebookParameterError`` for an unknown name (with the closest valid one), a value whose type
    differs from the default's, an unknown preset, a missing run directory, or overrides the config rejects.
    """
    declared = notebook_parameters(path)
    name = Path(path).name
    for key, value in parameters.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise NotebookParameterError(f"{name}: unknown parameter {key!r}{hint} (valid: {sorted(declared)})")
        default = declared[key].default
        if not _type_ok(value, default):
            raise NotebookParameterError(
                f"{name}: parameter {key!r} must be of type {type(default).__name__} like its default "
                f"{default!r}, got {value!r}")
        if key in _VALIDATORS:
            try:
                _VALIDATORS[key](value)
            except NotebookParameterError as e:
                raise NotebookParameterError(f"{name}: {e}") from None
    full = {k: p.default for k, p in declared.items()} | dict(parameters)
    if "overrides" in full and "preset" in full:
        from .config import ExperimentConfig

        try:
            ExperimentConfig.preset(full["preset"]).override(full["overrides"])
        except ConfigError as e:
            raise NotebookParameterError(f"{name}: parameter 'overrides': {e}") from None
    return full


def run_notebook(path: str | Path, parameters: Mapping[str, Any] | None = None, out_dir: str | Path = ".", *,
                 progress_bar: bool = True, log_output: bool = False, kernel_name: str = "python3") -> Path:
    """Validate ``parameters``, then execute the notebook with papermill into ``out_dir/<name>``.

    The kernel runs in the notebook's folder with this Python. Training progress inside the notebook is
    printed as text (``CEN_LAB_PROGRESS=text``), which ``log_output=True`` echoes to the terminal.

    Returns
    -------
    Path
        The executed notebook.

    Raises
    ------
    NotebookParameterError
        Before any cell runs.
    NotebookExecutionError
        Naming the notebook and the failing cell; the partially executed notebook is kept.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    parameters = dict(parameters or {})
    validate_parameters(path, parameters)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    env = {"CEN_LAB_PROGRESS": "text", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(path), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(path.parent), progress_bar=progress_bar, log_output=log_output)
    except PapermillExecutionError as e:
        raise NotebookExecutionError(path, e.exec_count, e.ename, e.evalue, output) from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return output


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


def _to_html(executed: Path, hide_code: bool) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=hide_code, exclude_input_prompt=hide_code)
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
    from . import __version__

    summary = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cen_lab": __version__,
               "ok": result.ok, "notebooks": {e["name"]: {k: v for k, v in e.items() if k != "name"} for e in entries}}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(result.index, _index_html(summary).encode("utf-8"))
    echo(f"[report] wrote {result.index}")
    return result


def _index_html(summary: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cen_lab report</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}",
        "th{background:#f4f4f4}.failed{color:#b00}.figs{display:flex;flex-wrap:wrap;gap:12px}",
        ".figs a img{width:320px;border:1px solid #ddd}</style></head><body>",
        f"<h1>cen_lab report</h1><p>created {esc(summary['created'])} with cen_lab {esc(summary['cen_lab'])}</p>",
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
                parts.append(pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
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
