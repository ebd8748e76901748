import json
import math

import matplotlib.figure
import nbformat
import plotly.graph_objects as go
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from cen_lab.experiments.analysis import compute_run_summary
from cen_lab.views.reports import (NOTEBOOK_DIR, REPORT_NOTEBOOKS, FigureSink, NotebookExecutionError,
                             NotebookParameterError, build_report, notebook_parameters, run_notebook,
                             validate_parameters)

QUICKSTART = NOTEBOOK_DIR / "quickstart.ipynb"


def _notebook(tmp_path, name, *cells, params='x = 1  # a number\nmarker = ""  # a path'):
    nb = new_notebook(cells=[new_code_cell(params, metadata={"tags": ["parameters"]}),
                             *[new_code_cell(c) for c in cells]],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_parameters_cell_is_the_signature():
    params = notebook_parameters(QUICKSTART)
    assert params["preset"].default == "default" and "preset" in params["preset"].help
    assert params["overrides"].default == {} and params["run_dir"].default == ""
    assert all(p.help for p in params.values())


@pytest.mark.parametrize(
    "given, match",
    [({"presett": "tiny"}, "unknown parameter 'presett'; did you mean 'preset'"),
     ({"progress": "yes"}, "parameter 'progress' must be of type bool"),
     ({"overrides": [1]}, "parameter 'overrides' must be of type dict"),
     ({"preset": "huge"}, "parameter 'preset' must be one of"),
     ({"run_dir": "/no/such/run"}, "run directory '/no/such/run' does not exist"),
     ({"overrides": {"train.lamda": 1}}, "parameter 'overrides': unknown config key 'train.lamda'")],
)
def test_bad_parameters_are_rejected(given, match):
    with pytest.raises(NotebookParameterError, match=match):
        validate_parameters(QUICKSTART, given)


def test_list_parameters_check_element_types():
    nb = NOTEBOOK_DIR / "exchange_dynamics.ipynb"
    assert validate_parameters(nb, {"lams": [1, 0.5]})["lams"] == [1, 0.5]  # ints are fine where floats are
    with pytest.raises(NotebookParameterError, match="parameter 'lams' must be of type list"):
        validate_parameters(nb, {"lams": ["a"]})


def test_rejection_happens_before_any_cell_runs(tmp_path):
    marker = tmp_path / "ran"
    nb = _notebook(tmp_path, "m", "import pathlib; pathlib.Path(marker).write_text('ran')")
    with pytest.raises(NotebookParameterError, match="unknown parameter 'y'"):
        run_notebook(nb, {"marker": str(marker), "y": 2}, tmp_path / "out", progress_bar=False)
    assert not marker.exists() and not (tmp_path / "out" / "m.ipynb").exists()
    run_notebook(nb, {"marker": str(marker)}, tmp_path / "out", progress_bar=False)
    assert marker.read_text() == "ran"


def test_failing_notebook_names_the_notebook_and_cell_and_keeps_output(tmp_path):
    nb = _notebook(tmp_path, "broken", "y = x + 1", "raise ValueError(f'bad value {y}')")
    with pytest.raises(NotebookExecutionError) as info:
        run_notebook(nb, {"x": 41}, tmp_path / "out", progress_bar=False)
    err = info.value
    assert "broken.ipynb" in str(err) and "ValueError: bad value 42" in str(err) and err.cell is not None
    executed = nbformat.read(err.output, as_version=4)
    assert any(o.get("ename") == "ValueError" for c in executed.cells for o in c.get("outputs", []))


def test_figure_sink_writes_files_and_summary(tmp_path):
    js = tmp_path / "plotly.min.js"
    js.write_text("// plotly")
    sink = FigureSink(tmp_path / "figs", plotly_js=js)
    fig = matplotlib.figure.Figure()
    fig.subplots().plot([0, 1])
    sink.show(fig, "line")
    sink.show(go.Figure(go.Scatter(x=[0], y=[1])), "scatter")
    assert (tmp_path / "figs" / "line.png").stat().st_size > 0 and (tmp_path / "figs" / "line.svg").is_file()
    page = (tmp_path / "figs" / "scatter.html").read_text()
    assert 'src="../plotly.min.js"' in page and "cdn.plot.ly" not in page
    sink.record("n", 3)
    assert json.loads((tmp_path / "figs" / "summary.json").read_text()) == {"n": 3}
    with pytest.raises(ValueError, match="plain file stem"):
        sink.show(fig, "a/b")


def test_figure_sink_shows_a_table_whole_and_records_it(tmp_path, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    long = "plain conv blocks (32, 32, 64, 64), mean exchange; 600 steps; lam 0.002; Adam lr 0.005 cosine"
    sink = FigureSink(tmp_path / "figs")
    sink.table(pd.DataFrame({"measure": ["regime"], "default": [long]}), "cmp")
    assert long in shown[0].data  # pandas' own display would cut it at 50 characters
    assert json.loads((tmp_path / "figs" / "summary.json").read_text()) == {"cmp": [{"measure": "regime", "default": long}]}


def test_run_summary_numbers(tiny_run):
    row = compute_run_summary({"t": tiny_run}).iloc[0]
    assert row["run"] == "t" and row["steps"] == 12 and row["lam"] == tiny_run.config.train.lam
    expected = tiny_run.metrics.query("split == 'val' and step == 12 and name == 'miou/ensemble'")["value"].item()
    assert row["val/miou/ensemble"] == expected and 0 <= row["exchange_ratio"] <= 1


def test_report_notebooks_execute_and_write_every_artifact(tiny_report):
    out = tiny_report.out_dir
    assert tiny_report.ok, tiny_report.failures
    for name in REPORT_NOTEBOOKS:
        assert (out / f"{name}.ipynb").is_file() and (out / f"{name}.html").stat().st_size > 10_000
    figs = out / "figures" / "quickstart"
    for stem in ("gamma_trajectories", "exchange_maps", "exchange_ratio", "flip_counts", "gamma_distributions",
                 "sparsity", "training_curves"):
        assert (figs / f"{stem}.png").stat().st_size > 1000 and (figs / f"{stem}.svg").is_file()
    for stem in ("gamma_trajectories_interactive", "exchange_animation", "training_curves_interactive"):
        assert 'src="../../plotly.min.js"' in (figs / f"{stem}.html").read_text()
    assert (out / "plotly.min.js").stat().st_size > 1_000_000


def test_executed_notebooks_store_images_not_reprs(tiny_report):
    executed = nbformat.read(tiny_report.out_dir / "quickstart.ipynb", as_version=4)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 7
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 3
    assert not any(set(o.get("data", {})) == {"text/plain"} and o["data"]["text/plain"].startswith("<Figure size")
                   for o in outputs)


def test_report_summary_holds_numbers_and_index_links_everything(tiny_report):
    out = tiny_report.out_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and set(summary["notebooks"]) == set(REPORT_NOTEBOOKS)
    runs = summary["notebooks"]["exchange_dynamics"]["summary"]["runs"]
    assert [r["lam"] for r in runs] == [0.001, 0.01]
    for row in runs + summary["notebooks"]["quickstart"]["summary"]["runs"]:
        assert math.isfinite(row["val/miou/ensemble"]) and math.isfinite(row["exchange_ratio"])
    index = (out / "index.html").read_text()
    for name in REPORT_NOTEBOOKS:
        assert f"href='{name}.html'" in index
    assert "figures/quickstart/gamma_trajectories.png" in index


def test_report_html_works_offline(tiny_report):
    import re

    page = (tiny_report.out_dir / "quickstart.html").read_text()
    assert 'src="plotly.min.js"' in page
    assert "cdn.plot.ly" not in page and "cdn.jsdelivr.net/npm/plotly" not in page
    # no page loads anything from the network: MathJax comes from the report's own copy; no require.js,
    # widget manager or Mermaid from a CDN
    for name in REPORT_NOTEBOOKS:
        html_page = (tiny_report.out_dir / f"{name}.html").read_text()
        remote = re.findall(r"""(?:src|href)=["'](?:https?:)?//[^"']+""", html_page)
        assert not remote, (name, remote[:3])
        assert 'src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"' in html_page, name
        assert "require.min.js" not in html_page and "unpkg.com" not in html_page and "mermaid" not in html_page
    mathjax = tiny_report.out_dir / "mathjax"
    files = [p for p in mathjax.rglob("*") if p.is_file()]
    assert (mathjax / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()
    assert (mathjax / "fonts" / "HTML-CSS" / "STIX-Web" / "woff" / "STIXMathJax_Main-Regular.woff").is_file()
    assert sum(p.stat().st_size for p in files) < 4_000_000  # the parts the configuration loads, not all 12 MB


def test_failing_report_notebook_keeps_what_succeeded(tmp_path):
    good = _notebook(tmp_path, "good", "print(x)", params='x = 1  # a number\nfigures_dir = ""  # f\nplotly_js = ""  # p')
    bad = _notebook(tmp_path, "bad", "1 / 0", params='figures_dir = ""  # f\nplotly_js = ""  # p')
    assert good.is_file() and bad.is_file()
    result = build_report(tmp_path / "rep", notebooks=["bad", "good"], notebook_dir=tmp_path, log_output=False,
                          echo=lambda _: None)
    assert not result.ok and "ZeroDivisionError" in result.failures["bad"] and "bad.ipynb" in result.failures["bad"]
    assert (tmp_path / "rep" / "good.html").is_file() and (tmp_path / "rep" / "bad.html").is_file()
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["notebooks"]["bad"]["status"] == "failed" and summary["notebooks"]["good"]["status"] == "ok"
    assert "failed" in (tmp_path / "rep" / "index.html").read_text()


def test_theorem_notebook_writes_its_summary_and_figures(tiny_report):
    figs = tiny_report.out_dir / "figures" / "theorem1"
    for stem in ("controlled_check", "dynamic_check", "reliability", "qq", "outcome", "corollary", "regime_calibration",
                 "regime_outcome", "drift", "prediction_ece"):
        assert (figs / f"{stem}.png").stat().st_size > 1000
    summary = json.loads((figs / "summary.json").read_text())
    assert 0 <= summary["controlled"]["within_ci_fraction"] <= 1 and summary["controlled"]["max_abs_error"] < 0.2
    for key in ("brier", "ece", "spearman"):
        assert isinstance(summary["trained"][key], float)
    assert [r["lam"] for r in summary["outcome"]["rows"]] == [0.01, 0.5]
    assert {"lam", "predicted", "observed", "ci_low", "ci_high"} <= set(summary["outcome"]["rows"][0])
    assert len(summary["corollary"]["rows"]) == 4 and {r["verdict"] for r in summary["verdicts"]} <= {
        "holds", "does not hold", "inconclusive"}
    top = json.loads((tiny_report.out_dir / "summary.json").read_text())
    assert top["notebooks"]["theorem1"]["summary"]["trained"]["ece"] == summary["trained"]["ece"]
    # section 5 in the report: plain SGD next to momentum 0.9, and InstanceNorm, each with its verdicts (the
    # bottleneck regimes are cen-lab bench-theorem-regimes's, out of the report's time)
    regimes = [r["regime"] for r in summary["regime_comparison"]["calibration"]]
    assert regimes == ["plain, momentum 0.9", "plain, momentum 0", "plain, momentum 0.9, instance norm"]
    assert sum("(plain, momentum 0)" in r["claim"] for r in summary["verdicts"]) == 2
    assert sum("(plain, momentum 0.9, instance norm)" in r["claim"] for r in summary["verdicts"]) == 2
    assert not any("bottleneck" in r["claim"] for r in summary["verdicts"])
    # section 6: the formula and the two corrected predictions on the same held-out rows
    assert [r["predictor"][:3] for r in summary["miscalibration"]["ece"]] == ["for", "(a)", "(b)"]
    assert sum(r["claim"].startswith("Corrected prediction") for r in summary["verdicts"]) == 1  # (b)
    assert sum(r["claim"].startswith("Gaussian form of g around a drift (a) check") for r in summary["verdicts"]) == 1


def test_bring_your_own_notebook_in_the_report(tiny_report):
    """The reference-style model, trained by a hand-written loop under the observer, through every section."""
    out = tiny_report.out_dir
    figs = out / "figures" / "bring_your_own"
    for stem in ("gamma_trajectories", "exchange_maps", "exchange_ratio", "training_curves",
                 "imported_gamma_trajectories", "reliability", "qq", "translation_gamma_trajectories",
                 "translation_exchange_maps", "translation_training_curves"):
        assert (figs / f"{stem}.png").stat().st_size > 1000, stem
    summary = json.loads((figs / "summary.json").read_text())
    # the reference-layout translator: its list files imported to the observed gammas, at the files' steps
    assert [r["step"] for r in summary["translation_import"]] == [2, 4, 6]
    assert all(r["max_abs_difference"] == 0 and r["same_penalised"] for r in summary["translation_import"])
    assert {r["setting"]: r["value"] for r in summary["translation_regime"]}["trained steps"] == "6"
    assert all(len(r["value"]) <= 50 for r in summary["translation_regime"])  # shown whole, as the regime above
    regime = {r["setting"]: r["value"] for r in summary["regime"]}
    assert regime["evidence"] == "none: the tiny preset is a smoke test" and regime["trained steps"] == "6"
    assert {r["measure"] for r in summary["calibration"]} >= {"ece", "brier", "spearman"}
    # every regime value and calibration measure shows whole under pandas' default display width (50)
    assert all(len(r["value"]) <= 50 for r in summary["regime"])
    assert all(len(r["measure"]) <= 50 for r in summary["calibration"])
    executed = nbformat.read(out / "bring_your_own.ipynb", as_version=4)
    explorer = [o for c in executed.cells if "explore(" in c.source for o in c.get("outputs", [])]
    # the explorer, headless: a note and its three pictures, not widget placeholders
    assert "needs a live kernel" in explorer[0]["data"]["text/markdown"]
    assert sum("image/png" in o.get("data", {}) for o in explorer) == 3
    source = "".join(o.get("data", {}).get("text/html", "") for c in executed.cells for o in c.get("outputs", []))
    assert "hand_written_loop" in source  # the loop's source is shown


def test_index_tables_put_the_run_and_its_settings_first_and_state_the_settings():
    from cen_lab.views.reports import _index_html

    runs = [{"exchange_ratio": 0.5, "lam": 0.01, "run": "r1", "seed": 0, "status": "complete", "steps": 12,
             "threshold": 0.02, "val/miou/ensemble": 0.7}]  # sorted keys, as summary.json stores them
    summary = {"created": "now", "cen_lab": "0", "ok": True,
               "settings": {"common": {"preset": "tiny", "runs_dir": "runs"}, "notebooks": {"theorem1": {"steps": 12}}},
               "notebooks": {"quickstart": {"status": "ok", "error": None, "summary": {"runs": runs}, "figures": []}}}
    page = _index_html(summary)
    settings_at = page.index("<h2>Settings</h2>")
    assert settings_at < page.index("<h2>Notebooks</h2>")
    assert "Built from the preset <b>tiny</b>" in page and "<b>theorem1</b>: steps=12" in page
    import re

    header = page[page.index("<thead>"):page.index("</thead>")]
    order = re.findall(r"<th>(.*?)</th>", header)
    assert order == ["run", "status", "steps", "seed", "lam", "threshold", "exchange_ratio", "val/miou/ensemble"]
    assert "<div class='scroll'><table" in page


def test_headless_notebooks_print_progress_as_text_not_widgets(tmp_path):
    """A widget bar saved in an executed notebook renders as an empty box in its offline page; the library's
    bars print text under run_notebook. The control cell shows that a plain tqdm.auto bar would be a widget."""
    nb = new_notebook(cells=[new_code_cell('n: int = 3  # how many steps', metadata={"tags": ["parameters"]}),
                             new_code_cell("from cen_lab._progress import progress_bar\nlist(progress_bar(range(n)))"),
                             new_code_cell("from tqdm.auto import tqdm\nlist(tqdm(range(n)))")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = tmp_path / "bars.ipynb"
    nbformat.write(nb, path)
    out = nbformat.read(run_notebook(path, {}, tmp_path / "out", progress_bar=False), as_version=4)
    widgets = ["application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in out.cells[-2].outputs]
    control = ["application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in out.cells[-1].outputs]
    assert not any(widgets) and any("0/3" in o.get("text", "") or "3/3" in o.get("text", "")
                                    for o in out.cells[-2].outputs)
    assert any(control)


def test_progress_bars_are_text_when_headless(monkeypatch):
    from tqdm.std import tqdm as text_tqdm

    from cen_lab._util.progress import progress_bar

    monkeypatch.setenv("CEN_LAB_PROGRESS", "text")
    bar = progress_bar(range(3), disable=True)
    assert type(bar) is text_tqdm and list(bar) == [0, 1, 2]


def test_a_tiny_report_says_at_the_top_that_it_is_a_smoke_test(tiny_report):
    from cen_lab.experiments.regime import SMOKE_TEST

    out = tiny_report.out_dir
    top = json.loads((out / "summary.json").read_text())
    assert top["evidence"] == SMOKE_TEST
    page = (out / "index.html").read_text()
    assert page.index("Smoke test: these numbers carry no evidence") < page.index("<h2>Settings</h2>")
    theorem1 = top["notebooks"]["theorem1"]["summary"]
    assert theorem1["regimes"]["trained"]["preset"] == "tiny" and theorem1["regimes"]["trained"]["steps"] == "12"
    regimes = {r["claim"]: r["regime"] for r in theorem1["verdicts"]}
    assert all(text.startswith("preset tiny; plain conv blocks (16, 16), no exchange; 12 steps; lam 0.01, 0.5; "
                               "SGD lr 0.05 momentum 0.9; L1 proximal, disjoint, once per step")
               for claim, text in regimes.items()
               if "(controlled)" not in claim and not claim.startswith("Corollary") and "momentum" not in claim)
    assert all(text.startswith("preset tiny;") for claim, text in regimes.items() if "momentum" in claim)
    assert all("lam 0.5;" in text and "then 4 fine-tuning steps" in text
               for claim, text in regimes.items() if claim.startswith("Corollary"))
    assert "<th>regime</th>" in page  # the verdict tables of the index carry it too
    runs = top["notebooks"]["quickstart"]["summary"]["runs"][0]
    assert runs["optimiser"] == "Adam lr 0.005 cosine" and runs["architecture"].startswith("plain conv blocks")


def test_only_smoke_test_reports_carry_the_notice():
    from cen_lab.experiments.regime import SMOKE_TEST
    from cen_lab.views.reports import _index_html, report_evidence

    def settings(common, **notebooks):
        return {"common": common, "notebooks": notebooks}

    assert report_evidence(settings({"preset": "tiny"})) == SMOKE_TEST
    assert report_evidence(settings({}, theorem1={"preset": "tiny", "steps": 12})) == SMOKE_TEST
    default = report_evidence(settings({"preset": "default"}, theorem1={"steps": 300}))
    assert default != SMOKE_TEST and "not the paper's regime" in default
    page = {"created": "now", "cen_lab": "0", "ok": True, "settings": settings({"preset": "default"}), "notebooks": {}}
    assert "Smoke test" not in _index_html({**page, "evidence": default})
    assert "Smoke test: these numbers carry no evidence" in _index_html({**page, "evidence": SMOKE_TEST})
