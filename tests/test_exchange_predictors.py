"""cen_lab.theory.exchange_predictors: Theorem 1's formula and the corrected predictors scored on which channels
CEN training exchanges, and the local check with the exchange switched off."""

import numpy as np
import pandas as pd
import pytest

import cen_lab
from cen_lab import plots
from cen_lab.theory.exchange_predictors import (PREDICTORS, exchange_local_check, exchange_predictions,
                                                leave_one_seed_out, outcome_checkpoint, predictor_scores)
from cen_lab.theory.local_checks import local_check
from cen_lab.theory.miscalibration import gaussian_attraction


def test_the_local_check_with_the_exchange_off_sees_the_zeroed_channels(exchanging_runs):
    run = exchanging_runs["s0"]
    on = local_check(run, [5], n_batches=2)
    off = local_check(run, [5], n_batches=2, exchange_off=True)
    # exchange on: a channel at gamma = 0 is under the threshold, replaced by the other branch's, and gets nothing
    assert (on["norm"] == 0).all() and (on["g"] == 0).all()
    # exchange off: it reaches the loss (where its beta > 0 lets it through the ReLU after the BN)
    assert (off["norm"] > 0).sum() >= 4 and len(off) == len(on)
    key = ["layer", "modality", "channel", "batch"]
    assert sorted(map(tuple, off[key].values.tolist())) == sorted(map(tuple, on[key].values.tolist()))


def test_the_predictors_are_measured_before_the_first_crossing_and_scored_on_it(exchanging_runs):
    local = exchange_local_check(exchanging_runs, n_batches=3, progress=False)
    frame = exchange_predictions(exchanging_runs, local)
    for label, run in exchanging_runs.items():
        sub = frame[frame["run"] == label]
        end = sub["window_end"].iloc[0]
        first = cen_lab.diagnose(run).crossings["crossing_step"].min()
        assert 0 < sub["exchanged"].mean() < 1 and end < first
        assert (sub["checkpoint"] == outcome_checkpoint(run, end)).all() and sub["checkpoint"].iloc[0] <= end
    row = frame.iloc[3]
    rows = local[(local["run"] == row["run"]) & (local["layer"] == row["layer"]) & (local["modality"] == row["branch"])
                 & (local["channel"] == row["channel"])]
    assert len(rows) == 3
    assert row["predicted_local"] == pytest.approx(rows["predicted"].mean())
    assert row["predicted_gaussian"] == pytest.approx(
        float(gaussian_attraction(rows["lam"].iloc[0], rows["g"].mean(), rows["g"].std())))
    assert frame[list(PREDICTORS)].notna().all().all()  # two seeds: (b) is fitted on the other one
    scores = predictor_scores(frame, n_boot=30)
    assert scores["predictor"].tolist() == list(PREDICTORS.values())
    assert scores[["ECE", "AUC"]].apply(lambda c: c.between(0, 1)).all().all()
    fig = plots.plot_exchange_predictors(scores)
    ax_auc, ax_ece = fig.get_axes()
    assert [t.get_text().replace("\n", " ") for t in ax_auc.get_yticklabels()] == list(PREDICTORS.values())
    assert ax_auc.get_xlabel().startswith("AUC") and ax_ece.get_xlabel().startswith("ECE")
    pfig = plots.plot_exchange_predictors(scores, backend="plotly")
    assert len(pfig.data) == 2 and list(pfig.data[0].x) == scores["AUC"].tolist()  # one arch, two panels
    assert list(pfig.data[1].x) == scores["ECE"].tolist()
    one_seed = exchange_predictions({"s0": exchanging_runs["s0"]})  # no local check, one seed
    assert one_seed[["predicted_local", "predicted_gaussian", "predicted_training"]].isna().all().all()
    single = predictor_scores(one_seed, n_boot=10)
    assert single["predictor"].tolist() == [PREDICTORS["predicted"]]
    assert single[["ECE low", "AUC high"]].isna().all().all() and np.isfinite(single["ECE"]).all()  # one run


def test_leave_one_seed_out_never_sees_the_held_out_seeds_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    frame = pd.DataFrame({"seed": np.repeat([0, 1, 2], 100), "x": x, "exchanged": x + 0.3 * rng.normal(size=300) > 0})
    base = leave_one_seed_out(frame, ["x"], "exchanged")
    flipped = frame.assign(exchanged=np.where(frame["seed"] == 0, ~frame["exchanged"], frame["exchanged"]))
    again = leave_one_seed_out(flipped, ["x"], "exchanged")
    assert np.array_equal(again[:100], base[:100])  # seed 0's own labels do not enter its predictions
    assert not np.allclose(again[100:], base[100:])  # but they do enter the other seeds'
    assert np.corrcoef(base, x)[0, 1] > 0.9
    assert np.isnan(leave_one_seed_out(frame[frame["seed"] == 1], ["x"], "exchanged")).all()


def test_a_run_without_a_checkpoint_before_its_first_crossing_is_refused(exchanging_runs):
    run = exchanging_runs["s0"]
    with pytest.raises(ValueError, match=r"no checkpoint at or before step 3,.*train.ckpt_every"):
        outcome_checkpoint(run, 3)
    with pytest.raises(TypeError, match="mapping label -> Run"):
        exchange_predictions(list(exchanging_runs.values()))


def test_a_checkpoint_after_the_first_crossing_is_said(tmp_path):
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 12, "log.grads": True, "log.every": 1,
                                                            "train.lam": 10.0, "train.optimizer": "sgd",
                                                            "train.lr": 0.05, "train.lr_schedule": "constant",
                                                            "train.ckpt_every": 5})
    run = cen_lab.train(cfg, tmp_path / "fast", progress=False)
    first = cen_lab.diagnose(run).crossings["crossing_step"].min()
    assert first <= 5  # the penalty takes gammas under the threshold by the first checkpoint
    with pytest.warns(UserWarning, match=r"fast: the last checkpoint in the early window \(step 5\) is not before the "
                                         r"run's first crossing"):
        exchange_local_check({"fast": run}, n_batches=1, progress=False)
