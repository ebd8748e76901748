import pandas as pd
import pytest

import cen_lab
from cen_lab import ConfigError
from cen_lab.cli import main
from cen_lab.runs import TABLES
from cen_lab.experiments.sweeps import grid_points, run_name

GRID = {"train.lam": [0.001, 0.05], "seed": range(2)}


@pytest.fixture
def base():
    return cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 4, "log.every": 1})


def _logs(table):
    return {row.name: cen_lab.load_run(row.path) for row in table.itertuples()}


def _assert_same_runs(a, b):
    assert list(a) == list(b)
    for name in a:
        for t in TABLES:
            pd.testing.assert_frame_equal(getattr(a[name], t), getattr(b[name], t), check_exact=True)


def test_grid_points_and_names():
    points = grid_points(GRID)
    assert points == [{"train.lam": 0.001, "seed": 0}, {"train.lam": 0.001, "seed": 1},
                      {"train.lam": 0.05, "seed": 0}, {"train.lam": 0.05, "seed": 1}]
    assert run_name("tiny", points[0]) == "tiny-train.lam=0.001-seed=0"
    with pytest.raises(ConfigError, match="has no values"):
        grid_points({"seed": []})


def test_serial_and_loky_give_the_same_runs_and_resume_skips(base, tmp_path):
    serial = cen_lab.sweep(base, GRID, tmp_path / "serial", backend="serial", progress=False)
    loky = cen_lab.sweep(base, GRID, tmp_path / "loky", backend="loky", n_jobs=2, progress=False)
    assert serial["status"].tolist() == ["complete"] * 4 and loky["status"].tolist() == ["complete"] * 4
    _assert_same_runs(_logs(serial), _logs(loky))
    again = cen_lab.sweep(base, GRID, tmp_path / "loky", backend="loky", n_jobs=2, progress=False)
    assert again["status"].tolist() == ["skipped"] * 4
    assert pd.read_parquet(tmp_path / "loky" / "sweep.parquet")["status"].tolist() == ["skipped"] * 4


def test_dask_backend_on_a_local_cluster(base, tmp_path):
    from dask.distributed import Client, LocalCluster

    serial = cen_lab.sweep(base, GRID, tmp_path / "serial", backend="serial", progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dask = cen_lab.sweep(base, GRID, tmp_path / "dask", backend="dask", scheduler=client, progress=False)
    assert dask["status"].tolist() == ["complete"] * 4
    _assert_same_runs(_logs(serial), _logs(dask))


def test_a_failing_run_is_recorded_and_the_others_finish(base, tmp_path):
    grid = {"data.source": ["generate", str(tmp_path / "missing.npz")], "seed": [0]}
    table = cen_lab.sweep(base, grid, tmp_path / "s", backend="loky", n_jobs=2, progress=False)
    assert table["status"].tolist() == ["complete", "failed"]
    assert "DataFormatError" in table.loc[1, "error"] and "no such dataset file" in table.loc[1, "error"]


def test_bad_grid_is_rejected_before_anything_runs(base, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.lamda'"):
        cen_lab.sweep(base, {"train.lamda": [1.0]}, tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match="backend must be one of"):
        cen_lab.sweep(base, GRID, tmp_path / "s", backend="ray", progress=False)
    assert not list((tmp_path / "s").glob("tiny-*"))


def test_cli_sweep(tmp_path, capsys):
    rc = main(["sweep", "--preset", "tiny", "--set", "train.steps=2", "--grid", "train.lam=0.001,0.01",
               "--grid", "seed=0:2", "--out", str(tmp_path), "--backend", "serial", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("complete") == 4 and "tiny-train.lam=0.01-seed=1" in out
    assert main(["sweep", "--preset", "tiny", "--out", str(tmp_path)]) == 2


def test_variants_are_crossed_with_the_grid(base, tmp_path):
    variants = {"a": {"train.lam": 0.0}, "b": {"model.exchange": "none"}}
    table = cen_lab.sweep(base, {"seed": [0, 1]}, tmp_path, backend="serial", variants=variants, progress=False)
    assert table["variant"].tolist() == ["a", "a", "b", "b"]
    assert table["name"].tolist() == ["tiny-a-seed=0", "tiny-a-seed=1", "tiny-b-seed=0", "tiny-b-seed=1"]
    assert cen_lab.load_run(table["path"][2]).config.model.exchange == "none"


def test_an_interrupted_idle_training_process_ends_quietly():
    """A Jupyter kernel that shuts down interrupts its process group, sweep workers' training processes included:
    they end with status 130 and print no traceback into the notebook's log."""
    import json
    import signal
    import subprocess
    import sys
    import time

    # a job started in the background by a shell (make test under nohup, say) inherits SIGINT ignored, and so
    # would this process: give it the default disposition, as a kernel's process group has
    proc = subprocess.Popen([sys.executable, "-m", "cen_lab.experiments._sweep_point"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # one request it refuses at once: once its answer is back, the process waits, idle, for the next line
    proc.stdin.write(json.dumps({"config": {"no such key": 1}, "path": "unused", "threads": 1}) + "\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline())["status"] == "failed"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
