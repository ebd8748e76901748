"""Run directories: the written schema, the writer used during training, and ``load_run``.

Run directory layout (schema version 3)
---------------------------------------
::

    <run>/
      config.json            ExperimentConfig.to_dict() (trained runs), or the observer's settings (other sources)
      manifest.json          schema_version, source, versions, seed, times, status, last_step, data description
      gammas/part-*.parquet  one table per folder, written in parts (see below)
      exchange/part-*.parquet
      metrics/part-*.parquet
      grads/part-*.parquet   only when log.grads is on
      checkpoints/step-*.pt  periodic and final checkpoints (torch.save of plain dicts; load with weights_only)

Where a run comes from is ``manifest.json["source"]``: ``"trained"`` (``cen_lab.train``), ``"observed"``
(``cen_lab.observe`` on a model in its user's own training loop) or ``"imported"``
(``cen_lab.import_checkpoints``). Every source writes the same tables. The manifest of every source also
holds ``threshold`` (the exchange threshold of the ``exchange`` table), ``lam`` (the L1 weight, None when not
known), ``penalised_rule`` (which gammas carry the penalty: ``disjoint``, ``alternate-halves``, ``all``,
``none`` or ``mask``), ``exchange`` (the rule of the exchange map), ``layers`` (the BN layers' names, the
tables' ``layer`` values) and ``model_class``. Only trained runs have a checkpoint format of cen_lab's own and
an ``ExperimentConfig``; ``Run.config`` is None for the others. Schema 3 added these manifest keys; a
version-2 run (every one of them trained) is read by filling them in from its config (``_migrate``).

``manifest.json["train_seconds"]`` is the wall time of the training loop (summed over resumed parts). A trained
run also records ``lam_per_step``, the L1 weight of one training step: ``lam``, times the number of outputs when
``train.l1_per_output`` adds the penalty once per output as the reference code does (``Run.lam_per_step``).
``manifest.json["status"]`` is ``"incomplete"`` while training (and after a kill), ``"complete"`` after the
last step, ``"failed"`` after an error (with ``error``). Tables are flushed in parts at every checkpoint:
``part-<K>.parquet`` holds rows with ``step < K`` not in earlier parts, so ``pandas.read_parquet(<run>/gammas)``
also reads a table. Every file is written atomically. Resuming from the checkpoint at step K drops parts
numbered above K (rows logged after that checkpoint), so a resumed run logs exactly what an uninterrupted
one does.

Tables (long format, one row per observation)
---------------------------------------------
``step`` counts completed optimizer updates; state ``s`` is the model after ``s`` updates.

Branches. The BN layers have one row of gammas per *branch*: ``manifest["branches"]`` lists them, each with
its ``name``, ``modality`` (index into ``manifest["modalities"]``) and ``task`` (index into
``manifest["tasks"]``). With one task the branches are the modalities (branch = modality, task = 0, name =
the modality's); with T tasks branch ``b = modality * T + task`` and its name is ``<task>/<modality>``.
``manifest["exchange_between"]`` says which branches exchange (``cen_lab.exchange.BranchGrid``).

gammas
    step (int64), epoch (int64), layer (str: dotted module name, e.g. ``blocks.0.bn``), branch (int32, index
    into ``manifest["branches"]``), modality (int32), task (int32) of that branch, channel (int32),
    gamma (float32), beta (float32), penalised (bool: carries the L1 penalty). Logged at state ``s`` every
    ``log.every`` steps and at the end.
exchange
    step, layer, branch, modality, task, channel, exchanged (bool: replaced in the forward pass at that
    state), source (int32: the branch the channel's value comes from; itself when kept; -1 = a mean of
    several branches, see ``cen_lab.exchange.donor_matrix``).
metrics
    step, epoch, split (str: ``train`` or ``val``), name (str), value (float64); ``<branch>`` below is one of
    ``manifest["outputs"]`` (the modalities, or ``fused`` when the streams merge; ``<task>/<modality>`` with
    several tasks) and ``<ensemble>`` one of ``manifest["ensembles"]`` (``ensemble``, or ``<task>/ensemble``).
    ``train`` rows are measured on the minibatch of the update that starts at state ``s``: ``loss/<branch>``,
    ``loss/<ensemble>``, ``loss/total`` (data loss: task-weighted sum of the branch and ensemble losses),
    ``penalty`` (lam * sum|gamma| over penalised gammas), ``alpha/<branch>`` (softmax weight),
    ``sparsity/below_threshold`` (portion of penalised gammas with |gamma| < threshold, the number the
    reference code prints), ``exchange/ratio``. ``val`` rows, on the whole validation split every
    ``log.eval_every`` steps: ``loss/<x>`` and ``miou/<x>`` (segmentation), ``accuracy/<x>`` (classification),
    ``mae/<x>`` (depth) or ``f1/<x>`` (edges), ``<x>`` a branch or an ensemble (``cen_lab.tasks``).
grads
    step, layer, branch, modality, task, channel, dgamma (float32: dL/dgamma of the data loss at state ``s``, before the
    penalty and the update), dxprime_norm (float32: L2 norm of dL/dx' over batch and space, x' the BN output).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ._io import atomic_path, atomic_write_bytes, atomic_write_json
from .config import ExperimentConfig
from .errors import ConfigError, RunExistsError, RunFormatError

log = logging.getLogger(__name__)

__all__ = ["SCHEMA_VERSION", "SOURCES", "TABLES", "Run", "RunWriter", "load_run", "validate_table", "load_checkpoint"]

SCHEMA_VERSION = 3  # 3: manifest source, threshold, lam, penalised_rule, exchange, model_class (2 is migrated)
READABLE_VERSIONS = (2, 3)  # 2: branch and task columns, manifest branches/tasks (multitask); 1 is not read
SOURCES = ("trained", "observed", "imported")
CHECKPOINT_FORMAT = "cen_lab.checkpoint"

_BRANCH = {"branch": "int32", "modality": "int32", "task": "int32"}
# table -> column -> dtype ("str" for strings)
TABLES: dict[str, dict[str, str]] = {
    "gammas": {"step": "int64", "epoch": "int64", "layer": "str", **_BRANCH, "channel": "int32",
               "gamma": "float32", "beta": "float32", "penalised": "bool"},
    "exchange": {"step": "int64", "layer": "str", **_BRANCH, "channel": "int32", "exchanged": "bool",
                 "source": "int32"},
    "metrics": {"step": "int64", "epoch": "int64", "split": "str", "name": "str", "value": "float64"},
    "grads": {"step": "int64", "layer": "str", **_BRANCH, "channel": "int32", "dgamma": "float32",
              "dxprime_norm": "float32"},
}
_MANIFEST_KEYS = ("schema_version", "status", "seed", "modalities", "tasks", "branches", "outputs", "last_step",
                  "total_steps", "source", "threshold", "lam", "penalised_rule", "exchange", "layers")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def validate_table(name: str, df: pd.DataFrame, where: str = "") -> pd.DataFrame:
    """Check ``df`` against the schema of table ``name``; return it with columns in schema order.

    Raises ``RunFormatError`` naming the table (and ``where``) and the offending column.
    """
    spec = TABLES[name]
    where = where or name
    for col, dtype in spec.items():
        if col not in df.columns:
            raise RunFormatError(f"{where}: missing column {col!r} (table {name!r} needs {list(spec)})")
        series = df[col]
        ok = pd.api.types.is_string_dtype(series) if dtype == "str" else str(series.dtype) == dtype
        if not ok:
            raise RunFormatError(f"{where}: column {col!r} has dtype {series.dtype}, expected {dtype}")
    return df[list(spec)]


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=("str" if t == "str" else t)) for c, t in TABLES[name].items()})


# -- checkpoints ---------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: ExperimentConfig) -> None:
    """Atomically save a plain-dict checkpoint that ``torch.load(..., weights_only=True)`` can read."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": json.dumps(config.to_dict(), sort_keys=True),
    }
    buf = io.BytesIO()  # serialised in memory first: a failed write is then an OSError of the file (RunWriteError)
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and check that cen_lab wrote it."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise RunFormatError(f"{path}: no such checkpoint") from None
    except Exception as e:  # corrupt zip, pickle with forbidden globals, truncated file ...
        raise RunFormatError(f"{path}: not a readable cen_lab checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunFormatError(f"{path}: not a cen_lab checkpoint (no format marker {CHECKPOINT_FORMAT!r})")
    missing = [k for k in ("step", "model", "optimizer", "config") if k not in ckpt]
    if missing:
        raise RunFormatError(f"{path}: checkpoint lacks key {missing[0]!r}")
    return ckpt


def _checkpoint_steps(run_dir: Path) -> list[int]:  # sorted steps of the checkpoints in run_dir
    steps = []
    for p in (run_dir / "checkpoints").glob("step-*.pt"):
        try:
            steps.append(int(p.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return sorted(steps)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:09d}.pt"


# -- writing --------------------------------------------------------------------------------------------------


class RunWriter:
    """Buffers table rows and writes them as atomic Parquet parts; the one writer of every run source.

    ``RunWriter.create`` starts a trained run and ``RunWriter.reopen`` resumes one at its checkpoint;
    ``RunWriter.start`` and ``RunWriter.reopen_observed`` do the same for runs without an ``ExperimentConfig``
    (``cen_lab.observe``, ``cen_lab.import_checkpoints``).
    """

    def __init__(self, path: Path, settings: dict[str, Any], manifest: dict[str, Any],
                 config: ExperimentConfig | None = None):
        self.path, self.settings, self.manifest, self.config = path, settings, manifest, config
        self._rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}

    # construction

    @classmethod
    def prepare(cls, path: str | Path, config: ExperimentConfig, *, resume: bool, overwrite: bool) -> tuple[str, Path]:
        """Decide what to do with ``path``: returns ("new" | "resume" | "done", path), or raises.

        Refuses (``RunExistsError``) a directory that holds a different run, or any run when neither
        ``resume`` nor ``overwrite`` is given; never deletes a folder that is not a cen_lab run.
        """
        path = Path(path)
        if _prepare_dir(path, overwrite) == "new":
            return "new", path
        try:
            existing = ExperimentConfig.from_json(str(path / "config.json"))
        except (ConfigError, OSError) as e:
            raise RunFormatError(f"{path / 'config.json'}: cannot read the existing run's config ({e})") from None
        if existing != config:
            diff = _config_diff(existing.to_dict(), config.to_dict())
            raise RunExistsError(
                f"{path} already holds a different run (differs in {', '.join(diff[:5])}); "
                "pass overwrite=True (--overwrite) to replace it or choose another directory"
            )
        if not resume:
            raise RunExistsError(
                f"{path} already holds this run; pass resume=True (--resume) to continue or reuse it, "
                "or overwrite=True (--overwrite) to start again"
            )
        manifest = _read_manifest(path)
        return ("done" if manifest["status"] == "complete" else "resume"), path

    @classmethod
    def create(cls, path: Path, config: ExperimentConfig, info: dict[str, Any]) -> "RunWriter":
        """Start a trained run: ``config.json`` is the config, the manifest ``info`` plus the run's settings."""
        manifest = {"source": "trained", "name": config.name, "seed": config.seed, "total_steps": config.train.steps,
                    "threshold": config.model.threshold, "lam": config.train.lam, "l1_rule": config.train.l1_rule,
                    "penalised_rule": config.train.sparsity, "exchange": config.model.exchange,
                    "model_class": "cen_lab.models.CENNet", **info}
        return cls.start(path, config.to_dict(), manifest, config)

    @classmethod
    def start(cls, path: Path, settings: dict[str, Any], manifest: dict[str, Any],
              config: ExperimentConfig | None = None) -> "RunWriter":
        """Start a run of any source in ``path``: write ``settings`` as ``config.json`` and the manifest (the
        common keys, status ``incomplete``, then ``manifest``); ``manifest["source"]`` must be in ``SOURCES``."""
        if manifest.get("source") not in SOURCES:
            raise ValueError(f"manifest source must be one of {list(SOURCES)}, got {manifest.get('source')!r}")
        path.mkdir(parents=True, exist_ok=True)
        full = {"schema_version": SCHEMA_VERSION, "status": "incomplete", "error": None, "started_at": _now(),
                "ended_at": None, "last_step": 0, "checkpoints": [], "versions": _versions(), **manifest}
        atomic_write_json(path / "config.json", settings)
        w = cls(path, settings, full, config)
        w.write_manifest()
        return w

    @classmethod
    def reopen(cls, path: Path, config: ExperimentConfig) -> tuple["RunWriter", dict[str, Any] | None]:
        """Reopen an incomplete run at its latest checkpoint: returns the writer and that checkpoint
        (None when no checkpoint was written yet, in which case training restarts from step 0)."""
        manifest = _read_manifest(path)
        steps = _checkpoint_steps(path)
        ckpt = load_checkpoint(checkpoint_path(path, steps[-1])) if steps else None
        start = ckpt["step"] if ckpt else 0
        manifest.update(status="incomplete", error=None, ended_at=None, last_step=start,
                        checkpoints=[s for s in manifest.get("checkpoints", []) if s <= start],
                        versions=_versions(), schema_version=SCHEMA_VERSION)
        w = cls(path, config.to_dict(), manifest, config)
        w.truncate(start)  # drop rows logged after that checkpoint
        w.write_manifest()
        return w, ckpt

    @classmethod
    def reopen_observed(cls, path: Path) -> "RunWriter":
        """Reopen a run that is not a trained one (an observed run) to continue it: status ``incomplete``,
        everything on disk kept; ``truncate`` drops rows from a step on."""
        manifest = _read_manifest(path)
        if manifest["source"] == "trained":
            raise RunExistsError(f"{path} holds a run trained by cen_lab.train; resume it with train(..., resume=True)")
        settings = json.loads((path / "config.json").read_text(encoding="utf-8"))
        manifest.update(status="incomplete", error=None, ended_at=None, versions=_versions())
        w = cls(path, settings, manifest)
        w.write_manifest()
        return w

    # rows

    def add(self, table: str, **columns: Any) -> None:
        """Buffer rows: array columns of equal length; scalar columns are broadcast."""
        self._rows[table].append(columns)

    def pending(self) -> int:
        """Number of buffered, unwritten row groups."""
        return sum(len(chunks) for chunks in self._rows.values())

    def flush(self, upper: int) -> None:
        """Write buffered rows (all with ``step < upper``) as ``<table>/part-<upper>.parquet``."""
        for table, chunks in self._rows.items():
            if not chunks:
                continue
            df = _frame(table, chunks)
            if (df["step"] >= upper).any():
                raise AssertionError(f"{table}: rows at step >= {upper} flushed into part {upper}")  # a bug here
            with atomic_path(self.path / table / f"part-{upper:09d}.parquet") as tmp:
                df.to_parquet(tmp, index=False)
            chunks.clear()

    def last_steps(self) -> dict[str, int | None]:
        """table -> the largest step written to disk (None for an empty table); reads the step column only."""
        out: dict[str, int | None] = {}
        for table in TABLES:
            top = None
            for part in sorted((self.path / table).glob("part-*.parquet")):
                steps = pd.read_parquet(part, columns=["step"])["step"]
                if len(steps):
                    top = int(steps.max()) if top is None else max(top, int(steps.max()))
            out[table] = top
        return out

    def truncate(self, step: int) -> int:
        """Drop every row at ``step`` or later, on disk and in the buffer; returns the number of rows dropped.

        Parts hold rows ``step < K`` (``part-<K>``): a part entirely at or after ``step`` is removed, a part that
        straddles it is rewritten (atomically) as ``part-<step>`` with its earlier rows.
        """
        dropped = 0
        for table in TABLES:
            for part in sorted((self.path / table).glob("part-*.parquet")):
                upper = int(part.stem.split("-")[1])
                if upper <= step:
                    continue  # every row is below step
                df = pd.read_parquet(part)
                keep = df[df["step"] < step]
                dropped += len(df) - len(keep)
                if len(keep):
                    with atomic_path(self.path / table / f"part-{step:09d}.parquet") as tmp:
                        keep.to_parquet(tmp, index=False)
                part.unlink()
            kept = []
            for chunk in self._rows[table]:
                s = chunk["step"]
                if int(np.max(s)) < step:
                    kept.append(chunk)
                else:
                    dropped += max((len(v) for v in chunk.values() if isinstance(v, np.ndarray)), default=1)
            self._rows[table] = kept
        return dropped

    def checkpoint(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Flush rows up to ``step``, save the checkpoint of state ``step``, then record it in the manifest."""
        self.flush(upper=step)
        save_checkpoint(checkpoint_path(self.path, step), step, model, optimizer, self.config)
        self.manifest["checkpoints"] = sorted(set(self.manifest["checkpoints"]) | {step})
        self.manifest["last_step"] = step
        self.write_manifest()

    def finish(self, status: str, step: int, error: str | None = None) -> None:
        """Record the final status; rows still buffered are flushed first. When ending a failed run, a flush
        that fails too (a full disk) does not keep the manifest from saying so."""
        try:
            self.flush(upper=step + 1)
        except OSError as e:
            if status != "failed":
                raise
            log.error("could not write the buffered rows of %s (%s); the rows after the last checkpoint are lost, "
                      "resume recomputes them", self.path, e)
        self.manifest.update(status=status, error=error, ended_at=_now())
        if status == "complete":
            self.manifest["last_step"] = step
        self.write_manifest()

    def write_manifest(self) -> None:
        atomic_write_json(self.path / "manifest.json", self.manifest)


def _prepare_dir(path: Path, overwrite: bool) -> str:
    """``"new"`` for a missing or empty directory (or a run replaced by ``overwrite``), ``"existing"`` for a run
    directory; refuses a file or a folder that is not a run, and never deletes one."""
    from ._lock import LOCK_NAME

    if path.exists() and not path.is_dir():
        raise RunExistsError(f"{path} exists and is not a directory")
    content = [p for p in path.iterdir() if p.name != LOCK_NAME] if path.exists() else []  # the writer's own lock
    if not content:
        return "new"
    is_run = (path / "manifest.json").is_file() or (path / "config.json").is_file()
    if not is_run:
        raise RunExistsError(f"{path} holds files that are not a cen_lab run; choose an empty or new directory")
    if overwrite:
        log.info("overwriting run in %s", path)
        for p in content:  # everything but the lock, which the writer holds
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return "new"
    return "existing"


def _frame(table: str, chunks: list[dict[str, Any]]) -> pd.DataFrame:
    spec = TABLES[table]
    cols: dict[str, list[np.ndarray]] = {c: [] for c in spec}
    for chunk in chunks:
        n = max((len(v) for v in chunk.values() if isinstance(v, np.ndarray)), default=1)
        for c, dtype in spec.items():
            v = chunk[c]
            if isinstance(v, np.ndarray):
                cols[c].append(v if dtype == "str" else v.astype(dtype, copy=False))
            else:
                cols[c].append(np.full(n, v, dtype=object if dtype == "str" else dtype))
    df = pd.DataFrame({c: np.concatenate(v) for c, v in cols.items()})
    for c, dtype in spec.items():
        if dtype == "str":
            df[c] = df[c].astype("str")
    return validate_table(table, df, where=f"writing {table}")


def _versions() -> dict[str, str]:
    import platform

    from . import __version__

    return {"cen_lab": __version__, "torch": torch.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "python": platform.python_version()}


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# -- reading --------------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise RunFormatError(f"{path}: not a cen_lab run directory (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise RunFormatError(f"{mpath}: expected a JSON object")
    version = manifest.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise RunFormatError(
            f"{mpath}: schema_version {version!r} is not supported (this cen_lab reads "
            f"{list(READABLE_VERSIONS)}); another cen_lab wrote it. Delete {path} or train it again with overwrite=True "
            "(cen-lab train --overwrite); notebooks and reports then retrain it"
        )
    if version == 2:
        manifest = _migrate(path, manifest)
    missing = [k for k in _MANIFEST_KEYS if k not in manifest]
    if missing:
        raise RunFormatError(f"{mpath}: missing key {missing[0]!r}")
    if manifest["source"] not in SOURCES:
        raise RunFormatError(f"{mpath}: source {manifest['source']!r} is not one of {list(SOURCES)}")
    return manifest


def _migrate(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """A schema-2 manifest (always a trained run) in schema 3: the settings it lacks come from its config."""
    try:
        cfg = ExperimentConfig.from_json(str(path / "config.json"))
    except (ConfigError, OSError) as e:
        raise RunFormatError(f"{path / 'config.json'}: cannot read the config of this schema-2 run ({e})") from None
    filled = {"source": "trained", "threshold": cfg.model.threshold, "lam": cfg.train.lam,
              "l1_rule": cfg.train.l1_rule, "penalised_rule": cfg.train.sparsity, "exchange": cfg.model.exchange,
              "model_class": "cen_lab.models.CENNet"}
    return {**filled, **manifest, "schema_version": SCHEMA_VERSION, "migrated_from": 2}


def _read_table(path: Path, table: str) -> pd.DataFrame:
    parts = sorted((path / table).glob("part-*.parquet"))
    if not parts:
        return _empty(table)
    frames = []
    for part in parts:
        try:
            df = pd.read_parquet(part)
        except Exception as e:  # pyarrow.ArrowInvalid and friends
            raise RunFormatError(f"{part}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        frames.append(validate_table(table, df, where=str(part)))
    df = pd.concat(frames, ignore_index=True)
    return df


@dataclass
class Run:
    """A run directory loaded into memory.

    Attributes
    ----------
    path : Path
    config : ExperimentConfig or None
        The config of a trained run; None for observed and imported runs (see ``settings``).
    manifest : dict
    gammas, exchange, metrics, grads : pandas.DataFrame
        Long-format tables (schema in this module's docstring); ``grads`` is empty unless gradients were logged.
    settings : dict
        ``config.json`` as written: ``config.to_dict()`` for a trained run, the observer's or importer's settings
        otherwise.
    """

    path: Path
    config: ExperimentConfig | None
    manifest: dict[str, Any]
    gammas: pd.DataFrame
    exchange: pd.DataFrame
    metrics: pd.DataFrame
    grads: pd.DataFrame
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def source(self) -> str:
        """``"trained"`` (``cen_lab.train``), ``"observed"`` (``cen_lab.observe``) or ``"imported"``
        (``cen_lab.import_checkpoints``)."""
        return self.manifest["source"]

    @property
    def threshold(self) -> float:
        """The exchange threshold the ``exchange`` table was computed with."""
        return float(self.manifest["threshold"])

    @property
    def lam(self) -> float | None:
        """The L1 weight on the penalised gammas, or None when the run does not record it."""
        lam = self.manifest["lam"]
        return None if lam is None else float(lam)

    @property
    def lam_per_step(self) -> float | None:
        """The L1 weight of one training step: ``lam``, times the number of outputs for a run trained with
        ``train.l1_per_output`` (the reference's count). What Theorem 1's ``|dL/dgamma| <= lam`` compares with."""
        per_step = self.manifest.get("lam_per_step")
        return self.lam if per_step is None else float(per_step)

    @property
    def status(self) -> str:
        """``"complete"``, ``"incomplete"`` (still training, stopped early, or killed) or ``"failed"``."""
        return self.manifest["status"]

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def modalities(self) -> list[str]:
        """Names of the streams that the tables' ``modality`` column indexes (the data modalities, or one
        concatenated stream for early fusion)."""
        return list(self.manifest["modalities"])

    @property
    def branches(self) -> list[str]:
        """Names of the branches that the tables' ``branch`` column indexes (the modalities with one task,
        ``<task>/<modality>`` with several)."""
        return [b["name"] for b in self.manifest["branches"]]

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest["tasks"])

    @property
    def outputs(self) -> list[str]:
        """Names of the prediction branches in the metrics (the modalities, or ``fused`` once streams merge;
        ``<task>/<name>`` with several tasks)."""
        return list(self.manifest["outputs"])

    @property
    def checkpoint_steps(self) -> list[int]:
        return _checkpoint_steps(self.path)

    def checkpoint(self, step: int | None = None, map_location: str = "cpu") -> dict[str, Any]:
        """The checkpoint at ``step`` (default: the latest)."""
        steps = self.checkpoint_steps
        if not steps:
            raise RunFormatError(f"{self.path}: the run has no checkpoint yet")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"no checkpoint at step {step}; available: {steps}")
        return load_checkpoint(checkpoint_path(self.path, step), map_location)

    def load_model(self, step: int | None = None, device: str = "cpu") -> torch.nn.Module:
        """Rebuild the model and load the checkpoint at ``step`` (default: the latest), in eval mode."""
        from .models import build_model

        if self.config is None:
            raise RunFormatError(f"{self.path}: a run of source {self.source!r} has no cen_lab model to rebuild; "
                                 "load its weights into your own model")
        m = self.manifest
        model = build_model(self.config.model, len(m["modalities"]), m["in_channels"], m["num_classes"],
                            m["tasks"], self.config.train.sparsity)
        ckpt = self.checkpoint(step, map_location=device)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise RunFormatError(f"{self.path}: checkpoint does not match the run's model ({e})") from None
        return model.to(device).eval()

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, status={self.status!r}, steps={self.manifest['last_step']}/"
                f"{self.manifest['total_steps']}, modalities={self.modalities})")


def load_run(path: str | Path) -> Run:
    """Load a run directory of any source (``cen_lab.train``, ``cen_lab.observe``, ``cen_lab.import_checkpoints``);
    validates the manifest, config and every table.

    An incomplete run (killed or stopped early) loads too: ``run.status`` says so and the tables hold what was
    flushed at its checkpoints.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    cpath = path / "config.json"
    try:
        settings = json.loads(cpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFormatError(f"{path}: no config.json") from None
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{cpath}: not valid JSON ({e})") from None
    config = None
    if manifest["source"] == "trained":
        try:
            config = ExperimentConfig.from_dict(settings)
        except ConfigError as e:
            raise RunFormatError(f"{cpath}: {e}") from None
    tables = {t: _read_table(path, t) for t in TABLES}
    return Run(path, config, manifest, **tables, settings=settings)
