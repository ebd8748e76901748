"""Why Theorem 1's prediction is miscalibrated, and the two corrected predictions (cen_lab.miscalibration)."""

import numpy as np
import pandas as pd
import pytest
import torch

from cen_lab import plots, theorem
from cen_lab.theory.miscalibration import (channel_statistics, compare_predictions, fit_logistic, gaussian_attraction,
                                    layer_sizes)
from cen_lab.theory import attraction_probability


def test_the_gaussian_prediction_is_the_formula_at_zero_mean_and_the_gradient_norm():
    norms = np.array([0.0, 1e-3, 0.01, 0.1, 1.0, 10.0])
    for lam in (1e-3, 0.02, 0.5):
        np.testing.assert_allclose(gaussian_attraction(lam, 0.0, norms), attraction_probability(lam, norms), atol=1e-12)
    # a drift toward restoring the channel makes staying at zero rarer
    assert gaussian_attraction(0.02, -0.05, 0.01) < gaussian_attraction(0.02, 0.0, 0.01)
    assert gaussian_attraction(0.02, 0.01, 0.0) == 1.0 and gaussian_attraction(0.02, 0.03, 0.0) == 0.0


def test_logistic_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    p = 1 / (1 + np.exp(-(0.5 + 2.0 * x[:, 0] - 1.0 * x[:, 1])))
    w = fit_logistic(x, (rng.random(20000) < p).astype(float), l2=0.0)
    np.testing.assert_allclose(w, [0.5, 2.0, -1.0], atol=0.1)


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    torch.set_num_threads(1)
    runs = theorem.train_theorem_runs([0.05], [0, 1, 2], tmp_path_factory.mktemp("miscal"), preset="tiny", steps=12,
                                      checkpoints=2, progress=False)
    return runs, theorem.local_check_runs(runs, n_batches=4, progress=False)


def test_fit_and_test_never_share_a_minibatch_or_a_seed(checked):
    runs, local = checked
    r = compare_predictions(runs, local)
    fit, test = set(r.splits["fit_batches"]), set(r.splits["test_batches"])
    assert fit and test and not fit & test and fit | test == set(local["batch"])
    assert set(r.predictions["batch"]) == test  # every scored row is held out from (a)'s fit
    # (b) for a seed never saw that seed's outcomes: flipping them leaves its predictions as they were, bit for
    # bit, and moves the other seeds' (whose fits include them)
    seed0 = local["run"].isin([run.path.name for (_, seed), run in runs.items() if seed == 0])
    flipped = compare_predictions(runs, local.assign(attracted=np.where(seed0, ~local["attracted"], local["attracted"])))
    before, after = (x.predictions.set_index(["seed", "batch", "layer", "modality", "channel", "step"])
                     ["predicted_training"].sort_index() for x in (r, flipped))
    np.testing.assert_array_equal(after.loc[0].to_numpy(), before.loc[0].to_numpy())
    assert not np.array_equal(after.loc[1].to_numpy(), before.loc[1].to_numpy())
    assert set(r.predictions["seed"]) == {0, 1, 2}
    assert list(r.ece["explained"].round(12))[0] == 0 and r.ece["n_rows"].nunique() == 1
    assert r.ece["ece"].between(0, 1).all() and (r.ece["ci_low"] <= r.ece["ci_high"]).all()
    np.testing.assert_allclose(r.predictions["predicted_formula"], r.predictions["predicted"])
    assert r.predictions[["predicted_gaussian", "predicted_training"]].notna().all().all()
    with pytest.raises(ValueError, match="at least two seeds"):
        compare_predictions({k: v for k, v in runs.items() if k[1] == 0}, local)
    with pytest.raises(ValueError, match="at least two minibatches"):
        compare_predictions(runs, local[local["batch"] == 0])


def test_channel_statistics_put_the_correlation_against_its_scale(checked):
    runs, local = checked
    run = next(iter(runs.values()))
    sizes = layer_sizes(run)
    cfg = run.config
    side = cfg.data.scene.image_size
    assert sizes == {"blocks.0.bn": cfg.train.batch_size * side * side,
                     "blocks.1.bn": cfg.train.batch_size * (side // 2) ** 2}
    ch = channel_statistics(local, sizes)
    live = local[local["norm"] > 0]
    z = live.groupby(["run", "step", "layer", "modality", "channel"], sort=False)["z"].mean().to_numpy()
    np.testing.assert_allclose(ch["corr_over_scale"], z)
    np.testing.assert_allclose(ch["corr_mean"] * np.sqrt(ch["n"]), z)
    assert (ch["n_batches"] == 4).all() and (ch["norm_mean"] > 0).all()


def test_drift_figure_and_prediction_figure():
    channels = pd.DataFrame({"layer": ["a", "a", "b"], "g_mean": [-2.0, 0.0, 1.0], "g_std": [1.0, 2.0, 0.5],
                             "norm_mean": [1.0, 2.0, 0.5]})
    drift = plots.compute_drift(channels)
    assert drift["drift"].tolist() == [-2.0, 0.0, 2.0] and drift["spread"].tolist() == [1.0, 1.0, 1.0]
    fig = plots.plot_drift(drift)
    assert fig.get_axes()[0].get_xlabel() == "drift: mean over minibatches"
    assert len(plots.plot_drift(drift, backend="plotly").data) == 3  # two layers and the independence mark
    ece = pd.DataFrame({"predictor": ["formula", "(a)", "(b)"], "ece": [0.4, 0.05, 0.1], "ci_low": [0.3, 0.03, 0.08],
                        "ci_high": [0.5, 0.07, 0.12]})
    fig = plots.plot_prediction_ece(ece)
    assert [t.get_text() for t in fig.get_axes()[0].get_yticklabels()] == ["formula", "(a)", "(b)"]
    assert plots.plot_prediction_ece(ece, backend="plotly").data[0].y == ("formula", "(a)", "(b)")
    # a long label is wrapped onto lines (the axes keep their width), every word kept
    from cen_lab.theory.miscalibration import CHECK_A

    fig = plots.plot_prediction_ece(ece.assign(predictor=["formula", CHECK_A, "(b)"]))
    label = fig.get_axes()[0].get_yticklabels()[1].get_text()
    assert "\n" in label and label.split() == CHECK_A.split()


def test_the_verdicts_carry_both_corrected_predictions(checked):
    runs, local = checked
    r = compare_predictions(runs, local)
    controlled = pd.DataFrame({"within_ci": [True] * 20, "inverseless_within_ci": [False] * 20, "abs_error": [0.01] * 20})
    calibration = theorem.calibration_summary(local)
    outcome = pd.DataFrame({"predicted": [0.5], "observed": [0.5], "ci_low": [0.4], "ci_high": [0.6]})
    corollary = pd.DataFrame(columns=["share_convs", "comparison", "n_seeds", "seeds_lower_with_exchange",
                                      "mean_delta", "ci_low", "ci_high", "verdict"])
    table = theorem.verdict_table(controlled, calibration, outcome, corollary, miscalibration=r)
    # (a) is fitted on the outcome's own quantity: labelled a check of the Gaussian form, never a prediction
    check, pred = r.ece["predictor"].iloc[1], r.ece["predictor"].iloc[2]
    assert check.startswith("(a) check, not a prediction") and pred.startswith("(b) training-time")
    assert table["claim"].str.contains("Corrected prediction (a)", regex=False).sum() == 0
    assert list(table.loc[table["claim"].str.startswith("Corrected prediction"), "claim"]) == [
        f"Corrected prediction {pred}"]
    assert list(table.loc[table["claim"].str.startswith("Gaussian form of g"), "claim"]) == [
        f"Gaussian form of g around a drift {check}"]
    rows = table[table["claim"].str.startswith(("Corrected prediction", "Gaussian form of g"))]
    assert rows["number"].tolist() == r.ece["ece"].iloc[1:].tolist()
    assert rows["measured"].str.contains("of the formula's ECE on the same rows").all()
