"""Reading a run directory: ``load_run`` validates the manifest, the config and every table (the schema is in
``cen_lab.runs.schema``) and returns a ``Run``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..config import ExperimentConfig
from ..errors import ConfigError, RunFormatError
from .checkpoints import _checkpoint_steps, checkpoint_path, load_checkpoint
from .schema import TABLES, _empty, _read_manifest, config_digest, validate_table

__all__ = ["Run", "load_run"]


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
    gammas, exchange, metrics, grads, forecasts : pandas.DataFrame
        Long-format tables (schema in ``cen_lab.runs.schema``); ``grads`` is empty unless gradients were logged,
        ``forecasts`` unless forecasts were recorded.
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
    forecasts: pd.DataFrame = dataclasses.field(default_factory=lambda: _empty("forecasts"))

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
    def diverged(self) -> dict[str, Any] | None:
        """``{"step", "reason"}`` when the run's loss grew by orders of magnitude or a gamma blew up
        (``cen_lab.runs.divergence``), else None."""
        return self.manifest.get("diverged")

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

    def load_model(self, step: int | None = None, device: str = "cpu", exchange: str | None = None) -> torch.nn.Module:
        """Rebuild the model and load the checkpoint at ``step`` (default: the latest), in eval mode.

        ``exchange`` replaces the run's ``model.exchange`` (``"none"``: the same weights with the exchange switched
        off, the setting of Theorem 1; the exchange has no parameters, so any mode loads the checkpoint)."""
        import dataclasses

        from ..network.architectures import build_model
        from ..network.patchgan import attach_discriminator

        if self.config is None:
            raise RunFormatError(f"{self.path}: a run of source {self.source!r} has no cen_lab model to rebuild; "
                                 "load its weights into your own model")
        m = self.manifest
        spec = self.config.model if exchange is None else dataclasses.replace(self.config.model, exchange=exchange)
        model = build_model(spec, len(m["modalities"]), m["in_channels"], m["num_classes"],
                            m["tasks"], self.config.train.sparsity)
        attach_discriminator(model, m["in_channels"], self.config.train.gan_weight)  # with train.gan_weight > 0
        ckpt = self.checkpoint(step, map_location=device)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise RunFormatError(f"{self.path}: checkpoint does not match the run's model ({e})") from None
        return model.to(device).eval()

    def __repr__(self) -> str:
        m = self.manifest
        if self.source == "trained":  # cen_lab.train logs the state after its last update: step == total_steps
            steps = f"steps={m['last_step']}/{m['total_steps']}"
        else:  # a user's loop logs before each update: steps 0..N-1 of an N-step loop, the last state unlogged
            steps = f"last_step={m['last_step']}, total_steps={m['total_steps']}"
        return f"Run({str(self.path)!r}, {self.source}, status={self.status!r}, {steps}, modalities={self.modalities})"


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
    expected = manifest.get("config_sha256")
    if expected is not None and config_digest(settings) != expected:
        raise RunFormatError(f"{cpath} does not match the config this run was written with (its SHA-256 is not "
                             f"manifest.json's config_sha256): the file was damaged or edited. Restore it, or train "
                             "the run again; it is not read as another config")
    tables = {t: _read_table(path, t) for t in TABLES}
    return Run(path, config, manifest, **tables, settings=settings)
