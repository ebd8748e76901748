import pytest

from cen_lab.views import widgets
from cen_lab.views.widgets import explore


def test_explorer_follows_the_slider_layer_and_modality(tiny_run):
    ex = explore(tiny_run)
    assert ex.steps == [0, 2, 4, 6, 8, 10, 12] and ex.slider.max == 6 and ex.play.max == 6
    assert ex.figures["gammas"].get_suptitle() == "blocks.0.bn: |gamma| at step 0"
    ex.slider.value = 3
    assert ex.step == 6 and ex.step_label.value == "step 6"
    assert ex.figures["exchange"].get_axes()[0].get_title() == "blocks.0.bn at step 6"
    ex.layer_picker.value = "blocks.1.bn"
    assert ex.figures["gammas"].get_suptitle() == "blocks.1.bn: |gamma| at step 6"
    ex.branch_picker.value = 1
    assert [ax.get_title().split(",")[0] for ax in ex.figures["gammas"].get_axes()] == ["depth"]
    curves = ex.figures["curves"].get_axes()[0]
    assert any(list(line.get_xdata()) == [6, 6] for line in curves.get_lines())  # the step marker


def test_explorer_switches_runs(tiny_run, exchanging_runs):
    other = exchanging_runs["s0"]  # 40 steps logged every 2, against the tiny run's 12
    ex = explore({"a": tiny_run, "b": other})
    assert list(ex.run_picker.options) == ["a", "b"] and ex.run is tiny_run and ex.steps[-1] == 12
    ex.run_picker.value = "b"
    assert ex.run is other and ex.steps == sorted(other.gammas["step"].unique()) and ex.steps[-1] == 40
    assert ex.slider.max == len(ex.steps) - 1 and ex.figures


def test_explorer_needs_a_run():
    with pytest.raises(ValueError, match="at least one run"):
        explore({})


def test_explorer_shows_a_run_without_metrics(tiny_run, tmp_path):
    import cen_lab

    imported = cen_lab.import_checkpoints(str(tiny_run.path / "checkpoints" / "*.pt"), tmp_path / "imp",
                                          penalised="disjoint", progress=False)
    assert imported.metrics.empty
    ex = explore({"trained": tiny_run, "imported": imported})
    ex.run_picker.value = "imported"
    assert set(ex.figures) == {"exchange", "gammas"} and ex.steps == [6, 12]
    ex.run_picker.value = "trained"
    assert "curves" in ex.figures


def test_explorer_keeps_the_step_not_the_index_when_the_run_changes(tiny_run, tmp_path):
    import cen_lab

    coarse = cen_lab.import_checkpoints(str(tiny_run.path / "checkpoints" / "*.pt"), tmp_path / "coarse",
                                        penalised="disjoint", progress=False)  # steps 6 and 12 only
    ex = explore({"fine": tiny_run, "coarse": coarse})
    ex.slider.value = 5
    assert ex.step == 10
    ex.run_picker.value = "coarse"
    assert ex.step == 12 and ex.slider.value == 1  # the nearest logged step
    ex.slider.value = 0
    ex.run_picker.value = "fine"
    assert ex.step == 6 and ex.slider.value == 3  # step 6, not index 0


def test_explorer_offers_the_runs_under_a_folder(tiny_run, tmp_path):
    import shutil

    from cen_lab.views.widgets import runs_under

    shutil.copytree(tiny_run.path, tmp_path / "a" / "one")
    shutil.copytree(tiny_run.path, tmp_path / "b")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    ex = explore(tmp_path)
    assert list(ex.run_picker.options) == ["a/one", "b"]
    assert list(runs_under(tmp_path / "b")) == ["b"]
    with pytest.raises(ValueError, match="no cen_lab run"):
        runs_under(tmp_path / "broken")


def test_headless_explorer_shows_still_pictures_and_never_writes_to_output_widgets(tiny_run, monkeypatch):
    import IPython.display

    monkeypatch.setenv("CEN_LAB_HEADLESS", "1")
    ex = explore(tiny_run)
    assert not ex.live and set(ex.figures) == {"exchange", "gammas", "curves"}
    assert all(out.outputs == () for out in ex.outputs.values())
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    ex._ipython_display_()
    assert isinstance(shown[0], IPython.display.Markdown) and "needs a live kernel" in shown[0].data
    assert sum(isinstance(o, dict) and "image/png" in o for o in shown) == 3  # the three figures as PNG bundles
    monkeypatch.delenv("CEN_LAB_HEADLESS")
    monkeypatch.setattr(widgets, "in_jupyter", lambda: True)  # as in a kernel
    assert explore(tiny_run).live


def test_outside_jupyter_the_explorer_says_it_needs_jupyter_and_prints_nothing(tiny_run, monkeypatch, capsys):
    monkeypatch.delenv("CEN_LAB_HEADLESS", raising=False)
    assert not widgets.in_jupyter()  # pytest is no kernel
    with pytest.warns(UserWarning, match=r"needs Jupyter .*`cen-lab explore RUN_DIR ...`"):
        ex = explore(tiny_run)
    assert not ex.live and set(ex.figures) == {"exchange", "gammas", "curves"}
    ex.slider.value = 1
    assert capsys.readouterr().out == ""  # no base64 PNGs printed by Output widgets without a frontend
