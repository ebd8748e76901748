"""The one writer of every run source: ``RunWriter`` buffers table rows and writes them as atomic Parquet parts,
with the manifest, the config and the checkpoints beside them (the layout is in ``cen_lab.runs.schema``)."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._util.atomic import atomic_path, atomic_write_json
from ..config import ExperimentConfig
from ..errors import ConfigError, RunExistsError, RunFormatError, option, said
from .checkpoints import _checkpoint_steps, checkpoint_path, load_checkpoint, save_checkpoint
from .schema import SCHEMA_VERSION, SOURCES, TABLES, _read_manifest, config_digest, validate_table

log = logging.getLogger(__name__)

__all__ = ["RunWriter"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
                f"pass {option('overwrite')} to replace it or choose another directory"
            )
        if not resume:
            raise RunExistsError(
                f"{path} already holds this run; pass {option('resume')} to continue or reuse it, "
                f"or {option('overwrite')} to start again"
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
                "ended_at": None, "last_step": 0, "checkpoints": [], "versions": _versions(), **manifest,
                "config_sha256": config_digest(settings)}
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
            raise RunExistsError(f"{path} holds a run trained by cen_lab.train; resume it with "
                                 + said("train(..., resume=True)", "cen-lab train --resume"))
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
    from .lock import LOCK_NAME

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

    from .._version import __version__

    return {"cen_lab": __version__, "torch": torch.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "python": platform.python_version()}


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
