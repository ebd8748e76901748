import pandas as pd
import pytest

from cen_lab import plots


def _exchange():
    """Two branches, one layer, two channels, three logged steps; branch 0 channel 1 enters then leaves."""
    rows = []
    states = {0: [False, False], 5: [False, True], 10: [False, False]}
    for step, (c0, c1) in states.items():
        for m in (0, 1):
            for c, ex in ((0, c0), (1, c1 if m == 0 else False)):
                rows.append({"step": step, "layer": "blocks.0.bn", "branch": m, "channel": c, "exchanged": ex,
                             "source": (1 - m) if ex else m})
    return pd.DataFrame(rows)


def test_compute_exchange_maps_codes_and_labels():
    maps = plots.compute_exchange_maps(_exchange(), ["rgb", "depth"])
    row = maps.query("step == 5 and branch == 0 and channel == 1").iloc[0]
    assert (row["code"], row["state"]) == (2, "from depth")  # code 1 + source
    assert set(maps.query("not exchanged")["code"]) == {0} and set(maps.query("not exchanged")["state"]) == {"kept"}
    assert maps.attrs["state_labels"] == ["kept", "from rgb", "from depth", "mean of others"]


def test_mean_of_others_code_for_three_modalities():
    df = pd.DataFrame({"step": [0, 0, 0], "layer": ["l"] * 3, "branch": [0, 1, 2], "channel": [0, 0, 0],
                       "exchanged": [True, False, False], "source": [-1, 1, 2]})
    maps = plots.compute_exchange_maps(df)
    assert maps["code"].tolist() == [4, 0, 0] and maps["state"].tolist()[0] == "mean of others"


def test_compute_exchange_ratio_exact():
    ratio = plots.compute_exchange_ratio(_exchange(), ["rgb", "depth"])
    r = ratio.set_index(["branch", "step"])["ratio"]
    assert r.loc[(0, 0)] == 0.0 and r.loc[(0, 5)] == 0.5 and r.loc[(0, 10)] == 0.0 and r.loc[(1, 5)] == 0.0


def test_flip_events_and_counts_exact():
    events = plots.compute_flip_events(_exchange(), ["rgb", "depth"])
    assert events[["step", "branch_name", "channel", "event"]].values.tolist() == [
        [5, "rgb", 1, "enter"], [10, "rgb", 1, "leave"]]
    counts = plots.compute_flip_counts(_exchange(), ["rgb", "depth"])
    assert len(counts) == 6  # every logged step x branch, zeros included
    c = counts.set_index(["step", "branch"])
    assert (c.loc[(5, 0), "entered"], c.loc[(10, 0), "left"], c.loc[(5, 1), "entered"]) == (1, 1, 0)


@pytest.mark.parametrize("backend", ["matplotlib", "plotly"])
def test_exchange_figures_on_a_real_run(tiny_run, backend):
    maps = plots.compute_exchange_maps(tiny_run.exchange, tiny_run.branches)
    fig = plots.plot_exchange_maps(maps, backend=backend)
    titles = ["blocks.0.bn · rgb", "blocks.0.bn · depth", "blocks.1.bn · rgb", "blocks.1.bn · depth"]
    if backend == "plotly":
        assert [a.text for a in fig.layout.annotations] == titles
        assert len(fig.data) == 4 and all(t.type == "heatmap" for t in fig.data)
        assert fig.data[0].z.shape == (8, 7)  # channels x logged steps
    else:
        assert [ax.get_title() for ax in fig.get_axes()] == titles
    fig = plots.plot_exchange_ratio(plots.compute_exchange_ratio(tiny_run.exchange, tiny_run.branches), backend=backend)
    if backend == "plotly":
        assert {t.name for t in fig.data} == {"blocks.0.bn", "blocks.1.bn"} and len(fig.data) == 4
    else:
        assert [ax.get_title() for ax in fig.get_axes()] == ["rgb", "depth"]
        assert len(fig.get_axes()[0].get_lines()) == 2
    fig = plots.plot_flip_counts(plots.compute_flip_counts(tiny_run.exchange, tiny_run.branches), backend=backend)
    if backend == "plotly":
        assert [t.name for t in fig.data] == ["entered", "left", "entered", "left"]
    else:
        assert len(fig.get_axes()) == 2
    fig = plots.plot_exchange_snapshot(maps, 12, backend=backend)
    if backend == "plotly":
        assert list(fig.data[0].y) == ["blocks.0.bn · rgb", "blocks.0.bn · depth", "blocks.1.bn · rgb",
                                       "blocks.1.bn · depth"]
    else:
        assert fig.get_axes()[0].get_title() == "Exchange state at step 12"


def test_exchange_animation_has_a_frame_per_step_and_a_slider(tiny_run):
    maps = plots.compute_exchange_maps(tiny_run.exchange, tiny_run.branches)
    fig = plots.plot_exchange_animation(maps)
    assert [f.name for f in fig.frames] == ["0", "2", "4", "6", "8", "10", "12"]
    assert len(fig.layout.sliders[0].steps) == 7
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["play", "pause"]


def test_snapshot_at_an_unlogged_step_is_an_error(tiny_run):
    maps = plots.compute_exchange_maps(tiny_run.exchange, tiny_run.branches)
    with pytest.raises(ValueError, match="no exchange records at step 3"):
        plots.plot_exchange_snapshot(maps, 3)


def test_unknown_backend_is_an_error(tiny_run):
    with pytest.raises(ValueError, match="backend must be one of"):
        plots.plot_exchange_maps(plots.compute_exchange_maps(tiny_run.exchange), backend="bokeh")
