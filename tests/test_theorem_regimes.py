"""Theorem 1 across training regimes: plain SGD (the theorem's) next to momentum 0.9, on both architectures."""

import pytest
import torch

from cen_lab import plots, theorem
from cen_lab.theory.regimes import compare_regimes, regime_label


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    torch.set_num_threads(1)
    runs_dir = tmp_path_factory.mktemp("regimes")
    return runs_dir, compare_regimes([0.5], [0, 1], runs_dir, preset="tiny", steps=6, checkpoints=2, n_batches=1,
                                     progress=False)


def test_every_regime_is_trained_in_its_own_runs_and_checked(comparison):
    runs_dir, c = comparison
    labels = ["plain, momentum 0.9", "plain, momentum 0", "bottleneck, momentum 0.9", "bottleneck, momentum 0",
              "plain, momentum 0.9, instance norm"]
    assert list(c.calibration["regime"]) == labels == [regime_label(a, m) for a in ("plain", "bottleneck")
                                                      for m in (0.9, 0.0)] + [regime_label("plain", 0.9, "instance")]
    assert list(c.calibration["norm"]) == ["batch"] * 4 + ["instance"]
    names = sorted(p.name.split("-train.lam")[0] for p in runs_dir.iterdir() if p.is_dir())
    # the default regime keeps the theorem notebook's run names (reused), the others are told apart
    assert sorted(set(names)) == ["theorem-tiny-proximal", "theorem-tiny-proximal-bottleneck",
                                  "theorem-tiny-proximal-bottleneck-momentum0", "theorem-tiny-proximal-instance",
                                  "theorem-tiny-proximal-momentum0"]
    assert list(c.calibration["optimiser"]) == ["SGD lr 0.05 momentum 0.9", "SGD lr 0.05 momentum 0"] * 2 + [
        "SGD lr 0.05 momentum 0.9"]
    assert "instance norm" in c.calibration["architecture"].iloc[-1]
    assert (c.local["norm_family"] == "instance").sum() > 0
    assert c.local["norm"].dtype.kind == "f" and (c.local["norm"] >= 0).all()  # the check's ||dL/dx'||, kept
    assert c.calibration["regime_text"].str.contains("preset tiny").all()
    assert c.calibration["ece"].between(0, 1).all() and (c.calibration["ece_low"] <= c.calibration["ece_high"]).all()
    assert set(c.local.groupby("regime")["layer"].unique().map(tuple)) == {("blocks.0.bn", "blocks.1.bn"),
                                                                          ("blocks.0.bn2", "blocks.1.bn2")}
    out = c.outcome
    assert len(out) == 5 and (out["inside"] == ((out["predicted"] >= out["ci_low"]) & (out["predicted"] <= out["ci_high"]))).all()
    assert set(c.summary()) == {"calibration", "outcome"} and len(c.summary()["outcome"]) == 5


def test_regime_figures_show_every_regime(comparison):
    _, c = comparison
    fig = plots.plot_regime_calibration(c.calibration)
    assert [t.get_text() for t in fig.get_axes()[0].get_yticklabels()] == list(c.calibration["regime"])
    assert [ax.get_title() for ax in fig.get_axes()][0] == "Calibration error (ECE)"
    fig = plots.plot_regime_outcome(c.outcome)
    assert [ax.get_title() for ax in fig.get_axes()] == list(c.calibration["regime"])
    assert len(plots.plot_regime_calibration(c.calibration, backend="plotly").data) == 3
    assert len(plots.plot_regime_outcome(c.outcome, backend="plotly").data) == 10  # two traces per regime


def test_the_verdicts_repeat_the_checks_for_every_regime(comparison):
    import pandas as pd

    _, c = comparison
    controlled = pd.DataFrame({"within_ci": [True] * 20, "inverseless_within_ci": [False] * 20, "abs_error": [0.01] * 20})
    calibration = {"ece": 0.4, "ece_ci": [0.35, 0.45], "brier": 0.3, "spearman": 0.8, "spearman_ci": [0.7, 0.9],
                   "normality": {"pvalue": 0.5, "std": 1.0, "mean": 0.0}}
    outcome = pd.DataFrame({"predicted": [0.5], "observed": [0.5], "ci_low": [0.4], "ci_high": [0.6]})
    corollary = pd.DataFrame(columns=["share_convs", "comparison", "n_seeds", "seeds_lower_with_exchange",
                                      "mean_delta", "ci_low", "ci_high", "verdict"])
    table = theorem.verdict_table(controlled, calibration, outcome, corollary, comparison=c)
    rows = table[table["claim"].str.contains("momentum")]
    assert len(rows) == 10
    plain_sgd = rows[rows["claim"] == "Theorem 1 in trained networks (plain, momentum 0)"].iloc[0]
    assert "SGD lr 0.05 momentum 0;" in plain_sgd["regime"] and plain_sgd["number"] == pytest.approx(
        c.calibration.set_index("regime").loc["plain, momentum 0", "ece"])


def test_the_bench_command_runs_every_regime_and_writes_its_tables(tmp_path, capsys):
    import pandas as pd

    from cen_lab.cli import main

    assert main(["bench-theorem-regimes", "--preset", "tiny", "--lams", "0.5", "--seeds", "1", "--steps", "6",
                 "--jobs", "1", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    calibration = pd.read_csv(tmp_path / "regime_calibration.csv")
    assert list(calibration["regime"]) == ["plain, momentum 0.9", "plain, momentum 0", "bottleneck, momentum 0.9",
                                           "bottleneck, momentum 0", "plain, momentum 0.9, instance norm"]
    assert "regime of bottleneck, momentum 0: preset tiny" in out and "smoke test" in out
    assert len(pd.read_csv(tmp_path / "regime_outcome.csv")) == 5


def test_a_regime_whose_runs_were_checked_reuses_those_rows(comparison, monkeypatch):
    from cen_lab.theory import regimes

    runs_dir, c = comparison
    known = c.local[c.local["regime"] == "plain, momentum 0.9"].drop(columns=["regime", "arch", "momentum",
                                                                                      "norm_family"])
    checked = []
    real = regimes.local_check_runs
    monkeypatch.setattr(regimes, "local_check_runs", lambda runs, **kw: checked.append(len(runs)) or real(runs, **kw))
    again = compare_regimes([0.5], [0, 1], runs_dir, preset="tiny", steps=6, checkpoints=2, n_batches=1,
                            progress=False, momentums=(0.9, 0.0), archs=("plain",), instance=(), local=known)
    assert checked == [2]  # momentum 0 was checked; momentum 0.9 took the given rows
    assert again.calibration.iloc[0]["ece"] == c.calibration.iloc[0]["ece"]
    assert again.calibration.iloc[1]["ece"] == c.calibration.iloc[1]["ece"]
    # rows with another number of minibatches are not the same check: checked again
    checked.clear()
    compare_regimes([0.5], [0, 1], runs_dir, preset="tiny", steps=6, checkpoints=2, n_batches=2, progress=False,
                    momentums=(0.9,), archs=("plain",), instance=(), local=known)
    assert checked == [2]
