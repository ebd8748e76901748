"""cen-lab bench-regime: the per-run diagnosis, the branch-output check, the summary's goals, and the CLI (at
tiny size: the goals are measured by the benchmark itself, not asserted here)."""

import numpy as np
import pandas as pd
import pytest

import cen_lab
from cen_lab.cli import main
from cen_lab.config import COLLAPSE_TRAIN, ExperimentConfig
from cen_lab.experiments import regime_bench as rb
from cen_lab.theory.exchange_predictors import PREDICTORS


def test_the_collapse_preset_is_the_old_default_and_the_default_is_adam_with_a_cosine():
    old = ExperimentConfig.preset("collapse").train
    assert (old.optimizer, old.lr, old.momentum, old.lr_schedule, old.lam) == ("sgd", 0.05, 0.9, "constant", 5e-3)
    new = ExperimentConfig.preset("default").train
    assert (new.optimizer, new.lr, new.lr_schedule, new.lam) == ("adam", 5e-3, "cosine", 2e-3)
    assert ExperimentConfig.preset("default").override(COLLAPSE_TRAIN).train == old
    cfg = rb.regime_config("collapse", "bottleneck")
    assert cfg.log.grads and cfg.model.arch == "bottleneck" and cfg.name == "regime-collapse-bottleneck"


def test_the_benchmark_diagnoses_every_run_and_the_cli_writes_its_tables(tmp_path, capsys):
    table = rb.run_regime_benchmark(tmp_path, presets=["tiny"], seeds=[0, 1], archs=["plain"], n_jobs=1,
                                    progress=False)
    per_run = rb.per_run_regime(table)
    assert len(per_run) == 2 and set(per_run["seed"]) == {0, 1}
    assert (per_run["min_output_gap"] > 0).all()  # two branches with their own BNs and inputs differ
    assert {"score/rgb", "score/depth", "score/ensemble"} <= set(per_run.columns)
    run = cen_lab.load_run(per_run["path"].iloc[0])
    gaps = rb.branch_output_gaps(run)
    assert list(gaps) == [("rgb", "depth")] and gaps[("rgb", "depth")] == per_run["min_output_gap"].iloc[0]
    summary = rb.regime_summary(per_run)
    assert summary[["preset", "arch", "runs"]].values.tolist() == [["tiny", "plain", 2]]
    # the CLI reuses the runs (same names) and writes both tables
    assert main(["bench-regime", "--presets", "tiny", "--seeds", "2", "--arch", "plain", "--jobs", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "goal: importance >= 0.3" in out and "AUC formula" in out and (tmp_path / "regime_theorem.csv").exists()
    assert main(["bench-regime", "--presets", "tiny", "--local-batches", "-1", "--out", str(tmp_path / "no")]) == 2
    assert "--local-batches must be >= 0" in capsys.readouterr().err and not (tmp_path / "no").exists()
    predictors = pd.read_csv(tmp_path / "regime_predictors.csv")  # every predictor, the local check's included
    assert predictors["predictor"].tolist() == list(PREDICTORS.values()) and "(b) training features" in out
    assert pd.read_csv(tmp_path / "regime_runs.csv")["final"].tolist() == per_run["final"].tolist()


def _per_run(final, rho, rho_low, gap=1.0, settled=True):
    n = len(final)
    return pd.DataFrame({"preset": "p", "arch": "plain", "seed": range(n), "state": "importance-driven",
                         "settled": settled, "final": final, "rho": rho, "rho_low": rho_low,
                         "min_output_gap": gap, "score/rgb": 0.8, "score/depth": 0.7, "score/ensemble": 0.9,
                         "regime": "r"})


def test_the_summary_checks_each_goal_on_the_interval_over_seeds():
    good = rb.regime_summary(_per_run([0.2, 0.25, 0.22, 0.24, 0.21], [0.5, 0.45, 0.55, 0.5, 0.48], 0.35)).iloc[0]
    assert good["goal: portion in 5-50%"] and good["goal: importance >= 0.3"] and good["goal: no identical branches"]
    assert good["weakest branch score"] == pytest.approx(0.7) and good["final low"] < 0.22 < good["final high"]
    wide = rb.regime_summary(_per_run([0.05, 0.45, 0.02, 0.5, 0.3], [0.5] * 5, 0.35)).iloc[0]
    assert not wide["goal: portion in 5-50%"]  # the mean is inside, its interval is not
    weak = rb.regime_summary(_per_run([0.2] * 4 + [0.21], [0.2, 0.5, 0.3, 0.6, 0.25], 0.1)).iloc[0]
    assert not weak["goal: importance >= 0.3"] and np.isfinite(weak["spearman low"])
    same = rb.regime_summary(_per_run([0.2, 0.25, 0.22], [0.5, 0.45, 0.55], 0.35, gap=[1.0, 0.0, 1.0])).iloc[0]
    assert same["identical branch pairs"] == 1 and not same["goal: no identical branches"]
    moving = rb.regime_summary(_per_run([0.2, 0.25, 0.22], [0.5, 0.45, 0.55], 0.35, settled=[True, False, True]))
    assert not moving.iloc[0]["goal: portion in 5-50%"]  # a run that has not settled has no settled portion
