"""Notebooks are thin: a parameters cell, then library calls; committed without outputs."""

import ast

import nbformat
import pytest

from cen_lab.views.reports import NOTEBOOK_DIR, notebook_parameters, run_notebook

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "exchange_dynamics", "explorer"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_holds_no_logic(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While, ast.If,
                                         ast.IfExp, ast.ListComp, ast.DictComp)), f"logic in {path.name}: {cell.source}"
    params = notebook_parameters(path)
    assert params and all(p.help for p in params.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter_with_its_type(path):
    import papermill

    seen = papermill.inspect_notebook(str(path))
    assert set(seen) == set(notebook_parameters(path))  # papermill skips lines it cannot parse
    assert all(p["inferred_type_name"] != "None" and p["help"] for p in seen.values())


def test_explorer_notebook_executes_headless(tmp_path):
    out = run_notebook(NOTEBOOK_DIR / "explorer.ipynb", {"preset": "tiny", "runs_dir": str(tmp_path / "runs"),
                                                         "progress": False}, tmp_path, progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    # headless (no frontend): the explorer's pictures as still images with a note, no widget placeholders
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert any("needs a live kernel" in o.get("data", {}).get("text/markdown", "") for o in outputs)


def test_fusion_benchmark_notebook_executes_at_tiny_size(tmp_path):
    import json

    figs = tmp_path / "figs"
    variants = ["unimodal-rgb", "late-fusion", "cen", "cen-no-l1"]  # every variant trains in test_fusion.py
    run_notebook(NOTEBOOK_DIR / "fusion_benchmark.ipynb",
                 {"preset": "tiny", "variants": variants, "seeds": [0, 1], "steps": 4, "n_jobs": 1,
                  "runs_dir": str(tmp_path / "runs"), "figures_dir": str(figs), "progress": False}, tmp_path,
                 progress_bar=False)
    for stem in ("fusion_results", "learning_curves", "exchange_settling", "exchange_ratio", "sparsity",
                 "training_loss"):
        assert (figs / f"{stem}.png").stat().st_size > 1000
    summary = json.loads((figs / "summary.json").read_text())
    assert [r["arch"] for r in summary["summary"]] == ["plain"] * 4 + ["bottleneck"] * 4
    assert {r["variant"] for r in summary["summary"]} == set(variants)
    assert {r["verdict"] for r in summary["cen_vs"]} <= {"better", "worse", "no clear difference"}
    assert len(summary["cen_vs"]) == 6 and all("smoke test" in r["regime"] for r in summary["cen_vs"])


def test_scenarios_notebook_executes_at_tiny_size(tmp_path):
    import json

    figs = tmp_path / "figs"
    run_notebook(NOTEBOOK_DIR / "scenarios.ipynb",
                 {"preset": "tiny", "archs": ["plain"], "seeds": [0, 1], "steps": 4, "n_jobs": 1, "runs_dir": str(tmp_path / "runs"),
                  "figures_dir": str(figs), "progress": False}, tmp_path, progress_bar=False)
    for stem in ("scores_seg", "scores_depth", "scores_edges", "multitask_exchange_maps", "multitask_curves",
                 "mmt_exchange_maps", "cycle_exchange_maps"):
        assert (figs / f"{stem}.png").stat().st_size > 1000
    summary = json.loads((figs / "summary.json").read_text())
    assert {r["task"] for r in summary["summary"]} == {"seg", "depth", "edges"}
    assert {r["task"] for r in summary["multitask_vs"]} == {"seg", "depth", "edges"}


def test_choose_lambda_notebook_executes_at_tiny_size(tmp_path):
    import json

    figs = tmp_path / "figs"
    run_notebook(NOTEBOOK_DIR / "choose_lambda.ipynb",
                 {"preset": "tiny", "runs_dir": str(tmp_path / "runs"), "n_jobs": 1, "figures_dir": str(figs),
                  "progress": False}, tmp_path, progress_bar=False)
    for stem in ("three_runs", "lambda_curve"):
        assert (figs / f"{stem}.png").stat().st_size > 1000
    summary = json.loads((figs / "summary.json").read_text())
    assert [r["lam"] for r in summary["prediction"]] == [1e-4, 1e-3, 1e-2]
    assert [r["lam"] for r in summary["held_out"]] == [1e-3]
    assert {r["setting"]: r["value"] for r in summary["regime"]}["evidence"].startswith("none: the tiny preset")
    assert set(summary["diagnoses"][0]) >= {"measure", "collapsing", "no sparsity", "good", "rule"}


def test_translation_notebook_executes_at_tiny_size(tmp_path):
    import json

    figs = tmp_path / "figs"
    variants = ["unimodal-rgb", "cen", "cen-batchnorm"]
    run_notebook(NOTEBOOK_DIR / "translation.ipynb",
                 {"size": "tiny", "translation_variants": variants, "seeds": [0, 1], "steps": 4, "n_jobs": 1,
                  "runs_dir": str(tmp_path / "runs"), "figures_dir": str(figs), "progress": False}, tmp_path,
                 progress_bar=False)
    for stem in ("learning_curves", "exchange_settling", "gamma_trajectories", "exchange_maps", "examples_cen",
                 "examples_cen_batchnorm"):
        assert (figs / f"{stem}.png").stat().st_size > 1000, stem
    summary = json.loads((figs / "summary.json").read_text())
    assert {r["variant"] for r in summary["summary"]} == set(variants)
    assert all(r["metric"] == "l1" and r["n_seeds"] == 2 and "smoke test" in r["regime"] for r in summary["summary"])
    assert {r["variant"] for r in summary["cen_vs"]} == {"unimodal-rgb", "cen-batchnorm"}


def test_the_theorem_notebook_runs_the_bench_commands_regimes_but_the_bottleneck_ones():
    """The report's section 5 is ``cen-lab bench-theorem-regimes`` without the bottleneck regimes (for time): the
    same networks, so the bench command reuses the report's runs and its numbers extend the report's."""
    from cen_lab.theory.regimes import REGIME_DEFAULTS
    from cen_lab.views.notebooks import validate_parameters

    p = validate_parameters(NOTEBOOK_DIR / "theorem1.ipynb", {})
    for key in ("lams", "seeds", "steps", "l1_rule", "checkpoints", "n_batches"):
        assert p[key] == REGIME_DEFAULTS[key], key
    assert p["regime_momentums"] == REGIME_DEFAULTS["momentums"]
    assert p["regime_archs"] == ["plain"] and "bottleneck" in REGIME_DEFAULTS["archs"]
    assert [tuple(x) for x in p["regime_instance"]] == REGIME_DEFAULTS["instance"]


def test_long_regime_notebook_executes_at_tiny_size(tmp_path):
    import json

    figs = tmp_path / "figs"
    run_notebook(NOTEBOOK_DIR / "long_regime.ipynb",
                 {"size": "tiny", "lam": 0.05, "n_jobs": 1, "runs_dir": str(tmp_path / "runs"),
                  "figures_dir": str(figs), "progress": False}, tmp_path, progress_bar=False)
    for stem in ("budget_curves", "regime_comparison", "forecast_path"):
        assert (figs / f"{stem}.png").stat().st_size > 1000, stem
    rows = json.loads((figs / "summary.json").read_text())["runs"]
    assert [r["preset"] for r in rows] == ["long lam 0.05", "long finite lam 0.05", "default"]
    assert all("smoke test" in r["regime"] for r in rows)
