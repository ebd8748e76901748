import pandas as pd
import pytest

from cen_lab import fusion, plots
from cen_lab.cli import main


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion")
    table = fusion.run_fusion_benchmark(out, preset="tiny", seeds=[0, 1], steps=4, archs="plain", n_jobs=1,
                                        progress=False)
    return out, table


def test_every_variant_trains_in_the_same_schema(bench):
    _, table = bench
    assert (table["status"] == "complete").all() and set(table["variant"]) == set(fusion.VARIANTS)
    assert len(table) == 2 * len(fusion.VARIANTS)
    assert table["name"].iloc[0] == "fusion-tiny-unimodal-rgb-seed=0"
    assert (table["arch"] == "plain").all() and (table["preset"] == "tiny").all()


def test_results_and_summary(bench):
    _, table = bench
    results = fusion.compute_fusion_results(fusion.per_run_scores(table))
    ens = results[results["branch"] == "ensemble"].set_index("variant")
    assert set(ens.index) == set(fusion.VARIANTS) and (ens["n_seeds"] == 2).all()
    assert (ens["params"].loc["late-fusion"] > ens["params"].loc["cen"])  # separate networks
    assert set(results.loc[results["variant"] == "early-fusion", "branch"]) == {"fused", "ensemble"}
    assert set(results.loc[results["variant"] == "cen", "branch"]) == {"rgb", "depth", "ensemble"}
    assert (ens["seconds"] > 0).all()
    scores = fusion.per_run_scores(table)
    cen = scores.query("variant == 'cen' and branch == 'ensemble'")["value"]
    assert ens.loc["cen", "mean"] == pytest.approx(cen.mean())
    summary = fusion.fusion_summary(results)
    assert summary["mean"].is_monotonic_decreasing and "branch/rgb" in summary.columns
    assert summary.columns[-1] == "regime" and (summary["arch"] == "plain").all()
    cen_regime = summary.set_index("variant").loc["cen", "regime"]
    assert cen_regime.startswith("preset tiny; plain conv blocks") and "4 steps" in cen_regime
    assert "smoke test" in cen_regime  # a tiny-preset number says it carries no evidence
    assert "lam 0" in summary.set_index("variant").loc["cen-no-l1", "regime"]


def test_compare_to_never_mixes_architectures():
    rows = {("plain", "cen"): [0.80, 0.81, 0.82], ("plain", "a"): [0.50, 0.51, 0.52],
            ("bottleneck", "cen"): [0.30, 0.31, 0.32], ("bottleneck", "a"): [0.50, 0.51, 0.52]}
    scores = pd.DataFrame([{"arch": arch, "variant": v, "seed": i, "branch": "ensemble", "task": "seg",
                            "metric": "miou", "value": x, "params": 1, "seconds": 1.0, "regime": f"r-{arch}"}
                           for (arch, v), xs in rows.items() for i, x in enumerate(xs)])
    cmp = fusion.compare_to(scores, "cen").set_index("arch")
    assert cmp.loc["plain", "verdict"] == "better" and cmp.loc["plain", "difference"] == pytest.approx(0.30)
    assert cmp.loc["bottleneck", "verdict"] == "worse" and cmp.loc["bottleneck", "difference"] == pytest.approx(-0.20)
    assert cmp.loc["bottleneck", "regime"] == "r-bottleneck"
    results = fusion.compute_fusion_results(scores)
    assert len(results) == 4 and results.groupby("arch")["n_seeds"].sum().tolist() == [6, 6]
    summary = fusion.fusion_summary(results)
    assert summary["arch"].tolist() == ["plain", "plain", "bottleneck", "bottleneck"]  # in order of appearance
    assert summary["variant"].tolist() == ["cen", "a", "a", "cen"]  # best first within each


def test_the_architectures_are_checked(tmp_path, capsys):
    with pytest.raises(ValueError, match="archs must be some of"):
        fusion.run_fusion_benchmark(tmp_path, preset="tiny", variants=["cen"], archs=["resnet"], progress=False)
    with pytest.raises(ValueError, match="archs="):
        fusion.run_fusion_benchmark(tmp_path, preset="tiny", variants=["cen"], model__arch="bottleneck",
                                    progress=False)
    with pytest.raises(SystemExit) as exit:
        main(["bench-fusion", "--arch", "plain,resnet", "--out", str(tmp_path)])
    assert exit.value.code == 2 and "resnet" in capsys.readouterr().err


def test_compare_to_uses_the_ensemble_scores(bench):
    _, table = bench
    scores = fusion.per_run_scores(table)
    cmp = fusion.compare_to(scores, "cen").set_index("variant")
    means = scores.query("branch == 'ensemble'").groupby("variant")["value"].mean()
    assert cmp.loc["unimodal-rgb", "difference"] == pytest.approx(means["cen"] - means["unimodal-rgb"])
    assert set(cmp["verdict"]) <= {"better", "worse", "no clear difference"}
    with pytest.raises(ValueError, match="no completed runs"):
        fusion.compare_to(scores[scores["variant"] != "cen"], "cen")


def test_compare_to_verdicts_on_known_scores():
    scores = pd.DataFrame({"variant": ["cen"] * 3 + ["a"] * 3 + ["b"] * 3, "branch": "ensemble", "task": "seg", "metric": "miou",
                           "value": [0.80, 0.81, 0.82, 0.50, 0.51, 0.52, 0.70, 0.90, 0.80]})
    cmp = fusion.compare_to(scores, "cen").set_index("variant")["verdict"]
    assert cmp["a"] == "better" and cmp["b"] == "no clear difference"


def test_fusion_figure(bench):
    _, table = bench
    results = fusion.compute_fusion_results(fusion.per_run_scores(table))
    fig = plots.plot_fusion_results(results)
    labels = [t.get_text() for t in fig.get_axes()[0].get_yticklabels()]
    assert set(labels) == set(fusion.VARIANTS)
    fig = plots.plot_fusion_results(results, backend="plotly")
    assert set(fig.data[0].y) == set(fusion.VARIANTS)


def test_unknown_variant_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown fusion variant 'cen2'"):
        fusion.run_fusion_benchmark(tmp_path, preset="tiny", variants=["cen2"], progress=False)


def test_cli_bench_fusion(tmp_path, capsys):
    rc = main(["bench-fusion", "--preset", "tiny", "--variants", "cen,early-fusion", "--seeds", "2", "--steps", "4",
               "--arch", "plain", "--jobs", "1", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "early-fusion" in out and "CEN minus each variant" in out
    assert "When the exchange settles" in out and "plateau_step" in out
    assert "plain: preset tiny; plain conv blocks" in out and "(evidence: none: the tiny preset is a smoke test)" in out
    assert pd.read_csv(tmp_path / "fusion_summary.csv")["variant"].tolist() != []


def _bench_fusion_arguments(monkeypatch, *argv) -> dict:
    """The keyword arguments ``cen-lab bench-fusion argv`` passes to ``run_fusion_benchmark`` (which is not run)."""
    seen = {}

    def fake(out, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(fusion, "run_fusion_benchmark", fake)
    with pytest.raises(SystemExit):
        main(["bench-fusion", *argv])
    return seen


def test_cli_words_for_the_reference_switches_and_the_architecture(tmp_path, monkeypatch):
    seen = _bench_fusion_arguments(monkeypatch, "--variants", "reference", "--arch", "bottleneck", "--out", str(tmp_path))
    assert seen["variants"] == ["cen", "cen-l1-per-output", "three-modal-mean", "three-modal-alternate-halves"]
    assert seen["archs"] == ["bottleneck"] and seen["steps"] == 600
    assert _bench_fusion_arguments(monkeypatch, "--out", str(tmp_path))["archs"] == ["plain", "bottleneck"]
    assert fusion.fusion_base("tiny", 4, model__arch="bottleneck").name == "fusion-tiny-bottleneck"
    # the notebooks' precision parameter: bf16 runs live in their own folders, never reusing fp32 ones
    bf16 = fusion.fusion_base("tiny", 4, model__arch="bottleneck", train__precision="bf16")
    assert bf16.name == "fusion-tiny-bf16-bottleneck" and bf16.train.precision == "bf16"


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenarios")
    return fusion.run_fusion_benchmark(out, preset="tiny", variants=list(fusion.DEFAULT_SCENARIOS), seeds=[0, 1],
                                       steps=4, archs="plain", n_jobs=1, progress=False)


def test_scenarios_train_and_are_scored_per_task(scenarios):
    assert (scenarios["status"] == "complete").all()
    scores = fusion.per_run_scores(scenarios)
    mt = scores[scores["variant"] == "multitask"]
    assert set(zip(mt["task"], mt["metric"])) == {("seg", "miou"), ("depth", "mae"), ("edges", "f1")}
    assert set(mt["branch"]) == {"rgb", "ensemble"}
    mmt = scores[scores["variant"] == "multimodal-multitask"]
    assert set(mmt["task"]) == {"seg", "edges"} and set(mmt["branch"]) == {"rgb", "depth", "ensemble"}
    assert set(scores.loc[scores["variant"] == "cycle-fusion", "branch"]) == {"rgb", "depth", "edges", "ensemble"}
    summary = fusion.fusion_summary(fusion.compute_fusion_results(scores))
    depth = summary[summary["task"] == "depth"]
    assert set(depth["variant"]) == {"multitask", "multitask-no-exchange", "single-task-depth"}
    assert depth["mean"].is_monotonic_increasing  # MAE: the best (lowest) first
    assert summary.loc[summary["task"] == "seg", "mean"].is_monotonic_decreasing


def test_compare_to_per_task_with_mae_lower_is_better():
    scores = pd.DataFrame({"variant": ["multitask"] * 3 + ["single"] * 3, "branch": "ensemble", "task": "depth",
                           "metric": "mae", "value": [0.10, 0.11, 0.12, 0.20, 0.21, 0.22]})
    row = fusion.compare_to(scores, "multitask").iloc[0]
    assert row["task"] == "depth" and row["difference"] == pytest.approx(-0.1) and row["verdict"] == "better"


def test_scenario_figure_needs_a_task(scenarios):
    results = fusion.compute_fusion_results(fusion.per_run_scores(scenarios))
    with pytest.raises(ValueError, match="several tasks"):
        plots.plot_fusion_results(results)
    fig = plots.plot_fusion_results(results, task="edges", backend="plotly")
    assert set(fig.data[0].y) == {"multitask", "multitask-no-exchange", "single-task-edges", "multimodal-multitask"}
    assert "edges: final f1" in fig.layout.annotations[0].text


def test_cli_bench_fusion_scenarios_word(tmp_path, monkeypatch):
    seen = _bench_fusion_arguments(monkeypatch, "--variants", "scenarios", "--out", str(tmp_path), "--no-progress")
    assert seen["variants"] == list(fusion.DEFAULT_SCENARIOS)


def test_each_reference_switch_is_compared_with_the_variant_it_changes():
    v = {"cen": [0.80, 0.81, 0.82], "cen-l1-per-output": [0.70, 0.71, 0.72],
         "three-modal-mean": [0.60, 0.65, 0.70], "three-modal-alternate-halves": [0.62, 0.66, 0.68],
         "late-fusion": [0.9, 0.9, 0.9]}
    scores = pd.DataFrame([{"variant": k, "seed": s, "branch": "ensemble", "task": "seg", "metric": "miou", "value": x}
                           for k, xs in v.items() for s, x in enumerate(xs)])
    cmp = fusion.compare_switches(scores).set_index("switch")
    assert list(cmp.index) == ["cen-l1-per-output", "three-modal-alternate-halves"]
    assert cmp.loc["cen-l1-per-output", "base"] == "cen" and cmp.loc["cen-l1-per-output", "verdict"] == "worse"
    assert cmp.loc["cen-l1-per-output", "difference"] == pytest.approx(-0.10)
    assert cmp.loc["three-modal-alternate-halves", "difference"] == pytest.approx((1.96 - 1.95) / 3)
    assert cmp.loc["three-modal-alternate-halves", "verdict"] == "no clear difference"
    with pytest.raises(ValueError, match="no completed runs of a switch"):
        fusion.compare_switches(scores[scores["variant"].isin(["cen", "late-fusion"])])
    exchange = pd.DataFrame({"variant": ["cen"] * 3 + ["cen-l1-per-output"] * 3, "seed": [0, 1, 2] * 2,
                             "exchange_ratio": [0.40, 0.45, 0.50, 0.50, 0.50, 0.50]})
    ratio = fusion.compare_switches(scores, exchange).query("metric == 'exchange_ratio'").iloc[0]
    assert ratio["switch"] == "cen-l1-per-output" and ratio["difference"] == pytest.approx(0.05)
    assert ratio["verdict"] == "no clear difference" and ratio["ci_low"] < 0 < ratio["ci_high"]


def test_the_reference_switches_are_the_config_switches():
    base = fusion.fusion_base("tiny", 4)
    per_output = base.override(fusion.REFERENCE_SWITCHES["cen-l1-per-output"][1])
    assert per_output.train.l1_per_output and not base.train.l1_per_output
    halves = base.override(fusion.REFERENCE_SWITCHES["three-modal-alternate-halves"][1])
    assert halves.train.sparsity == "alternate-halves" and len(halves.data.modalities) == 3
    assert set(fusion.SWITCH_BASES) == set(fusion.REFERENCE_SWITCHES)


def test_final_exchange_ratios_read_every_completed_run(bench):
    _, table = bench
    ex = fusion.final_exchange_ratios(table)
    assert len(ex) == int(table["status"].isin(["complete", "skipped"]).sum())
    cen = ex[ex["variant"] == "cen"]["exchange_ratio"]
    assert cen.notna().all() and cen.between(0, 1).all()
