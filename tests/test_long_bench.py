"""The long-regime benchmark's machinery at tiny size: its variants, the cascade read from the log, the summary,
reading what is complete without training, and its errors."""

import numpy as np
import pytest

import cen_lab
from cen_lab.cli import main
from cen_lab.experiments import long_bench as lb


@pytest.fixture(scope="module")
def tiny_overrides():
    return lb.size_overrides("tiny")


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("long")
    table = lb.run_long_benchmark(out, data=("pool", "finite", "default"), archs=("plain",), lams=(0.05,),
                                  seeds=range(2), n_jobs=1, progress=False, overrides=tiny_overrides)
    return out, table


def test_every_variant_is_trained_on_its_own_data(bench):
    out, table = bench
    assert table["status"].tolist() == ["complete"] * 6
    assert table.groupby("preset").size().to_dict() == {"default": 2, "long finite lam 0.05": 2, "long lam 0.05": 2}
    for row in table.itertuples():
        run = cen_lab.load_run(row.path)
        kind = run.manifest["data"]["train"]["kind"]
        assert kind == ("pool" if row.data == "pool" else "split"), row.name
        assert run.config.train.lam == row.lam
    assert (out / "long_sweep.parquet").is_file()


def test_the_cascade_is_the_logged_portion_at_each_fraction(bench):
    _, table = bench
    run = cen_lab.load_run(table["path"].iloc[0])
    m = run.metrics
    curve = m[(m["split"] == "train") & (m["name"] == "sparsity/below_threshold")].set_index("step")["value"]
    # 16 steps logged every 2: 10% is step 1.6 -> the row of step 0; 40% is 6.4 -> step 6; 80% is 12.8 -> step 12
    assert lb.cascade(run, (0.1, 0.4, 0.8)) == {"at 10%": curve[0], "at 40%": curve[6], "at 80%": curve[12]}
    assert lb.cascade(run, (0.0001,))["at 0%"] == curve[0]  # step 0 is at or before any fraction


def test_per_run_rows_and_the_summary_over_seeds(bench):
    _, table = bench
    per_run = lb.long_per_run(table)
    assert len(per_run) == 6 and {"at 10%", "at 80%", "score/weakest branch", "data", "lam"} <= set(per_run)
    row = per_run.iloc[0]
    assert row["score/weakest branch"] == min(row["score/rgb"], row["score/depth"])
    summary = lb.long_summary(per_run)
    assert summary["runs"].tolist() == [2, 2, 2]
    sub = per_run[per_run["preset"] == summary["variant"].iloc[0]]
    assert summary["final portion"].iloc[0] == pytest.approx(sub["final"].mean())
    assert summary["at 40%"].iloc[0] == pytest.approx(sub["at 40%"].mean())


def test_reading_without_training_lists_what_is_complete(bench, tiny_overrides, tmp_path):
    out, table = bench
    again = lb.run_long_benchmark(out, data=("pool", "finite", "default"), archs=("plain",), lams=(0.05,),
                                  seeds=range(3), progress=False, train=False, overrides=tiny_overrides)
    assert again.groupby("seed")["status"].agg(set).to_dict() == {0: {"skipped"}, 1: {"skipped"}, 2: {"missing"}}
    assert not list(tmp_path.iterdir())  # nothing written anywhere by reading
    empty = lb.run_long_benchmark(tmp_path, data=("pool",), archs=("plain",), progress=False, train=False)
    assert set(empty["status"]) == {"missing"} and not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [({"data": ("pool", "huge")}, "data variants must be"),
                                             ({"archs": ("unet",)}, "archs must be"),
                                             ({"lams": (0.0,)}, "lams must be positive")])
def test_bad_benchmark_settings_are_refused_before_anything_runs(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lb.run_long_benchmark(tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_the_command_line_says_what_is_missing(tmp_path, capsys):
    assert main(["bench-long", "--existing", "--out", str(tmp_path), "--no-progress"]) == 1
    assert "no complete run of these variants" in capsys.readouterr().err
    assert main(["bench-long", "--data", "pool,huge", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "data variants must be some of ['pool', 'finite', 'default']" in capsys.readouterr().err
    assert main(["bench-long", "--local-batches", "-1", "--out", str(tmp_path)]) == 2
    assert main(["bench-long", "--boot", "0", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


def test_the_command_line_writes_its_tables(bench, tmp_path, monkeypatch, capsys):
    _, table = bench
    monkeypatch.setattr(lb, "run_long_benchmark", lambda *a, **k: table.assign(status="skipped"))
    assert main(["bench-long", "--existing", "--local-batches", "1", "--boot", "20", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Per variant and architecture" in printed and "long finite lam 0.05" in printed
    for name in ("long_runs.csv", "long_summary.csv", "long_theorem.csv", "long_predictors.csv"):
        assert (tmp_path / name).is_file()


def test_tiny_runs_say_they_carry_no_evidence_and_are_labelled_by_variant(bench):
    _, table = bench
    per_run = lb.long_per_run(table)
    assert per_run["regime"].str.endswith("(evidence: none: the tiny preset is a smoke test)").all()
    runs = lb.runs_by_variant(table)
    assert list(runs) == ["long lam 0.05, seed 0", "long lam 0.05, seed 1", "long finite lam 0.05, seed 0",
                          "long finite lam 0.05, seed 1", "default, seed 0", "default, seed 1"]
    with pytest.raises(ValueError, match="size must be 'long' or 'tiny'"):
        lb.size_overrides("huge")


def test_a_predictor_that_cannot_be_scored_keeps_the_runs_tables(bench, tmp_path, monkeypatch, capsys):
    import cen_lab.theory.exchange_predictors as ep

    _, table = bench

    def no_checkpoint(*a, **k):
        raise ValueError("run x: no checkpoint at or before step 360, the end of the window before the first crossing")

    monkeypatch.setattr(lb, "run_long_benchmark", lambda *a, **k: table.assign(status="skipped"))
    monkeypatch.setattr(ep, "theorem_on_exchange", no_checkpoint)
    assert main(["bench-long", "--existing", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at or before step 360" in err and "--local-batches 0" in err
    assert (tmp_path / "long_runs.csv").is_file() and (tmp_path / "long_summary.csv").is_file()
    assert not (tmp_path / "long_predictors.csv").exists()
