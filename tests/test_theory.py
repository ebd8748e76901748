import numpy as np
import pytest
import torch
from scipy import stats

from cen_lab import theory


def test_attraction_probability_values_and_limits():
    assert theory.attraction_probability(1.0, 1.0) == pytest.approx(0.682689, abs=1e-6)
    assert theory.attraction_probability(0.2, 0.1) == pytest.approx(2 * stats.norm.cdf(2.0) - 1)
    assert theory.attraction_probability(0.5, 0.0) == 1.0  # no gradient: always a local minimum
    assert theory.attraction_probability(0.0, 0.3) == 0.0  # no penalty: (almost) never
    assert theory.attraction_probability(0.0, 0.0) == 1.0  # dL/dgamma = 0 satisfies |0| <= 0
    assert isinstance(theory.attraction_probability(1.0, 2.0), float)


def test_attraction_probability_is_vectorised_over_arrays_and_tensors():
    lam = np.array([0.0, 0.1, 1.0])
    g = np.array([[1.0], [0.0]])
    out = theory.attraction_probability(lam, g)
    assert out.shape == (2, 3) and out[1].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(out[0], 2 * stats.norm.cdf(lam) - 1)
    t = theory.attraction_probability(torch.tensor([0.1, 1.0], dtype=torch.float32), torch.tensor([0.1, 0.0]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.tensor([0.682689, 1.0]))
    mixed = theory.attraction_probability(0.5, torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert mixed.dtype == torch.float64 and mixed.tolist() == pytest.approx([0.682689, 1.0], abs=1e-6)


@pytest.mark.parametrize("lam, g", [(-0.1, 1.0), (0.1, -1.0), (np.array([0.1, -0.1]), 1.0),
                                    (0.1, torch.tensor([-1.0])), (float("nan"), 1.0)])
def test_negative_or_nan_inputs_are_errors(lam, g):
    with pytest.raises(ValueError, match="must be >= 0"):
        theory.attraction_probability(lam, g)


def test_inverseless_variant_differs_away_from_one():
    assert theory.attraction_probability_inverseless(0.1, 10.0) == pytest.approx(2 * stats.norm.cdf(1.0) - 1)
    assert theory.attraction_probability(0.1, 10.0) == pytest.approx(2 * stats.norm.cdf(0.01) - 1)


def test_proportion_ci_matches_scipy():
    low, high = theory.proportion_ci([30, 0], [100, 0], level=0.99, method="exact")
    ci = stats.binomtest(30, 100).proportion_ci(0.99, method="exact")
    assert (low[0], high[0]) == pytest.approx((ci.low, ci.high)) and np.isnan(low[1])


def test_calibrated_predictor_has_small_ece_and_a_shuffled_one_does_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=100_000)
    y = rng.uniform(size=p.size) < p
    assert theory.expected_calibration_error(p, y) < 0.01
    shuffled = rng.permutation(p)
    assert theory.expected_calibration_error(shuffled, y) > 0.2
    assert theory.brier_score(p, y) < theory.brier_score(shuffled, y)
    assert theory.brier_score(p, y) == pytest.approx(1 / 6, abs=0.005)  # E[p(1-p)] for p ~ U(0, 1)


def test_reliability_table_exact_on_a_small_case():
    table = theory.reliability_table([0.05, 0.05, 0.95, 0.95], [0, 1, 1, 1], bins=10)
    assert table[["n", "mean_predicted", "observed"]].values.tolist() == [[2, 0.05, 0.5], [2, 0.95, 1.0]]
    assert (table["ci_low"] <= table["observed"]).all() and (table["observed"] <= table["ci_high"]).all()


@pytest.mark.parametrize("mode", ["gaussian", "batchnorm"])
def test_controlled_check_matches_the_formula_and_rejects_the_inverseless_variant(mode):
    df = theory.controlled_check(np.geomspace(0.05, 5, 8), trials=3000, mode=mode, seed=1)
    assert len(df) == 16 and set(df["grad_norm"]) == {0.05, 20.0}
    assert (~df["within_ci"]).sum() <= 1  # 99% intervals: at most one miss in 16
    assert df["abs_error"].max() < 0.04
    assert df["inverseless_within_ci"].mean() < 0.2  # clearly rejected


def test_dynamic_check_counts_exact_zeros_for_the_proximal_rule():
    df = theory.dynamic_check([0.2, 4.0], runs=500, steps=100, seed=0)
    prox = df[df["rule"] == "proximal"].set_index("ratio")
    assert prox.loc[4.0, "frequency"] > 0.95 and prox.loc[0.2, "frequency"] < prox.loc[0.2, "predicted_static"]
    assert (df.loc[df["rule"] == "proximal", "tol"] == 0).all() and (df.loc[df["rule"] == "subgradient", "tol"] > 0).all()
    with pytest.raises(ValueError, match="rule must be"):
        theory.dynamic_check([1.0], rules=["adam"])
