"""cen-lab bench-lambda and suggest-lambda at the tiny preset: the tables, the held-out rules, the CLI's output
and errors (the numbers carry no evidence at this size; the README's come from the full benchmark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cen_lab
from cen_lab.cli import main
from cen_lab.theory import lambda_bench as lb

CASE = {40: (24, (1e-3, 5e-3), (1,))}  # budget: (probe steps, held-out lambdas, held-out seeds)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("lambda")
    table = lb.run_lambda_benchmark(out, preset="tiny", archs=["plain"], cases=CASE, probe_lams=(5e-4, 2e-3),
                                    single_lam=2e-3, n_jobs=1, progress=False)
    return out, table


def test_the_benchmark_compares_held_out_runs_with_the_prediction(bench):
    out, table = bench
    assert len(table) == 2 and set(table["lam"]) == {1e-3, 5e-3} and set(table["seed"]) == {1}
    for row in table.itertuples():
        run = cen_lab.load_run(out / f"lambda-tiny-plain-T40-train.lam={row.lam:g}-seed=1")
        assert run.complete and row.actual == pytest.approx(lb.final_portion(run))
        assert row.abs_error == pytest.approx(abs(row.predicted - row.actual))
        assert row.single_abs_error == pytest.approx(abs(row.single - row.actual))
        assert row.in_interval == (row.low <= row.actual <= row.high)
    # 5e-3 lies beyond both probes: the prediction is the nearest probe's (the single one) alone
    beyond = table[table["lam"] == 5e-3].iloc[0]
    assert beyond["predicted"] == pytest.approx(beyond["single"])
    assert (out / "lambda_validation.csv").exists()
    probe = cen_lab.load_run(out / "probe-tiny-plain-T40-lam0.002-s0")
    assert probe.status == "incomplete" and probe.manifest["last_step"] == 24 and probe.config.train.steps == 40
    # a second call reuses every run: nothing is trained again
    again = lb.run_lambda_benchmark(out, preset="tiny", archs=["plain"], cases=CASE, probe_lams=(5e-4, 2e-3),
                                    single_lam=2e-3, n_jobs=1, progress=False)
    assert np.isnan(again["probe_seconds"]).all() and (again["full_seconds"] == 0).all()
    pd.testing.assert_series_equal(again["predicted"], table["predicted"], check_exact=True)


def test_the_summary_reports_errors_with_intervals_and_the_goal(bench):
    _, table = bench
    s = lb.lambda_summary(table).iloc[0]
    assert s["held-out runs"] == 2 and s["lambdas"] == "0.001, 0.005"
    assert s["mean abs error"] == pytest.approx(table["abs_error"].mean())
    assert s["theorem1 mean abs error"] == pytest.approx(table["theorem1_abs_error"].mean())
    assert s[f"goal: mean error <= {lb.GOAL}"] == (table["abs_error"].mean() <= lb.GOAL)
    assert s["probes' steps over the budget"] == pytest.approx(2 * 24 / 40)
    assert s["coverage"] == f"{int(table['in_interval'].sum())} of 2"


def test_held_out_means_held_out(tmp_path):
    with pytest.raises(ValueError, match="held-out lambdas too"):
        lb.run_lambda_benchmark(tmp_path, preset="tiny", archs=["plain"], cases={40: (24, (2e-3,), (1,))},
                                probe_lams=(2e-3,), single_lam=2e-3)
    with pytest.raises(ValueError, match="held-out seeds must differ"):
        lb.run_lambda_benchmark(tmp_path, preset="tiny", archs=["plain"], cases={40: (24, (1e-3,), (0,))})
    with pytest.raises(ValueError, match="shorter than the budget"):
        lb.run_lambda_benchmark(tmp_path, preset="tiny", archs=["plain"], cases={40: (40, (1e-3,), (1,))})


def test_suggest_lambda_trains_a_probe_and_prints_the_prediction(tmp_path, capsys):
    rc = main(["suggest-lambda", "--preset", "tiny", "--budget", "40", "--probe-steps", "24", "--lams",
               "1e-4,1e-3,1e-2", "--target", "0.2", "--runs-dir", str(tmp_path), "--out", str(tmp_path / "p.csv"),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "predicted exchange at step 40" in out and "closest to a portion of 0.2" in out
    assert "measured error on held-out lambdas is in the README" in out
    table = pd.read_csv(tmp_path / "p.csv")
    assert table["lam"].tolist() == [1e-4, 1e-3, 1e-2]
    # the probe is now there: it can be given as a directory, with others at other lambdas
    probe = tmp_path / "probe-tiny-plain-T40-lam0.002-s0"
    assert main(["suggest-lambda", str(probe), "--lams", "1e-3"]) == 0
    assert main(["suggest-lambda", "--preset", "tiny", "--budget", "40", "--probe-steps", "24", "--probe-lams",
                 "5e-4,2e-3", "--lams", "1e-3", "--runs-dir", str(tmp_path), "--no-progress"]) == 0
    assert "probe: 24 steps at lam 0.0005, 0.002" in capsys.readouterr().out
    assert main(["suggest-lambda", str(probe), str(tmp_path / "probe-tiny-plain-T40-lam0.0005-s0"), "--lams",
                 "1e-3"]) == 0
    assert "0.0005-0.002" in capsys.readouterr().out  # interpolated between the two probes


def test_suggest_lambda_errors_are_clear(tmp_path, capsys):
    assert main(["suggest-lambda", "--preset", "tiny", "--budget", "40", "--probe-steps", "40",
                 "--runs-dir", str(tmp_path)]) == 2
    assert "--probe-steps (40) must be less than the budget (40 steps: --budget's)" in capsys.readouterr().err
    # without --budget the budget is the preset's own (tiny: 12 steps), not the default's 600
    assert main(["suggest-lambda", "--preset", "tiny", "--runs-dir", str(tmp_path)]) == 2
    assert "--probe-steps (150) must be less than the budget (12 steps: the tiny preset's)" in capsys.readouterr().err
    assert main(["suggest-lambda", "--preset", "tiny", "--probe-steps", "6", "--lams", "1e-3", "--runs-dir",
                 str(tmp_path), "--no-progress"]) == 2  # a probe of a 12-step budget is too short to model...
    assert "probe-tiny-plain-T12-lam0.002-s0: the probe's window has 2 logged steps; the model needs 8" in \
        capsys.readouterr().err  # ...and it was trained for the preset's budget of 12 steps
    assert main(["suggest-lambda", "--preset", "tiny", "--budget", "40", "--probe-steps", "24", "--lams", "0,1e-3",
                 "--runs-dir", str(tmp_path), "--no-progress"]) == 2
    assert "lambdas must be positive" in capsys.readouterr().err
    assert main(["bench-lambda", "--budgets", "123", "--out", str(tmp_path)]) == 2
    assert "--budgets must be some of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench-lambda", "--arch", "resnet", "--out", str(tmp_path)])
    assert "unknown architecture 'resnet'" in capsys.readouterr().err
