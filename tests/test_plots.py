import matplotlib.colors as mcolors
import pandas as pd
import pytest

from cen_lab.views import plots
from cen_lab.views.plots import FREE_COLOUR, PENALISED_COLOUR, compute_gamma_trajectories, plot_gamma_trajectories


def _gammas():
    rows = []
    for step, scale in ((0, 1.0), (5, 0.5)):
        for layer in ("blocks.0.bn", "blocks.1.bn"):
            for m in (0, 1):
                for c in (0, 1):
                    rows.append({"step": step, "epoch": 0, "layer": layer, "branch": m, "channel": c,
                                 "gamma": -scale * (c + 1), "beta": 0.0, "penalised": c == m})
    return pd.DataFrame(rows)


def test_compute_gamma_trajectories_exact():
    df = compute_gamma_trajectories(_gammas(), ["rgb", "depth"], layers=["blocks.1.bn"])
    assert list(df.columns) == ["layer", "branch", "branch_name", "channel", "penalised", "step", "gamma",
                                "abs_gamma"]
    assert set(df["layer"]) == {"blocks.1.bn"} and len(df) == 8
    first = df.iloc[:2]
    assert first[["branch_name", "channel", "step"]].values.tolist() == [["rgb", 0, 0], ["rgb", 0, 5]]
    assert first["abs_gamma"].tolist() == [1.0, 0.5] and first["gamma"].tolist() == [-1.0, -0.5]
    with pytest.raises(ValueError, match="no layer 'blocks.9.bn'"):
        compute_gamma_trajectories(_gammas(), layers=["blocks.9.bn"])


def test_plot_gamma_trajectories_structure():
    fig = plot_gamma_trajectories(compute_gamma_trajectories(_gammas(), ["rgb", "depth"]), threshold=0.02)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["blocks.0.bn · rgb", "blocks.0.bn · depth", "blocks.1.bn · rgb",
                                               "blocks.1.bn · depth"]
    for ax, branch in zip(axes, (0, 1, 0, 1)):
        channel_lines = [line for line in ax.get_lines() if line.get_label().startswith("channel")]
        assert len(channel_lines) == 2
        colours = {line.get_label(): mcolors.to_hex(line.get_color()) for line in channel_lines}
        assert colours[f"channel {branch}"] == PENALISED_COLOUR and colours[f"channel {1 - branch}"] == FREE_COLOUR
        assert any(list(line.get_ydata()) == [0.02, 0.02] for line in ax.get_lines())  # the threshold
    assert axes[2].get_xlabel() == "step" and axes[0].get_ylabel() == "|gamma|"


def test_plot_on_a_real_run(tiny_run):
    fig = plot_gamma_trajectories(compute_gamma_trajectories(tiny_run.gammas, tiny_run.branches), threshold=0.02)
    assert len(fig.get_axes()) == 4


def test_empty_frame_is_an_error():
    with pytest.raises(ValueError, match="no gamma records"):
        plot_gamma_trajectories(compute_gamma_trajectories(_gammas().iloc[:0]))


def test_every_plot_names_the_compute_that_makes_its_frame():
    import inspect

    import pandas as pd

    from cen_lab import plots

    names = [n for n in dir(plots) if n.startswith("plot_")]
    assert len(names) == 31
    for name in names:
        plot = getattr(plots, name)
        assert plot.columns, name
        # plot_X draws compute_X's frame wherever a compute_X exists here (and every pair below has one)
        twin = "compute_" + name[len("plot_"):]
        if name not in ("plot_gamma_distributions", "plot_prediction_ece", "plot_exchange_predictors",
                        "plot_regime_calibration", "plot_regime_outcome", "plot_exchange_settling", "plot_fusion_results",
                        "plot_learning_curves"):
            assert hasattr(plots, twin) and plot.maker.startswith(twin), (name, plot.maker)
        args = [p for p in inspect.signature(plot).parameters.values() if p.default is p.empty][1:]
        with pytest.raises(ValueError, match=f"^{plot.__name__} takes the frame of .*this frame lacks"):
            plot(pd.DataFrame({"unrelated": [1]}), *[0] * len(args))
        with pytest.raises(TypeError, match=f"^{plot.__name__} takes the DataFrame"):
            plot({"not": "a frame"}, *[0] * len(args))


def test_raw_gammas_given_to_the_snapshot_plot_name_the_compute_step(tiny_run):
    from cen_lab import plots

    assert plots.plot_gamma_distributions is plots.plot_gamma_snapshot  # the old name stays
    with pytest.raises(ValueError, match=r"run's raw 'gammas' table \(run.gammas\): pass it through "
                                         r"compute_gamma_snapshot first"):
        plots.plot_gamma_distributions(tiny_run.gammas, tiny_run.threshold)
    snap = plots.compute_gamma_snapshot(tiny_run.gammas, tiny_run.threshold, tiny_run.branches)
    assert plots.plot_gamma_snapshot(snap, tiny_run.threshold).get_axes()


@pytest.mark.parametrize("name, call", [
    ("compute_gamma_trajectories", lambda r: plots.compute_gamma_trajectories(r.gammas, r.branches)),
    ("compute_gamma_snapshot", lambda r: plots.compute_gamma_snapshot(r.gammas, r.threshold, r.branches)),
    ("compute_sparsity", lambda r: plots.compute_sparsity(r.gammas, r.threshold, r.branches)),
    ("compute_exchange_maps", lambda r: plots.compute_exchange_maps(r.exchange, r.branches)),
    ("compute_exchange_ratio", lambda r: plots.compute_exchange_ratio(r.exchange, r.branches)),
    ("compute_flip_events", lambda r: plots.compute_flip_events(r.exchange, r.branches)),
    ("compute_flip_counts", lambda r: plots.compute_flip_counts(r.exchange, r.branches)),
    ("compute_training_curves", lambda r: plots.compute_training_curves(r.metrics, r.outputs)),
])
def test_every_compute_of_a_run_table_takes_the_run_itself(exchanging_runs, name, call):
    run = exchanging_runs["s0"]
    pd.testing.assert_frame_equal(getattr(plots, name)(run), call(run), check_exact=True)
    assert "A ``Run`` may stand for its" in getattr(plots, name).__doc__


def test_a_run_with_its_arguments_given_keeps_them(exchanging_runs):
    run = exchanging_runs["s0"]
    named = plots.compute_sparsity(run, 0.5, ["a", "b"])
    pd.testing.assert_frame_equal(named, plots.compute_sparsity(run.gammas, 0.5, ["a", "b"]), check_exact=True)
    assert set(plots.compute_gamma_trajectories(run, branches=["x", "y"])["branch_name"]) == {"x", "y"}
