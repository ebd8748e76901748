"""cen_lab.theory.exchange_outcome: Theorem 1's probability scored on which channels CEN training exchanges."""

import numpy as np
import pandas as pd
import pytest

import cen_lab
from cen_lab.theory.exchange_outcome import exchange_outcome, exchange_outcome_scores
from cen_lab.theory.formula import attraction_probability


def test_the_prediction_is_the_formula_on_the_early_window_and_the_outcome_the_crossings(exchanging_runs):
    frame = exchange_outcome(exchanging_runs)
    run = exchanging_runs["s0"]
    sub = frame[frame["run"] == "s0"]
    d = cen_lab.diagnose(run)
    assert len(sub) == len(d.crossings) and sub["exchanged"].tolist() == d.crossings["crossing_step"].notna().tolist()
    assert 0 < sub["exchanged"].mean() < 1  # some channels crossed, some did not
    first = d.crossings["crossing_step"].dropna().min()
    end = sub["window_end"].iloc[0]
    assert end < max(first, 11)  # before any crossing (or the first MIN_STEPS + 1 logged steps)
    row = sub.iloc[0]
    g = run.grads
    norm = g[(g["step"] <= end) & (g["layer"] == row["layer"]) & (g["branch"] == row["branch"])
             & (g["channel"] == row["channel"])]["dxprime_norm"].mean()
    assert row["norm"] == pytest.approx(norm)
    assert row["predicted"] == pytest.approx(attraction_probability(run.lam_per_step, norm))
    scores = exchange_outcome_scores(frame, n_boot=50)
    assert scores["runs"].tolist() == [2] and 0 <= scores["ECE"].iloc[0] <= 1


def test_the_auc_reads_the_ranking_and_the_ece_the_calibration():
    y = np.array([True] * 10 + [False] * 30)
    frame = pd.DataFrame({"arch": "plain", "run": np.repeat(["a", "b"], 20), "predicted": np.linspace(1, 0, 40) * 0.25,
                          "exchanged": y, "importance": np.linspace(0, 1, 40)})
    s = exchange_outcome_scores(frame, n_boot=100).iloc[0]
    assert s["AUC formula"] == 1.0 and s["AUC low importance"] == 1.0 and s["exchanged"] == 0.25
    assert s["mean predicted"] == pytest.approx(0.125)
    flipped = exchange_outcome_scores(frame.assign(predicted=1 - frame["predicted"]), n_boot=100).iloc[0]
    assert flipped["AUC formula"] == 0.0 and flipped["ECE"] > s["ECE"]


def test_a_run_without_gradients_is_refused(tiny_run, tmp_path):
    plain = cen_lab.train(cen_lab.ExperimentConfig.preset("tiny"), tmp_path / "plain", progress=False)
    with pytest.raises(ValueError, match="no gradients logged"):
        exchange_outcome({"plain": plain})
