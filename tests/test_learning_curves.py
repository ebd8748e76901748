"""Learning curves and the step where the exchange settles (cen_lab.learning_curves)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cen_lab import fusion, learning_curves as lc, plots


def test_plateau_step_on_known_series():
    steps = [0, 10, 20, 30, 40, 50, 60]
    assert lc.plateau_step(steps, [0, 0, 0.2, 0.4, 0.45, 0.455, 0.452]) == 40  # within 0.01 from step 40 on
    assert lc.plateau_step(steps, [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) is None  # still moving at the end
    assert lc.plateau_step(steps, [0.0] * 7) == 0  # never exchanges: flat from the start
    assert lc.plateau_step(steps[::-1], [0.452, 0.455, 0.45, 0.4, 0.2, 0, 0]) == 40  # order of the input ignored
    assert lc.plateau_step([5], [0.3]) is None
    assert lc.plateau_step(steps, [0, 0, 0.2, 0.4, 0.45, 0.455, 0.452], tol=0.001) is None


def test_settled_needs_a_plateau_over_the_last_tenth_of_the_run():
    steps = np.arange(0, 101, 5)
    late = np.r_[np.zeros(19), 0.3, 0.305]  # a plateau only between the last two points
    early = np.r_[np.linspace(0, 0.5, 11), np.full(10, 0.5)]
    ex = pd.DataFrame({"variant": ["late"] * 21 + ["early"] * 21, "seed": 0, "step": np.r_[steps, steps],
                       "exchange_ratio": np.r_[late, early]})
    table = lc.settling_table(ex).set_index("variant")
    assert table.loc["late", "plateau_step"] == 95 and not table.loc["late", "settled"]
    assert table.loc["early", "plateau_step"] == 50 and table.loc["early", "settled"]
    assert table.loc["early", "final_exchange_ratio"] == 0.5 and table.loc["early", "last_step"] == 100
    moving = pd.DataFrame({"variant": "moving", "seed": 0, "step": steps, "exchange_ratio": steps / 100})
    row = lc.settling_table(moving).iloc[0]
    assert pd.isna(row["plateau_step"]) and not row["settled"]
    assert str(lc.settling_table(ex)["plateau_step"].dtype) == "Int64"  # steps print as steps, not 420.0


def test_learning_curves_mean_and_t_band():
    curves = pd.DataFrame({"variant": "a", "seed": [0, 1, 2, 0, 1, 2], "step": [0, 0, 0, 10, 10, 10], "task": "seg",
                           "metric": "miou", "value": [0.1, 0.2, 0.3, 0.5, 0.5, 0.5]})
    out = lc.compute_learning_curves(curves)
    first = out.iloc[0]
    low, high = stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem([0.1, 0.2, 0.3]))
    assert first["mean"] == pytest.approx(0.2) and first["ci_low"] == pytest.approx(low) and first["ci_high"] == pytest.approx(high)
    assert out.iloc[1]["mean"] == 0.5 and np.isnan(out.iloc[1]["ci_low"]) and out["n_seeds"].tolist() == [3, 3]


@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    return fusion.run_fusion_benchmark(tmp_path_factory.mktemp("lc"), preset="tiny", seeds=[0, 1], steps=10,
                                       variants=["cen", "late-fusion"], n_jobs=1, progress=False)  # both archs


def test_curves_from_a_tiny_benchmark_and_their_figures(small_bench):
    per_run = lc.per_run_curves(small_bench)
    on_disk = pd.read_parquet(Path(small_bench["path"].iloc[0]).parent / "sweep.parquet")
    assert on_disk["arch"].tolist() == small_bench["arch"].tolist()  # both sweeps' runs, not the last one's
    assert sorted(per_run["step"].unique()) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # ten evaluations (steps // 10)
    assert set(per_run["variant"]) == {"cen", "late-fusion"} and set(per_run["metric"]) == {"miou"}
    assert per_run.groupby("arch").size().to_dict() == {"plain": 44, "bottleneck": 44}  # 2 variants x 2 seeds x 11
    scores = fusion.per_run_scores(small_bench)
    for arch in ("plain", "bottleneck"):
        final = scores.query("branch == 'ensemble' and variant == 'cen' and arch == @arch").sort_values("seed")
        last = per_run.query("variant == 'cen' and step == 10 and arch == @arch").sort_values("seed")
        np.testing.assert_allclose(last["value"].to_numpy(), final["value"].to_numpy())  # ends at the compared score
    curves = lc.compute_learning_curves(per_run)
    assert curves["arch"].drop_duplicates().tolist() == ["plain", "bottleneck"] and (curves["n_seeds"] == 2).all()
    fig = plots.plot_learning_curves(curves)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["seg: miou (validation), plain", "seg: miou (validation), bottleneck"]
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["cen", "late-fusion"]
    bottleneck_cen = curves.query("arch == 'bottleneck' and variant == 'cen'")["mean"].to_numpy()
    np.testing.assert_allclose(axes[1].get_lines()[0].get_ydata(), bottleneck_cen)  # each panel its own runs
    fig = plots.plot_learning_curves(curves, backend="plotly")
    assert [d.name for d in fig.data if d.showlegend] == ["cen", "late-fusion"]  # one legend entry per variant
    ex = lc.exchange_curves(small_bench)
    settling = lc.settling_table(ex)
    assert settling[["arch", "variant"]].values.tolist() == [["plain", "cen"], ["plain", "late-fusion"],
                                                           ["bottleneck", "cen"], ["bottleneck", "late-fusion"]]
    fig = plots.plot_exchange_settling(ex, settling)
    assert [ax.get_title().rsplit(": ", 1)[-1] for ax in fig.get_axes()] == ["plain", "bottleneck"]
    assert fig.get_axes()[0].get_ylabel() == "portion of channels exchanged"
    plots.plot_exchange_settling(ex, settling, backend="plotly")


def test_every_variant_has_a_legend_entry_even_when_it_predicts_another_task_only():
    frame = pd.DataFrame({"arch": "plain", "variant": ["multitask", "multitask", "single-task-depth"],
                          "task": ["seg", "depth", "depth"], "metric": ["miou", "mae", "mae"], "step": 10,
                          "n_seeds": 1, "mean": [0.3, 0.1, 0.2], "ci_low": np.nan, "ci_high": np.nan})
    fig = plots.plot_learning_curves(frame, backend="plotly")
    assert [d.name for d in fig.data if d.showlegend] == ["multitask", "single-task-depth"]
    fig = plots.plot_learning_curves(frame)
    legend = fig.get_axes()[-1].get_legend()  # beside the last panel of the first row
    assert [t.get_text() for t in legend.get_texts()] == ["multitask", "single-task-depth"]
