"""The report's pages: executed notebooks as offline HTML (MathJax from the report's own copy, no CDN), and
``index.html`` with the report's evidence, its settings, the verdict tables and the run tables."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .._util.atomic import atomic_write_bytes
from ..experiments.regime import SMOKE_PRESETS, SMOKE_TEST, evidence

__all__ = ["write_mathjax", "report_evidence", "VERDICT_COLUMNS", "RUN_COLUMNS"]

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
