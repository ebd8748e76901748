"""Parallel sweeps over a grid of config overrides: joblib (loky processes) on one machine, Dask beyond it.

``sweep(base, grid={"train.lam": [...], "seed": range(16)}, out_dir=...)`` trains one run per grid point into
``out_dir/<name>``, where ``<name>`` is the base name plus the grid point. A run already complete there is
skipped, so a sweep resumes where it stopped; an incomplete one is resumed. A failing run is recorded with
its error and does not stop the others. With the loky and Dask backends each worker trains in a child process of
its own (started once and reused), so a run killed by a signal or by the out-of-memory killer is recorded as a
failed point with the cause while the others go on; running the sweep again resumes it. Each worker uses
``threads_per_worker`` torch threads (default 1):
for small networks, two single-threaded processes train about 1.8x as many steps per second as one process
with two threads. The serial, loky and Dask backends give the same runs.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .._util.atomic import atomic_path
from .._util.progress import progress_bar
from ..config import ExperimentConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "sweep", "grid_points", "run_name"]

BACKENDS = ("serial", "loky", "dask")


def grid_points(grid: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` as a list of override dicts, in key order."""
    keys = list(grid)
    values = [list(v) for v in grid.values()]
    for key, vals in zip(keys, values):
        if not vals:
            raise ConfigError(f"grid key {key!r} has no values")
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _fmt(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("/", "_").replace(" ", "").replace("(", "[").replace(")", "]")


def run_name(base: str, point: Mapping[str, Any]) -> str:
    """``<base>-<key>=<value>-...`` (dotted keys kept, so two keys never collide)."""
    return "-".join([base] + [f"{k}={_fmt(v)}" for k, v in point.items()])


class _Trainer(threading.local):
    """This worker thread's training process (``python -m cen_lab.experiments._sweep_point``), started on first use and
    kept for the next points, so that its start-up (about 3 s: imports, first-step set-up) is paid once per
    worker, not once per point."""

    proc: subprocess.Popen | None = None

    def run(self, config: dict[str, Any], path: str, threads: int,
            die_with_worker: bool = False) -> tuple[dict[str, Any] | None, int | None]:
        """The child's result, or ``(None, exit code)`` when it died on this point (it is then replaced).
        ``die_with_worker``: the child is killed when this process dies (Linux; for loky, whose tasks run in the
        worker's main thread: the signal follows the thread that started the child)."""
        if self.proc is None or self.proc.poll() is not None:
            cmd = [sys.executable, "-m", "cen_lab.experiments._sweep_point"] + (["--die-with-parent"] if die_with_worker else [])
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.proc.stdin.write(json.dumps({"config": config, "path": path, "threads": threads}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # a broken pipe: the child is gone
            line = ""
        if line:
            return json.loads(line), None
        code = self.proc.wait()
        self.proc = None
        return None, code


_TRAINER = _Trainer()


def _train_isolated(config: dict[str, Any], path: str, threads: int, die_with_worker: bool = False) -> dict[str, Any]:
    """Train one run in this worker's training process; never raises.

    A worker that trains in its own process dies with it when the OS kills the training (a signal, the
    out-of-memory killer), and joblib's loky executor then stops every worker. The training process dies
    alone: the worker records the point as failed with the cause, and a new training process takes the next one.
    """
    start = time.perf_counter()
    try:
        result, code = _TRAINER.run(config, path, threads, die_with_worker)
    except OSError as e:  # the child could not start at all
        result, code = {"status": "failed", "error": f"{type(e).__name__}: {e}"}, None
    seconds = time.perf_counter() - start
    if result is not None:
        return {**result, "seconds": seconds}
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        cause = " (also what the out-of-memory killer sends)" if sig == "SIGKILL" else ""
        error = f"the training process was killed by {sig}{cause}; run the sweep again to resume it"
    else:
        error = f"the training process exited with code {code} (its messages are in the worker's stderr)"
    return {"status": "failed", "error": error, "seconds": seconds}


def _train_one(config: dict[str, Any], path: str, threads: int) -> dict[str, Any]:
    """Train one run in the current process; never raises."""
    import torch

    from .training import train

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        run = train(ExperimentConfig.from_dict(config), path, resume=True, progress=False)
        status, error = run.status, None
    except Exception as e:  # recorded, so that one failing run does not stop the sweep
        status, error = "failed", f"{type(e).__name__}: {e}"
        log.debug("run %s failed:\n%s", path, traceback.format_exc())
    finally:
        torch.set_num_threads(previous)
    return {"status": status, "error": error, "seconds": time.perf_counter() - start}


def _run_parallel(todo: list, rows: list[dict[str, Any]], threads: int, loky: bool, bar) -> None:
    """Run ``todo`` through joblib's configured backend into ``rows``.

    A loky worker process that dies (killed by a signal or the out-of-memory killer; its training process dies
    with it) breaks loky's pool, which stops every worker. The points without a result are then run once more
    in a new pool, resuming what they wrote, and their ``note`` says so; if a worker dies again, they are
    recorded as failed with the cause. (A Dask worker that dies is restarted by its nanny, and Dask runs its
    task again by itself.)
    """
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    for attempt in (1, 2):
        results = Parallel(return_as="generator")(delayed(_train_isolated)(c, p, threads, loky) for _, c, p in todo)
        done = set()
        try:
            for (i, _, _), result in zip(todo, results):
                rows[i].update(result)
                done.add(i)
                bar.update(1)
            return
        except TerminatedWorkerError as e:
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            todo = [t for t in todo if t[0] not in done]
            log.warning("a sweep worker died (%s); %s %d unfinished runs", cause,
                        "running again" if attempt == 1 else "recording as failed", len(todo))
            for i, _, _ in todo:
                if attempt == 1:
                    rows[i]["note"] = f"its worker process died ({cause}); it was run again, resuming what it wrote"
                else:
                    rows[i].update(status="failed", error=f"its worker process died twice ({cause}); run the sweep "
                                                          "again to resume it", seconds=float("nan"))
                    bar.update(1)


def _already_complete(path: Path, cfg: ExperimentConfig) -> bool:
    from ..runs.reader import load_run

    if not (path / "manifest.json").is_file():
        return False
    try:
        run = load_run(path)
    except Exception:  # an unreadable folder is left to train(), which reports it
        return False
    return run.complete and run.config == cfg


def sweep(base: ExperimentConfig, grid: Mapping[str, Iterable[Any]], out_dir: str | Path, *, backend: str = "loky",
          n_jobs: int | None = None, threads_per_worker: int = 1, scheduler: Any = None,
          variants: Mapping[str, Mapping[str, Any]] | None = None, progress: bool = True) -> pd.DataFrame:
    """Train one run per point of ``grid`` in parallel; skip runs already complete in ``out_dir``.

    Parameters
    ----------
    base : ExperimentConfig
        The config every run starts from.
    grid : mapping of dotted key -> values
        E.g. ``{"train.lam": [1e-3, 1e-2], "seed": range(4)}``; runs are the cartesian product.
    out_dir : str or Path
        Parent folder of the run directories.
    backend : {"serial", "loky", "dask"}
        ``"serial"``: one after the other in this process; ``"loky"``: joblib worker processes;
        ``"dask"``: joblib's Dask backend on a ``dask.distributed`` cluster (see ``scheduler``).
    n_jobs : int, optional
        Parallel workers (default: 2 for loky; all of the cluster's for Dask).
    threads_per_worker : int
        torch threads in each worker (default 1).
    scheduler : str or dask.distributed.Client, optional
        For ``backend="dask"``: a Client, or a scheduler address to connect to (a client made here is closed
        again); default: the current default client.
    variants : mapping of str -> overrides, optional
        Named bundles of overrides (e.g. baselines) crossed with ``grid``; the run name then starts with
        ``<base>-<variant>`` and the table has a ``variant`` column.
    progress : bool
        A progress bar over runs.

    Returns
    -------
    pandas.DataFrame
        One row per run: ``variant`` (with ``variants``), the grid keys, ``name``, ``path``, ``status``
        (``complete``, ``skipped`` (already complete), ``incomplete`` or ``failed``), ``error``, ``seconds``,
        and ``note`` when a loky worker died and the run was run again. Also written to ``out_dir/sweep.parquet``.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if threads_per_worker < 1:
        raise ConfigError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = grid_points(grid)
    bundles = dict(variants) if variants is not None else {None: {}}
    rows, todo = [], []
    for (variant, overrides), point in itertools.product(bundles.items(), points):
        prefix = base.name if variant is None else f"{base.name}-{variant}"
        name = run_name(prefix, point)
        cfg = base.override({**overrides, **point, "name": name})  # validates every run before anything runs
        path = out / name
        row = {} if variant is None else {"variant": variant}
        row.update({**point, "name": name, "path": str(path)})
        if _already_complete(path, cfg):
            row.update(status="skipped", error=None, seconds=0.0)
        else:
            todo.append((len(rows), cfg.to_dict(), str(path)))
        rows.append(row)

    bar = progress_bar(total=len(todo), desc=f"sweep ({backend})", unit="run", disable=not progress)
    if backend == "serial" or not todo:
        results = (_train_one(c, p, threads_per_worker) for _, c, p in todo)
        for (i, _, _), result in zip(todo, results):
            rows[i].update(result)
            bar.update(1)
    else:
        from joblib import parallel_config

        client, own_client = None, False
        if backend == "dask":
            from dask.distributed import Client, default_client

            if scheduler is None:
                client = default_client()
            elif isinstance(scheduler, Client):
                client = scheduler
            else:
                client, own_client = Client(scheduler), True
        try:
            jobs = n_jobs or (2 if backend == "loky" else -1)
            extra = {"inner_max_num_threads": threads_per_worker} if backend == "loky" else {"client": client}
            with parallel_config(backend=backend, n_jobs=jobs, **extra):
                _run_parallel(todo, rows, threads_per_worker, backend == "loky", bar)
        finally:
            if own_client:
                client.close()
    bar.close()
    table = pd.DataFrame(rows)
    with atomic_path(out / "sweep.parquet") as tmp:
        table.astype({k: str for k in grid if table[k].map(type).nunique() > 1}).to_parquet(tmp, index=False)
    failed = table[table["status"] == "failed"]
    if len(failed):
        log.warning("%d of %d runs failed; see the 'error' column", len(failed), len(table))
    return table
