import numpy as np
import pandas as pd
import pytest

from cen_lab import plots


def _metrics():
    return pd.DataFrame({
        "step": [0, 0, 0, 0, 0, 5, 5],
        "epoch": [0] * 7,
        "split": ["train", "train", "train", "train", "val", "val", "train"],
        "name": ["loss/rgb", "loss/ensemble", "penalty", "alpha/rgb", "miou/rgb", "miou/ensemble", "loss/total"],
        "value": [1.0, 0.5, 0.1, 0.6, 0.2, 0.3, 2.0],
    })


def test_compute_training_curves_splits_names_and_drops_totals():
    df = plots.compute_training_curves(_metrics(), ["rgb", "depth"])
    assert list(df.columns) == ["step", "split", "kind", "task", "branch", "value"]
    assert (df["task"] == "").all()
    assert df[["split", "kind", "branch", "value"]].values.tolist() == [
        ["train", "alpha", "rgb", 0.6], ["train", "loss", "rgb", 1.0], ["train", "loss", "ensemble", 0.5],
        ["val", "miou", "rgb", 0.2], ["val", "miou", "ensemble", 0.3]]


def test_training_curves_of_several_tasks_split_the_task_and_get_one_row_each():
    metrics = pd.DataFrame({
        "step": [0] * 6, "epoch": [0] * 6, "split": ["val"] * 6,
        "name": ["mae/depth/rgb", "mae/depth/ensemble", "f1/edges/rgb", "loss/seg/rgb", "miou/seg/rgb", "loss/total"],
        "value": [0.1, 0.2, 0.3, 0.4, 0.5, 9.0],
    })
    df = plots.compute_training_curves(metrics, ["seg/rgb", "depth/rgb", "edges/rgb"])
    assert df[["kind", "task", "branch", "value"]].values.tolist() == [
        ["f1", "edges", "rgb", 0.3], ["loss", "seg", "rgb", 0.4], ["mae", "depth", "rgb", 0.1],
        ["mae", "depth", "ensemble", 0.2], ["miou", "seg", "rgb", 0.5]]
    fig = plots.plot_training_curves(df, backend="plotly")
    titles = [a.text for a in fig.layout.annotations]
    assert {"depth: validation depth MAE", "edges: validation edge F1", "seg: validation mIoU"} <= set(titles)


def test_compute_sparsity_and_gamma_snapshot_exact():
    gammas = pd.DataFrame({"step": [0, 0, 0, 4, 4, 4], "epoch": 0, "layer": "l", "branch": [0, 0, 1] * 2,
                           "channel": [0, 1, 0] * 2, "gamma": np.array([1, 1, 1, 0.01, -0.5, 0.0], np.float32),
                           "beta": np.float32(0), "penalised": [True, False, True] * 2})
    sp = plots.compute_sparsity(gammas, 0.02, ["rgb", "depth"])
    assert sp[["step", "branch_name", "below_threshold", "n_penalised"]].values.tolist() == [
        [0, "rgb", 0.0, 1], [0, "depth", 0.0, 1], [4, "rgb", 1.0, 1], [4, "depth", 1.0, 1]]
    snap = plots.compute_gamma_snapshot(gammas, 0.02, ["rgb", "depth"])
    assert snap["step"].unique().tolist() == [4]
    assert snap["below_threshold"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="no gammas logged at step 3"):
        plots.compute_gamma_snapshot(gammas, 0.02, step=3)


@pytest.mark.parametrize("backend", ["matplotlib", "plotly"])
def test_curve_and_gamma_figures_on_a_real_run(tiny_run, backend):
    curves = plots.compute_training_curves(tiny_run.metrics, tiny_run.branches)
    fig = plots.plot_training_curves(curves, backend=backend, marker_step=6)
    panels = ["train loss (minibatch)", "validation loss", "validation mIoU", "softmax(alpha) weights"]
    if backend == "plotly":
        assert [a.text for a in fig.layout.annotations if a.text in panels] == panels
        assert {t.name for t in fig.data} == {"rgb", "depth", "ensemble"}
    else:
        assert [ax.get_title() for ax in fig.get_axes()] == panels
    thr = tiny_run.config.model.threshold
    fig = plots.plot_gamma_trajectories(plots.compute_gamma_trajectories(tiny_run.gammas, tiny_run.branches), thr,
                                        backend=backend)
    n_lines = len(fig.data) if backend == "plotly" else sum(len(ax.get_lines()) - 1 for ax in fig.get_axes())
    assert n_lines == 32  # 2 layers x 2 branches x 8 channels
    snap = plots.compute_gamma_snapshot(tiny_run.gammas, thr, tiny_run.branches)
    fig = plots.plot_gamma_distributions(snap, thr, backend=backend)
    if backend == "plotly":
        assert [t.type for t in fig.data] == ["histogram"] * 4
    else:
        assert [ax.get_title().split(",")[0] for ax in fig.get_axes()] == ["rgb", "depth"]
    fig = plots.plot_sparsity(plots.compute_sparsity(tiny_run.gammas, thr, tiny_run.branches), backend=backend)
    assert (len(fig.data) if backend == "plotly" else len(fig.get_axes()[0].get_lines())) == 2


def test_metric_across_runs(tiny_run):
    runs = {"a": tiny_run, "b": tiny_run}
    frame = plots.compute_metric_across_runs(runs, "score/ensemble", split="val")
    assert frame["run"].unique().tolist() == ["a", "b"] and frame["step"].tolist() == [0, 6, 12] * 2
    expected = tiny_run.metrics.query("split == 'val' and name == 'miou/ensemble'")["value"].tolist()
    assert frame["value"].tolist() == expected * 2
    fig = plots.plot_metric_across_runs(frame, ylabel="mIoU")
    assert [line.get_label() for line in fig.get_axes()[0].get_lines()] == ["a", "b"]
    fig = plots.plot_metric_across_runs(frame, ylabel="mIoU", backend="plotly")
    assert [t.name for t in fig.data] == ["a", "b"]
    with pytest.raises(ValueError, match="no 'train' records named 'nope'"):
        plots.compute_metric_across_runs(runs, "nope")


def test_training_curves_keep_the_runs_task_order():
    metrics = pd.DataFrame({"step": [0] * 3, "epoch": [0] * 3, "split": ["val"] * 3,
                            "name": ["loss/depth/rgb", "loss/edges/rgb", "loss/seg/rgb"], "value": [0.1, 0.2, 0.3]})
    df = plots.compute_training_curves(metrics, ["seg/rgb", "depth/rgb", "edges/rgb"])
    assert df["task"].tolist() == ["seg", "depth", "edges"]
    assert plots.compute_training_curves(metrics)["task"].tolist() == ["depth", "edges", "seg"]  # by name


def test_metrics_outside_the_naming_rule_are_plottable(tmp_path):
    # a user's loop logs plain names (the README's loss/total, an lr) beside a per-branch one
    from cen_lab.views import plots

    metrics = pd.DataFrame({"step": [0, 0, 0, 5, 5, 5], "epoch": -1, "split": "train",
                            "name": ["loss/total", "lr", "loss/rgb"] * 2, "value": [2.0, 0.1, 1.0, 1.5, 0.05, 0.8]})
    plain = plots.compute_training_curves(metrics, ["rgb"])
    assert set(plain["kind"]) == {"loss"} and set(plain["branch"]) == {"rgb"}  # the rule alone: per-branch curves
    full = plots.compute_training_curves(metrics, ["rgb"], others=True)
    other = full[full["task"] == "other"]
    assert sorted(set(other["kind"])) == ["loss/total", "lr"] and other["value"].tolist() == [2.0, 1.5, 0.1, 0.05]
    fig = plots.plot_training_curves(full)
    titles = [ax.get_title() for ax in fig.get_axes() if ax.get_visible()]
    assert titles == ["train loss (minibatch)", "loss/total", "lr"]
    pfig = plots.plot_training_curves(full, backend="plotly")
    assert {t.name for t in pfig.data} == {"rgb", "loss/total", "lr"}


def test_the_explorer_draws_an_observed_runs_plain_metrics(tmp_path):
    import torch

    import cen_lab
    from cen_lab.views.widgets import explore
    from cen_lab.zoo import ReferenceStyleCEN

    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    with cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="alternate-halves") as obs:
        for step in range(3):
            obs.log(step, metrics={"loss/total": 1.0 / (step + 1)})
            with torch.no_grad():
                model.layers[0][0].bn2.bn_0.weight.mul_(0.5)
    ex = explore(cen_lab.load_run(tmp_path / "run"))
    assert [ax.get_title() for ax in ex.figures["curves"].get_axes() if ax.get_visible()] == ["loss/total"]


def test_compute_budget_curves_puts_runs_of_different_budgets_on_one_axis(tiny_run, exchanging_runs):
    runs = {"12 steps": tiny_run, "40 steps": exchanging_runs["s0"]}
    frame = plots.compute_budget_curves(runs)
    assert list(frame.columns) == ["run", "panel", "series", "step", "fraction", "value"]
    for label, run in runs.items():
        sub = frame[frame["run"] == label]
        assert sub["fraction"].max() == 1.0 and (sub["fraction"] == sub["step"] / run.config.train.steps).all()
        m = run.metrics
        portion = m[(m["split"] == "train") & (m["name"] == "sparsity/below_threshold")]
        got = sub[sub["panel"] == "under the threshold"]
        assert got["value"].tolist() == portion.sort_values("step")["value"].tolist()
        val = m[m["split"] == "val"].pivot(index="step", columns="name", values="value")
        weakest = sub[sub["series"] == "weakest branch"].set_index("step")["value"]
        assert weakest.to_dict() == val[["miou/rgb", "miou/depth"]].min(axis=1).to_dict()
        vloss = sub[(sub["panel"] == "loss") & (sub["series"] == "validation")].set_index("step")["value"]
        assert vloss.to_dict() == val["loss/ensemble"].to_dict()


def test_plot_budget_curves_draws_each_run_and_series(tiny_run, exchanging_runs):
    frame = plots.compute_budget_curves({"short": tiny_run, "long": exchanging_runs["s0"]})
    fig = plots.plot_budget_curves(frame)
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["under the threshold", "loss", "score"]
    assert axes[1].get_yscale() == "log" and axes[0].get_xlabel() == "fraction of the budget"
    assert sorted(line.get_label() for line in axes[2].get_lines()) == [
        "long: ensemble", "long: weakest branch", "short: ensemble", "short: weakest branch"]
    pfig = plots.plot_budget_curves(frame, backend="plotly")
    assert {t.name for t in pfig.data} >= {"short: penalised", "long: validation", "long: train"}
    with pytest.raises(ValueError, match="compute_budget_curves"):
        plots.plot_budget_curves(tiny_run.metrics)
