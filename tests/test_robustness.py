"""Runs that survive people and machines: one writer per run, and writes that fail (a full disk)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cen_lab
from cen_lab.runs.lock import LOCK_NAME, RunLock
from cen_lab.errors import RunLockedError, RunWriteError
from cen_lab.zoo import ReferenceStyleCEN

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*args):
    return [sys.executable, "-m", "cen_lab", *args]


def test_a_second_writer_is_refused_while_the_first_runs_and_resumes_after_it_is_killed(tmp_path):
    out = tmp_path / "run"
    common = ["--preset", "tiny", "--set", "train.steps=400", "--set", "train.ckpt_every=20", "--out", str(out),
              "--no-progress"]
    first = subprocess.Popen(_cli("train", *common), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("step-*.pt")):  # the first is training
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # run files (not the lock, nor the first writer's temporary files, which come and go as it writes)
        before = sorted(p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
        second = subprocess.run(_cli("train", *common, "--resume"), env=ENV, capture_output=True, text=True)
        assert second.returncode == 2
        assert f"{out} is being written by another process (process {first.pid} on" in second.stderr
        assert "nothing was written" in second.stderr
        # readers never need the lock
        assert cen_lab.load_run(out).status == "incomplete"
        with pytest.raises(RunLockedError, match=f"process {first.pid}"):  # in-process writers are refused too
            cen_lab.train(cen_lab.ExperimentConfig.preset("tiny"), out, resume=True, progress=False)
        after_names = {p.name for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
        assert set(before) <= after_names  # the refused writers removed nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the OS released the killed writer's lock: resume continues the run to the end
    resumed = subprocess.run(_cli("train", *common, "--resume"), env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert cen_lab.load_run(out).complete


def test_observers_and_imports_take_the_lock_and_release_it(tmp_path):
    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none")
    with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
        cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none", resume=True)
    torch.save(model.state_dict(), tmp_path / "epoch-0.pth")
    with pytest.raises(RunLockedError):
        cen_lab.import_checkpoints(tmp_path / "epoch-0.pth", tmp_path / "run", penalised="none", overwrite=True,
                                   progress=False)
    obs.log(0)
    obs.close()
    with RunLock(tmp_path / "run") as lock:  # released at close
        assert lock.held
    again = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none", resume=True)
    again.log(1)
    again.close()
    assert sorted(cen_lab.load_run(tmp_path / "run").gammas["step"].unique()) == [0, 1]
    with RunLock(tmp_path / "run") as lock:  # the resumed observer released <run>/.lock at close too
        assert lock.held and (tmp_path / "run" / LOCK_NAME).is_file()


_LIMITED = """
import resource, signal, sys
import cen_lab
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write then fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
cfg = cen_lab.ExperimentConfig.preset("tiny").override({"log.grads": True})
try:
    cen_lab.train(cfg, sys.argv[1], progress=False)
except cen_lab.CenLabError as e:
    print(type(e).__name__, e, file=sys.stderr)
    sys.exit(3)
"""


def test_a_failed_write_ends_the_run_clearly_and_resume_completes_it(tmp_path, tiny_run):
    out = tmp_path / "run"
    script = tmp_path / "limited.py"
    script.write_text(_LIMITED)
    # 12 kB: the Parquet parts (under 8 kB) and the manifest fit, a checkpoint (16 kB) does not
    proc = subprocess.run([sys.executable, str(script), str(out), "12000"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("RunWriteError")]
    assert len(lines) == 1 and "could not write" in lines[0] and "step-000000006.pt" in lines[0]
    assert "File too large" in lines[0]
    run = cen_lab.load_run(out)  # every part written before is readable
    assert run.status == "failed" and "step-000000006.pt" in run.manifest["error"]
    assert sorted(run.gammas["step"].unique()) == [0, 2, 4] and not run.checkpoint_steps
    assert not [p for p in out.rglob(".*tmp-*")]  # no half-written file left behind
    # space is back: resume completes the run, with the tables of an uninterrupted run
    resumed = cen_lab.train(tiny_run.config, out, resume=True, progress=False)
    assert resumed.complete
    for table in ("gammas", "exchange", "metrics", "grads"):
        pd.testing.assert_frame_equal(getattr(resumed, table), getattr(tiny_run, table), check_exact=True)


def test_write_errors_name_the_file(tmp_path):
    from cen_lab._util.atomic import atomic_write_bytes

    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "blocker").write_text("a file, not a folder")
    with pytest.raises(RunWriteError, match=r"could not write .*blocker.*x\.json"):
        atomic_write_bytes(folder / "blocker" / "x.json", b"{}")


def _kill_when_training(run_dir: Path, stop, killed: list) -> None:
    """SIGKILL the process training ``run_dir`` (the holder of its lock) once it has written a checkpoint."""
    deadline = time.monotonic() + 180
    while not stop.is_set() and time.monotonic() < deadline:
        if list((run_dir / "checkpoints").glob("step-*.pt")):
            try:
                pid = json.loads((run_dir / ".lock").read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (OSError, ValueError, KeyError):
                continue
            return
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["loky", "dask"])
def test_a_killed_sweep_worker_is_a_failed_point_and_a_rerun_completes_it(tmp_path, backend):
    import threading

    from cen_lab.runs import TABLES
    from cen_lab.experiments.sweeps import run_name

    base = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 400, "train.ckpt_every": 20})
    grid = {"seed": [0, 1, 2]}
    out = tmp_path / "sweep"
    victim = out / run_name(base.name, {"seed": 1})
    stack = contextlib.ExitStack()
    extra = {}
    if backend == "dask":
        from dask.distributed import Client, LocalCluster

        cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                   dashboard_address=None))
        extra["scheduler"] = stack.enter_context(Client(cluster))
    with stack:
        stop, killed = threading.Event(), []
        killer = threading.Thread(target=_kill_when_training, args=(victim, stop, killed))
        killer.start()
        try:
            table = cen_lab.sweep(base, grid, out, backend=backend, n_jobs=2, progress=False, **extra)
        finally:
            stop.set()
            killer.join()
        assert killed, "the training of seed 1 was never seen running"
        status = dict(zip(table["seed"], table["status"]))
        assert status == {0: "complete", 1: "failed", 2: "complete"}
        error = table.loc[table["seed"] == 1, "error"].item()
        assert "killed by SIGKILL" in error and "out-of-memory" in error
        assert cen_lab.load_run(victim).status == "incomplete"  # what it wrote before is readable
        again = cen_lab.sweep(base, grid, out, backend=backend, n_jobs=2, progress=False, **extra)
    assert dict(zip(again["seed"], again["status"])) == {0: "skipped", 1: "complete", 2: "skipped"}
    # the resumed point equals an uninterrupted run of it
    reference = cen_lab.train(base.override({"seed": 1, "name": victim.name}), tmp_path / "reference", progress=False)
    resumed = cen_lab.load_run(victim)
    for t in TABLES:
        pd.testing.assert_frame_equal(getattr(resumed, t), getattr(reference, t), check_exact=True)


def test_an_observer_whose_writes_fail_ends_failed_and_resumes(tmp_path, monkeypatch):
    import errno

    torch.manual_seed(0)
    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none", flush_every=1)
    obs.log(0)

    def disk_full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    with pytest.raises(RunWriteError, match=r"could not write .*gammas.*part-.*No space left on device"):
        obs.log(1)
    with pytest.raises(RunWriteError, match="No space left"):
        obs.close()
    monkeypatch.undo()
    run = cen_lab.load_run(tmp_path / "run")
    assert run.status == "failed" and "No space left" in run.manifest["error"]
    assert list(run.gammas["step"].unique()) == [0] and not list((tmp_path / "run").rglob(".*tmp-*"))
    again = cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none", resume=True)  # lock released
    again.log(1)
    again.close()
    run = cen_lab.load_run(tmp_path / "run")
    assert run.status == "complete" and sorted(run.gammas["step"].unique()) == [0, 1]


def _parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent of {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to find the worker process")
def test_a_killed_loky_worker_process_does_not_stop_the_sweep(tmp_path):
    """Killing the loky worker itself (not its training process) breaks loky's pool; the unfinished points run
    again in a new pool and resume, and the table says so."""
    import threading

    from cen_lab.runs import TABLES
    from cen_lab.experiments.sweeps import run_name

    base = cen_lab.ExperimentConfig.preset("tiny").override({"train.steps": 400, "train.ckpt_every": 20})
    out = tmp_path / "sweep"
    victim = out / run_name(base.name, {"seed": 1})
    killed = []

    def kill_worker():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if list((victim / "checkpoints").glob("step-*.pt")):
                with contextlib.suppress(OSError, ValueError, KeyError, AssertionError):  # not started yet
                    child = json.loads((victim / ".lock").read_text())["pid"]
                    worker = _parent_of(child)
                    os.kill(worker, signal.SIGKILL)
                    killed.append(worker)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_worker)
    killer.start()
    table = cen_lab.sweep(base, {"seed": [0, 1, 2]}, out, backend="loky", n_jobs=2, progress=False)
    killer.join()
    assert killed
    assert table["status"].tolist() == ["complete"] * 3
    note = table.loc[table["seed"] == 1, "note"].item()
    assert "worker process died" in note and "run again" in note
    reference = cen_lab.train(base.override({"seed": 1, "name": victim.name}), tmp_path / "reference", progress=False)
    resumed = cen_lab.load_run(victim)
    for t in TABLES:
        pd.testing.assert_frame_equal(getattr(resumed, t), getattr(reference, t), check_exact=True)


def test_a_diverging_run_says_so_at_the_time_and_in_its_manifest(tmp_path, tiny_run):
    from cen_lab.errors import RunDivergedWarning

    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"train.lr": 1e4})
    with pytest.warns(RunDivergedWarning, match=r"the run diverged at step \d+: a gamma reached .* > 1000"):
        run = cen_lab.train(cfg, tmp_path / "lr1e4", progress=False)
    assert run.status == "complete"  # what it logged is kept; the manifest says what happened
    reloaded = cen_lab.load_run(tmp_path / "lr1e4")
    assert reloaded.diverged["step"] == run.diverged["step"] and "gamma reached" in reloaded.diverged["reason"]
    assert tiny_run.diverged is None


def test_an_observed_loss_that_grows_by_orders_of_magnitude_is_flagged_once(tmp_path):
    import warnings

    from cen_lab.errors import RunDivergedWarning
    from cen_lab.zoo import ReferenceStyleCEN

    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="none") as obs:
            for step, loss in enumerate([2.0, 50.0, 1999.0, 2001.0, 4e18]):
                obs.log(step, metrics={"loss/total": loss})
    said = [w for w in caught if issubclass(w.category, RunDivergedWarning)]
    assert len(said) == 1 and "loss/total reached 2e+03, 1e+03 times its first logged value 2" in str(said[0].message)
    assert cen_lab.load_run(tmp_path / "run").diverged == {"step": 3, "reason": str(said[0].message).split(": ", 2)[2]
                                                           .removesuffix(". Lower the learning rate or lam")}


def test_the_lock_names_its_holder_even_in_the_instant_after_it_was_taken(tmp_path):
    import fcntl
    import threading

    from cen_lab.errors import RunLockedError
    from cen_lab.runs.lock import LOCK_NAME, RunLock

    (tmp_path / "run").mkdir()
    fd = os.open(tmp_path / "run" / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, json.dumps({"pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname()}).encode(), 0)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, its record not written yet (a dead writer's is there)

    def write_record_late():
        time.sleep(0.3)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": "here", "since": "now", "command": "test"}).encode(), 0)

    late = threading.Thread(target=write_record_late)
    late.start()
    try:
        with pytest.raises(RunLockedError, match=rf"being written by another process \(process {os.getpid()} on here"):
            RunLock(tmp_path / "run").acquire()
    finally:
        late.join()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    with RunLock(tmp_path / "run"):
        pass
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # released: no stale record names a past holder


def test_a_nan_or_infinite_gamma_in_a_live_observed_model_is_a_divergence(tmp_path):
    from cen_lab.errors import RunDivergedWarning
    from cen_lab.zoo import ReferenceStyleCEN

    model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 6))
    bn = model.layers[0][0].bn2.bn_1
    with cen_lab.observe(model, tmp_path / "run", layers="*.bn2", penalised="alternate-halves") as obs:
        obs.log(0)
        with torch.no_grad():
            bn.weight[2] = float("nan")
            bn.weight[3] = float("inf")
        with pytest.warns(RunDivergedWarning, match=r"diverged at step 1: 1 NaN and 1 infinite gamma\(s\) of 20"):
            obs.log(1)
    run = cen_lab.load_run(tmp_path / "run")
    assert run.diverged == {"step": 1, "reason": "1 NaN and 1 infinite gamma(s) of 20"}
    g = run.gammas.query("step == 1 and layer == 'layers.0.0.bn2' and branch == 1")["gamma"].to_numpy()
    assert np.isnan(g[2]) and np.isposinf(g[3])  # the logged values say what they were
