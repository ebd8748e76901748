"""predict_exchange: its API on a tiny probe, its pieces against known answers, and its errors on bad input.
(No test asserts its accuracy: the tiny preset carries no evidence; the accuracy is the benchmark's.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cen_lab
from cen_lab.experiments.diagnosis import schedule_steps
from cen_lab.experiments.training import lr_at
from cen_lab.runs.reader import Run
from cen_lab.theory.lambda_choice import (MIN_LOGS, ExchangePrediction, fit_probe, predict_exchange, predicted_state,
                                          relaxation, speed_at)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Run:
    """30 steps of a 60-step tiny run (the budget's cosine schedule), gradients logged every 2 steps."""
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 60, "log.grads": True,
                                                            "name": "probe"})
    return cen_lab.train(cfg, tmp_path_factory.mktemp("probe") / "p", progress=False, stop_at=30)


def test_prediction_on_a_tiny_probe(probe):
    lams = [1e-4, 1e-3, 1e-2, 0.1]
    pred = predict_exchange(probe, lams, n_boot=100)
    assert isinstance(pred, ExchangePrediction)
    t = pred.table
    assert list(t["lam"]) == lams and pred.budget == 60
    assert set(t.columns) >= {"lam", "predicted", "low", "high", "state", "theorem1", "median_crossing"}
    assert ((t["low"] <= t["predicted"]) & (t["predicted"] <= t["high"])).all()
    assert t[["predicted", "low", "high", "theorem1"]].apply(lambda c: c.between(0, 1)).all().all()
    assert set(t["state"]) <= {"collapsing", "partial", "none"}
    assert t["state"].tolist() == [predicted_state(p) for p in t["predicted"]]
    n_pen = int(probe.gammas.query("step == 0")["penalised"].sum())
    assert len(pred.crossings) == n_pen * len(lams)
    # under Adam more lambda never slows a channel: the portion grows with lambda
    assert np.all(np.diff(t["predicted"]) >= 0)
    assert np.all(np.diff(t["theorem1"]) >= 0)
    assert "probe" in str(pred) and "budget 60 steps" in pred.regime
    assert "Adam lr 0.005 cosine" in pred.regime and "plain conv blocks" in pred.regime  # from the probe's config
    assert "smoke test" in str(pred)  # the tiny preset's numbers carry no evidence


def _synthetic_probe(optimizer: str, lam: float, momentum: float = 0.0, steps: int = 200, budget: int = 400,
                     every: int = 5, schedule: str = "cosine", lr: float = 5e-3) -> Run:
    """A probe whose gammas move under the penalty alone (no data gradient), exactly as the optimiser moves them."""
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({
        "train.steps": budget, "train.optimizer": optimizer, "train.lr": lr, "train.momentum": momentum,
        "train.lr_schedule": schedule, "train.lam": lam, "log.every": every})
    rates = np.array([lr_at(cfg.train, s) for s in range(budget)])
    gamma0 = np.linspace(0.05, 1.2, 24)
    gam, buf = gamma0.copy(), np.zeros_like(gamma0)
    m = v = np.zeros_like(gamma0)
    rows, grads = [], []
    for t in range(steps + 1):
        if t % every == 0:
            for c, gm in enumerate(gam):
                rows.append({"step": t, "layer": "blocks.0.bn", "branch": c // 12, "channel": c % 12,
                             "penalised": True, "gamma": gm})
                grads.append({"step": t, "layer": "blocks.0.bn", "branch": c // 12, "channel": c % 12,
                              "dgamma": 0.0, "dxprime_norm": 0.0})
        if t == steps:
            break
        g = lam * np.sign(gam)
        if optimizer == "adam":
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            gam = gam - rates[t] * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
        else:
            buf = momentum * buf + g
            gam = gam - rates[t] * buf
    manifest = {"source": "trained", "threshold": 0.02, "lam": lam, "lam_per_step": lam, "last_step": steps,
                "branches": [{"name": "a"}, {"name": "b"}]}
    return Run(path=__import__("pathlib").Path("synthetic"), config=cfg, manifest=manifest,
               gammas=pd.DataFrame(rows), exchange=pd.DataFrame(), metrics=pd.DataFrame(),
               grads=pd.DataFrame(grads))


@pytest.mark.parametrize("optimizer, schedule", [("adam", "cosine"), ("adam", "constant"), ("sgd", "cosine")])
def test_without_data_gradient_the_schedule_alone_predicts_the_crossings(optimizer, schedule):
    lam, budget = 2e-3, 400
    lr = 5e-3 if optimizer == "adam" else 0.5  # SGD without momentum: lr * lam a step
    run = _synthetic_probe(optimizer, lam, steps=200, budget=budget, schedule=schedule, lr=lr)
    rates = np.array([lr_at(run.config.train, s) for s in range(budget)])
    gamma0 = run.gammas.query("step == 0")["gamma"].to_numpy()
    for target in (lam, lam / 2, 3 * lam):
        pred = predict_exchange(run, [target], n_boot=20)
        got = pred.crossings["crossing_step"].to_numpy()
        want = schedule_steps(gamma0, 0.02, rates, target, optimizer=optimizer)
        assert (got == want).all(), (target, got, want)
        assert pred.table["predicted"].iloc[0] == pytest.approx(np.mean((want >= 0)))
        assert pred.fit.h.max() == pytest.approx(0.0, abs=1e-9)  # nothing decelerates


def test_speed_at_is_the_identity_at_the_probes_lambda_and_grows_with_lambda():
    D = np.array([-0.5, 0.0, 0.3, 0.9])
    s = np.array([1e-3, 2e-3, 1e-3, 5e-4])
    assert speed_at(D, 2e-3, 2e-3, "adam", s=s) == pytest.approx(D, abs=1e-4)  # up to eps / s
    assert np.all(speed_at(D, 2e-3, 4e-3, "adam", s=s) > D)
    assert np.all(np.abs(speed_at(D, 2e-3, 1.0, "adam", s=s)) <= 1)  # Adam moves at most lr a step
    assert speed_at(D, 2e-3, 3e-3, "sgd", momentum=0.9) == pytest.approx(D + 1e-2)
    with pytest.raises(ValueError, match="sgd, adam"):
        speed_at(D, 1e-3, 1e-3, "rmsprop")


def test_relaxation_is_linear_without_deceleration_and_saturates_with_it():
    u = np.array([0.0, 1.0, 10.0, 1e4])
    assert relaxation(0.5, 0.0, u) == pytest.approx(0.5 * u)
    out = relaxation(0.5, 2.0, u)
    assert out[0] == 0 and np.all(np.diff(out) > 0) and out[-1] == pytest.approx(0.25)  # D / h


def test_bad_input_gets_clear_errors(probe, tmp_path):
    with pytest.raises(ValueError, match="positive"):
        predict_exchange(probe, [1e-3, 0.0])
    with pytest.raises(ValueError, match="positive"):
        predict_exchange(probe, [-1e-3])
    with pytest.raises(ValueError, match="shorter than the probe"):
        predict_exchange(probe, [1e-3], budget=20)
    with pytest.raises(ValueError, match="not modelled.*sgd, adam"):
        predict_exchange(probe, [1e-3], optimizer="rmsprop")
    # a probe too short for the model says how many logged steps it needs
    short = Run(probe.path, probe.config, probe.manifest, probe.gammas[probe.gammas["step"] <= 8], probe.exchange,
                probe.metrics, probe.grads)
    with pytest.raises(ValueError, match=f"needs {MIN_LOGS}.*at least"):
        predict_exchange(short, [1e-3])
    none = Run(probe.path, probe.config, probe.manifest, probe.gammas.assign(penalised=False), probe.exchange,
               probe.metrics, probe.grads)
    with pytest.raises(ValueError, match="no penalised gammas"):
        predict_exchange(none, [1e-3])
    no_grads = Run(probe.path, probe.config, probe.manifest, probe.gammas, probe.exchange, probe.metrics,
                   probe.grads.iloc[:0])
    with pytest.raises(ValueError, match="log.grads"):
        predict_exchange(no_grads, [1e-3])
    proximal = Run(probe.path, probe.config.override({"train.l1_rule": "proximal"}), probe.manifest, probe.gammas,
                   probe.exchange, probe.metrics, probe.grads)
    with pytest.raises(ValueError, match="subgradient"):
        predict_exchange(proximal, [1e-3])


def test_an_observed_probe_of_a_foreign_model(tmp_path):
    """The zoo's reference-style model, trained by its own loop under cen_lab.observe: the run records no
    optimiser, so the user gives it; without it the error names what to give."""
    from cen_lab.experiments.zoo_example import train_reference_style

    data = cen_lab.ExperimentConfig.preset("tiny").data
    z = train_reference_style(tmp_path / "zoo", steps=60, lam=4e-3, data=data, batch_size=16, save_every=0,
                              progress=False)
    with pytest.raises(ValueError, match="records no optimiser; give optimizer, lr, budget"):
        predict_exchange(z.run, [1e-3])
    pred = predict_exchange(z.run, [1e-3, 1e-2], budget=600, optimizer="sgd", lr=0.05, momentum=0.9, n_boot=50)
    assert len(pred.table) == 2 and pred.budget == 600
    assert "sgd (given) momentum 0.9" in pred.regime
    assert pred.fit.lam == pytest.approx(z.run.lam_per_step)
    assert pred.table["predicted"].iloc[1] >= pred.table["predicted"].iloc[0]
    assert fit_probe(z.run, 600, optimizer="sgd", lr=0.05, momentum=0.9).optimizer == "sgd"


def test_several_probes_interpolate_in_log_lambda(probe, tmp_path):
    cfg = probe.config.override({"train.lam": 1e-2, "name": "probe2"})
    other = cen_lab.train(cfg, tmp_path / "p2", progress=False, stop_at=30)
    lams = [2e-3, 5e-3, 1e-2, 0.1]  # the probe's lam is the tiny preset's 2e-3
    both = predict_exchange([other, probe], lams, n_boot=50)  # any order
    alone = [predict_exchange(p, lams, n_boot=50).table for p in (probe, other)]
    t = both.table
    assert [f.lam for f in both.fits] == [2e-3, 1e-2]
    # at a probe's lambda, and beyond the probes' range: that probe's own prediction
    assert t.loc[0, "predicted"] == pytest.approx(alone[0].loc[0, "predicted"])
    assert t.loc[2, "predicted"] == pytest.approx(alone[1].loc[2, "predicted"])
    assert t.loc[3, "predicted"] == pytest.approx(alone[1].loc[3, "predicted"])
    w = np.log(2.5) / np.log(5)
    assert t.loc[1, "predicted"] == pytest.approx((1 - w) * alone[0].loc[1, "predicted"] + w * alone[1].loc[1, "predicted"])
    assert t["probes"].tolist() == ["0.002", "0.002-0.01", "0.01", "0.01"]
    assert ((t["low"] <= t["predicted"]) & (t["predicted"] <= t["high"])).all()
    with pytest.raises(ValueError, match="share a lambda"):
        predict_exchange([probe, probe], lams)


def test_the_lambda_figure_draws_prediction_band_probes_and_held_out_runs(probe):
    from cen_lab.views.plots import compute_lambda_curve, plot_lambda_curve

    pred = predict_exchange(probe, [1e-4, 1e-3, 1e-2], n_boot=50)
    validation = pd.DataFrame({"lam": [1e-3, 1e-2], "actual": [0.1, 0.5], "seed": [1, 1]})
    frame = compute_lambda_curve(pred, validation)
    assert frame["kind"].value_counts().to_dict() == {"prediction": 3, "validation": 2, "probe": 1}
    assert (frame["budget"] == 60).all() and frame.loc[frame["kind"] == "probe", "lam"].tolist() == [2e-3]
    fig = plot_lambda_curve(frame)
    ax = fig.get_axes()[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert set(labels) == {"predicted (95% interval)", "predicted", "plain Theorem 1", "probe lambdas",
                           "held-out full runs"}
    dots = [c for c in ax.collections if c.get_offsets().shape[0] == 2]
    assert np.allclose(dots[0].get_offsets(), [[1e-3, 0.1], [1e-2, 0.5]])
    fig = plot_lambda_curve(frame, backend="plotly")
    names = [t.name for t in fig.data]
    assert "held-out full runs" in names and fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="lacks"):
        compute_lambda_curve(pred, pd.DataFrame({"lam": [1e-3]}))
