"""cen_lab.forecast: the penalty's schedule when nothing else acts, a finished run's own end, the forecasts recorded
while training (equal after a resume), observe's and TensorBoard's, the warning, the peer, the benchmark's tables,
and an error for each bad input. (No test asserts accuracy: that is ``cen-lab bench-forecast``'s, README.)"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal

import cen_lab
from cen_lab.experiments.diagnosis import schedule_steps
from cen_lab.experiments.training import lr_at
from cen_lab.runs.forecast_model import MIN_LOGS, ForecastWarning, auto_cadence, forecast_arrays
from cen_lab.runs.reader import Run
from cen_lab.theory.curve_peer import FAMILIES, extrapolate_curve
from cen_lab.theory.forecast import Forecast, forecast, truncate_run
from cen_lab.theory.forecast_bench import forecast_summary, score_runs, tune_forecaster


def _penalty_only(optimizer: str, lam: float, steps: int = 200, budget: int = 400, every: int = 5, lr: float = 5e-3,
                  schedule: str = "cosine") -> Run:
    """A run whose gammas move under the penalty alone (no data gradient), exactly as the optimiser moves them."""
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({
        "train.steps": budget, "train.optimizer": optimizer, "train.lr": lr, "train.momentum": 0.0,
        "train.lr_schedule": schedule, "train.lam": lam, "log.every": every})
    rates = np.array([lr_at(cfg.train, s) for s in range(budget)])
    gam = np.linspace(0.05, 1.2, 24)
    m = v = np.zeros_like(gam)
    rows = []
    for t in range(steps + 1):
        if t % every == 0:
            rows += [{"step": t, "layer": f"blocks.{c // 12}.bn", "branch": (c // 6) % 2, "channel": c % 6,
                      "penalised": True, "gamma": g} for c, g in enumerate(gam)]
        if t == steps:
            break
        g = lam * np.sign(gam)
        if optimizer == "adam":
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            gam = gam - rates[t] * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
        else:
            gam = gam - rates[t] * g
    manifest = {"source": "trained", "threshold": 0.02, "lam": lam, "lam_per_step": lam, "last_step": steps,
                "total_steps": budget, "status": "incomplete", "branches": [{"name": "a"}, {"name": "b"}]}
    return Run(path=Path("synthetic"), config=cfg, manifest=manifest, gammas=pd.DataFrame(rows),
               exchange=pd.DataFrame(), metrics=pd.DataFrame(), grads=pd.DataFrame())


@pytest.mark.parametrize("optimizer, schedule", [("adam", "cosine"), ("adam", "constant"), ("sgd", "cosine")])
def test_without_data_gradient_the_forecast_is_the_penalty_schedule(optimizer, schedule):
    lam, budget = 2e-3, 400
    run = _penalty_only(optimizer, lam, budget=budget, schedule=schedule, lr=5e-3 if optimizer == "adam" else 0.5)
    rates = np.array([lr_at(run.config.train, s) for s in range(budget)])
    gamma0 = run.gammas.query("step == 0")["gamma"].to_numpy()
    want = schedule_steps(gamma0, 0.02, rates, lam, optimizer=optimizer)
    fc = forecast(run, n_boot=20)
    got = fc.crossings["crossing_step"].to_numpy()
    alive = run.gammas.query("step == 200")["gamma"].abs().to_numpy() >= 0.02
    assert (got[alive] == want[alive]).all(), (got, want)
    # a channel already under the threshold: from its first logged step under it (logged every 5 steps)
    assert ((got[~alive] >= want[~alive]) & (got[~alive] < want[~alive] + 5)).all()
    assert fc.predicted == pytest.approx(np.mean(want >= 0))
    assert alive.any() and (~alive).any()  # some channels cross before the forecast, some after
    assert fc.low <= fc.predicted <= fc.high


def test_a_finished_run_forecasts_its_own_final_portion(tiny_long_run):
    fc = forecast(tiny_long_run)
    last = tiny_long_run.gammas[tiny_long_run.gammas["step"] == tiny_long_run.gammas["step"].max()]
    final = float((last.loc[last["penalised"], "gamma"].abs() < tiny_long_run.threshold).mean())
    assert isinstance(fc, Forecast) and fc.step == fc.budget == 60
    assert fc.predicted == fc.now == fc.low == fc.high == final
    assert "smoke test" in fc.regime and "budget 60 steps" in str(fc)


@pytest.fixture(scope="module")
def tiny_long_run(tmp_path_factory) -> Run:
    """60 tiny steps, logged every 2: 31 states, a forecast every 2 steps (``auto_cadence(60, 2)``)."""
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 60, "name": "fc"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForecastWarning)
        return cen_lab.train(cfg, tmp_path_factory.mktemp("fc") / "run", progress=False)


def test_training_records_forecasts_and_a_resumed_run_records_the_same(tiny_long_run, tmp_path):
    f = tiny_long_run.forecasts
    assert auto_cadence(60, 2) == 2
    # from the first state with MIN_LOGS logged states on, at every multiple of the cadence
    assert f["step"].tolist() == list(range(2 * (MIN_LOGS - 1), 61, 2))
    assert (f["budget"] == 60).all() and set(f["state"]) <= {"collapsing", "partial", "none"}
    assert ((f["low"] <= f["predicted"]) & (f["predicted"] <= f["high"])).all()
    cut = truncate_run(tiny_long_run, 30)
    row = f[f["step"] == 30].iloc[0]
    again = forecast(cut, seed=30)  # the recorder seeds each forecast's bootstrap with its step
    assert (again.predicted, again.low, again.high) == (row["predicted"], row["low"], row["high"])
    assert tiny_long_run.manifest["forecast_seconds"] < tiny_long_run.manifest["train_seconds"]
    cfg = tiny_long_run.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForecastWarning)
        cen_lab.train(cfg, tmp_path / "r", progress=False, stop_at=31)  # the checkpoint at 31: between forecasts
        resumed = cen_lab.train(cfg, tmp_path / "r", progress=False, resume=True)
    assert_frame_equal(resumed.forecasts, f, check_exact=True)


def test_forecast_every_sets_the_cadence_and_minus_one_turns_it_off(tmp_path):
    base = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 40})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForecastWarning)
        run = cen_lab.train(base.override({"log.forecast_every": 10}), tmp_path / "a", progress=False)
        off = cen_lab.train(base.override({"log.forecast_every": -1}), tmp_path / "b", progress=False)
    assert run.forecasts["step"].tolist() == [14, 20, 30, 40]  # from the MIN_LOGS-th state on, then every 10
    assert off.forecasts.empty and "forecast_seconds" not in off.manifest
    with pytest.raises(cen_lab.ConfigError, match="forecast_every"):
        base.override({"log.forecast_every": -2})


def test_the_warning_says_once_when_the_whole_interval_is_none_three_times_in_a_row(tmp_path):
    # 60 tiny steps of Adam at lr 5e-3 sum to 0.15 of lr: the penalty alone cannot bring a gamma from 1 to 0.02
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 60})
    with pytest.warns(ForecastWarning) as caught:
        cen_lab.train(cfg, tmp_path / "r", progress=False)
    mine = [w for w in caught if issubclass(w.category, ForecastWarning)]
    assert len(mine) == 1
    # the forecasts at 14, 16 and 18 agree: the warning comes with the third (PERSIST)
    assert "exchanging nothing" in str(mine[0].message) and "up to step 18" in str(mine[0].message)
    assert "Raise lam" in str(mine[0].message)


def test_collapsing_forecasts_warn_from_the_recorder():
    steps = np.arange(0, 40, 2)
    a = np.clip(1.0 - np.outer(steps, np.full(8, 0.03)), 0, None)  # every channel falls fast
    u = np.concatenate([[0.0], np.cumsum(np.full(100, 1.0))])
    res = forecast_arrays(steps, a, u, 0.02, np.zeros(8, int))
    assert res.state == "collapsing" and res.low >= 0.9 and res.step_90 > 0


def test_diagnose_shows_the_forecast_of_a_run_in_progress(tiny_long_run):
    cut = truncate_run(tiny_long_run, 40)
    d = cen_lab.diagnose(cut)
    assert d.forecast is not None and d.forecast["step"] == 40 and d.forecast["budget"] == 60
    assert any("forecast at step 40 of 60" in n for n in d.notes)
    assert cen_lab.diagnose(tiny_long_run).forecast is None  # finished: nothing to forecast


def test_observe_records_forecasts_given_the_schedule(tmp_path):
    from cen_lab.zoo import ReferenceStyleCEN

    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    with pytest.warns(ForecastWarning, match="exchanging nothing"), \
            cen_lab.observe(model, tmp_path / "obs", penalised="alternate-halves", reference_lamda=1e-3,
                            total_steps=40, lr=lambda s: 0.01, forecast_every=5) as obs:
        for s in range(24):
            obs.log(s)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.97)  # every gamma decays exponentially: it never reaches 0.02 in 40 steps
    run = cen_lab.load_run(tmp_path / "obs")
    assert run.forecasts["step"].tolist() == [7, 10, 15, 20]  # at the 8th logged state, then every 5 steps
    assert (run.forecasts["budget"] == 40).all()
    with pytest.raises(cen_lab.ObserveError, match="total_steps"):
        cen_lab.observe(model, tmp_path / "x", penalised="alternate-halves", lr=0.01)
    with pytest.raises(cen_lab.ObserveError, match="rates"):
        cen_lab.observe(model, tmp_path / "x", penalised="alternate-halves", lr=[0.01] * 3, total_steps=40)
    assert not (tmp_path / "x").exists()


def test_tensorboard_export_has_the_forecasts(tiny_long_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cen_lab.runs.export.tensorboard(tiny_long_run, tmp_path / "tb")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    got = acc.Scalars("forecast/predicted")
    assert [e.step for e in got] == tiny_long_run.forecasts["step"].tolist()
    assert [e.value for e in got] == pytest.approx(tiny_long_run.forecasts["predicted"].tolist())


def test_bad_input_gets_clear_errors(tiny_long_run, tiny_run):
    with pytest.raises(ValueError, match=f"needs {MIN_LOGS} logged steps"):
        forecast(tiny_run)  # 12 steps logged every 2: 7 states
    with pytest.raises(ValueError, match="nothing will be exchanged"):
        forecast(dataclasses.replace(tiny_long_run, manifest={**tiny_long_run.manifest, "lam_per_step": 0.0}))
    with pytest.raises(ValueError, match="shorter than the steps already logged"):
        forecast(tiny_long_run, budget=40)
    observed = dataclasses.replace(truncate_run(tiny_long_run, 40), config=None,
                                   manifest={**tiny_long_run.manifest, "source": "observed", "total_steps": None})
    with pytest.raises(ValueError, match="give lr and budget"):
        forecast(observed)
    fc = forecast(observed, lr=5e-3, budget=60)  # a constant rate, given
    assert fc.budget == 60 and "observed" in fc.regime
    with pytest.raises(ValueError, match="level"):
        forecast(tiny_long_run, level=1.0)


def test_the_peer_recovers_a_curve_of_its_own_families_and_a_flat_curve():
    f, _ = FAMILIES["weibull"]
    steps = np.arange(0, 2600, 50)
    x = 1 + 100 * steps / 10000
    y = f(x, 0.7, 0.0, 0.05, 1.5)
    ex = extrapolate_curve(steps, y, 10000)
    assert ex.predicted == pytest.approx(float(f(101.0, 0.7, 0.0, 0.05, 1.5)), abs=0.03)
    assert ex.low <= ex.predicted <= ex.high and sum(w for _, w in ex.families.values()) == pytest.approx(1)
    flat = extrapolate_curve(steps, np.zeros(len(steps)), 10000)
    assert flat.predicted == pytest.approx(0.0, abs=1e-6)  # a curve that has not moved says nothing will


def test_the_benchmark_tables_on_tiny_runs(tiny_long_run):
    scores = score_runs([tiny_long_run], fractions=(0.25, 0.5), windows=(0.25, 0.5), decels=(0.0, 1.0), shrinks=(0.3,),
                        spreads=(0.5, 1.0), n_boot=20, progress=False)
    f = scores[scores["method"] == "forecast"]
    assert len(f) == 2 * 2 * 2 * 2 and set(scores["method"]) == {"forecast", "probe", "peer"}
    # each spread widens the same forecast: as cen_lab.forecast with that spread gives it
    row = f[(f["fraction"] == 0.25) & (f["window"] == 0.5) & (f["decel"] == 1.0) & (f["spread"] == 0.5)].iloc[0]
    direct = forecast(truncate_run(tiny_long_run, int(row["step"])), window=0.5, decel=1.0, spread=0.5, n_boot=20)
    assert (direct.predicted, direct.low, direct.high) == (row["predicted"], row["low"], row["high"])
    assert (scores["error"].dropna() == (scores["predicted"] - scores["final"]).dropna()).all()
    assert scores.loc[scores["fraction"] == 0.25, "step"].iloc[0] == 14  # the last logged state by 25% of 60
    choice = tune_forecaster(scores)
    assert choice["window"] in (0.25, 0.5) and choice["decel"] in (0.0, 1.0) and choice["spread"] in (0.5, 1.0)
    assert choice["runs"] == [tiny_long_run.path.name]
    summary = forecast_summary(scores)
    assert set(summary["method"]) == {"forecast", "probe", "peer"}
    row = summary[(summary["method"] == "forecast") & (summary["fraction"] == 0.25)].iloc[0]
    assert row["goal"] == 0.05 and row["met"] == (row["mae"] <= 0.05)


def test_the_forecast_path_frame_and_its_figures(tiny_long_run):
    from cen_lab.views import plots

    frame = plots.compute_forecast_path(tiny_long_run, points=5)
    obs = frame[frame["method"] == "observed"]
    fc = frame[frame["method"] == "forecast"]
    assert len(obs) == 31 and len(fc) == 5 and len(frame[frame["method"] == "peer"]) == 5
    assert fc["step"].iloc[0] == 2 * (MIN_LOGS - 1) and fc["step"].iloc[-1] == 60
    assert fc["predicted"].iloc[-1] == obs["predicted"].iloc[-1]  # at the end, the forecast is the run's value
    assert (frame["fraction"] == frame["step"] / 60).all()
    fig = plots.plot_forecast_path(frame)
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert labels[:3] == ["forecast: final portion expected", "peer: final portion expected", "under the threshold now"]
    names = [t.name for t in plots.plot_forecast_path(frame, backend="plotly").data]
    assert names == ["forecast: interval", "forecast: final portion", "peer: interval", "peer: final portion",
                     "under the threshold now"]
    with pytest.raises(ValueError, match="compute_forecast_path"):
        plots.plot_forecast_path(tiny_long_run.gammas)


def test_one_extreme_forecast_of_a_noisy_run_does_not_warn():
    from cen_lab.runs.forecast_model import PERSIST, ForecastRecorder, ForecastResult

    class Sink:  # the recorder's writer: where rows would go
        path = Path("noisy")

    rec = ForecastRecorder(Sink(), np.ones(4, bool), np.zeros(4, int), np.full(100, 0.01), 0.02, every=2)

    def result(low, high):
        return ForecastResult(10, 100, 0.0, (low + high) / 2, low, high, "partial", -1, np.zeros(4, int), np.zeros(1))

    with warnings.catch_warnings():
        warnings.simplefilter("error", ForecastWarning)
        for lo, hi in [(0, 0), (0, 0), (0.2, 0.4), (0, 0), (0.95, 1), (0, 0)]:  # never PERSIST in a row
            rec._warn(result(lo, hi))
    with pytest.warns(ForecastWarning, match="exchanging nothing"):
        for _ in range(PERSIST - 1):
            rec._warn(result(0, 0))
    assert rec.warned


def test_the_explorer_shows_the_forecast_recorded_by_the_step_shown(tiny_long_run, tiny_run):
    from cen_lab.views.widgets import explore

    ex = explore({"long": tiny_long_run, "short": tiny_run})
    ex.slider.value = ex.steps.index(30)
    row = tiny_long_run.forecasts.set_index("step").loc[30]
    assert ex.forecast_label.value.startswith(f"forecast at step 30: {row['predicted']:.0%}")
    assert f"interval {row['low']:.0%}-{row['high']:.0%}), {row['state']}" in ex.forecast_label.value
    ex.slider.value = 0
    assert ex.forecast_label.value == "forecast: none recorded by this step"
    ex.run_picker.value = "short"  # 12 steps: too few logged states for any forecast
    assert ex.forecast_label.value.startswith("forecast: none recorded (")


def test_a_thinned_history_stays_bounded_and_resumes_to_the_same_forecasts(tmp_path, monkeypatch):
    import cen_lab.runs.forecast_model as fm

    monkeypatch.setattr(fm, "MAX_STATES", 16)  # 31 logged states: every 2nd kept from the 17th on
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 60})
    kept = []
    real_keep = fm.ForecastRecorder._keep

    def spy(self, step, row):
        real_keep(self, step, row)
        kept.append(len(self.steps))

    monkeypatch.setattr(fm.ForecastRecorder, "_keep", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ForecastWarning)
        whole = cen_lab.train(cfg, tmp_path / "a", progress=False)
        cen_lab.train(cfg, tmp_path / "b", progress=False, stop_at=31)
        resumed = cen_lab.train(cfg, tmp_path / "b", progress=False, resume=True)
    assert max(kept) == 16 and kept[16] == 9 and len(whole.forecasts) == 24  # the 17th state halves the 17 kept
    assert_frame_equal(resumed.forecasts, whole.forecasts, check_exact=True)


def test_the_summary_per_variant_splits_the_same_rows():
    scores = pd.DataFrame({"arch": ["plain"] * 4, "variant": ["a", "a", "b", "b"], "fraction": [0.1] * 4,
                           "method": ["forecast"] * 4, "predicted": [0.5, 0.6, 0.2, 0.2],
                           "error": [0.1, -0.3, 0.0, 0.05], "covered": [1.0, 0.0, 1.0, 1.0]})
    per_arch = forecast_summary(scores)
    assert per_arch["mae"].iloc[0] == pytest.approx(0.1125) and not per_arch["met"].iloc[0]  # goal 0.10 at 10%
    per = forecast_summary(scores, by=("arch", "variant")).set_index("variant")
    assert per.loc["a", "mae"] == pytest.approx(0.2) and per.loc["b", "mae"] == pytest.approx(0.025)
    assert per.loc["a", "coverage"] == 0.5 and bool(per.loc["b", "met"]) is True


def test_norms_the_forward_never_ran_are_left_out_as_diagnose_does(tiny_long_run):
    layers = list(dict.fromkeys(tiny_long_run.gammas["layer"]))
    cut = dataclasses.replace(tiny_long_run, manifest={**tiny_long_run.manifest,
                                                       "unapplied_layers": {layers[0]: "never applied"}})
    fc, full = forecast(cut), forecast(tiny_long_run)
    assert set(fc.crossings["layer"]) == set(layers[1:]) and set(full.crossings["layer"]) == set(layers)
