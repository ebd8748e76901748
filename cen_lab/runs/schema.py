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
      forecasts/part-*.parquet  the exchange forecasts recorded while the run went (absent before 2026-12-08)
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

``manifest.json["config_sha256"]`` is the SHA-256 of ``config.json``'s content (``config_digest``: its JSON with
sorted keys and no spaces), written with it; ``load_run`` refuses a run whose ``config.json`` no longer matches it
(a damaged or edited file would otherwise read as another config, or as the defaults). Runs written before
2026-12-04 have no such key and load as before.
Optional manifest keys, absent where they do not apply: ``diverged`` (``{"step", "reason"}``,
``cen_lab.runs.divergence``), ``lam_per_step`` (the L1 weight per step) and ``reference_lamda`` (an observed or
imported run's reference-code lamda, counted once per output), ``bn_mode`` (``"train"``, ``"eval"`` or
``"mixed"``: how an observed run's BatchNorms ran at its logged steps) and ``grad_steps_skipped`` (steps whose
gradients a ``GradScaler`` found non-finite, not logged).
``manifest.json["train_seconds"]`` is the wall time of the training loop (summed over resumed parts), and
``forecast_seconds`` the part of it spent forecasting (the ``forecasts`` table). A trained
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
    ``mae/<x>`` (depth), ``f1/<x>`` (edges) or ``l1/<x>``, ``psnr/<x>`` and ``ssim/<x>`` (shade), ``<x>`` a branch or an
    ensemble (``cen_lab.network.tasks``).
grads
    step, layer, branch, modality, task, channel, dgamma (float32: dL/dgamma of the data loss at state ``s``, before the
    penalty and the update), dxprime_norm (float32: L2 norm of dL/dx' over batch and space, x' the BN output; for an
    InstanceNorm layer of dL/dx' centred over each sample's positions, Theorem 1's scale there: see
    ``cen_lab.network.hooks.record_bn_output_grad_norms``).
forecasts
    step (the logged state the forecast was made at), budget (the run's steps), now (portion of penalised gammas
    under the threshold at that step), predicted, low, high (the forecast portion at the budget's end and its
    interval), state (``collapsing``, ``partial`` or ``none``), step_90 (the step the portion would pass 90%; -1:
    not within the budget). Recorded by ``cen_lab.train`` every ``log.forecast_every`` steps, and by
    ``cen_lab.observe`` when it is given the schedule; the model is ``cen_lab.runs.forecast_model``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import ExperimentConfig
from ..errors import ConfigError, RunFormatError, said

__all__ = ["SCHEMA_VERSION", "READABLE_VERSIONS", "SOURCES", "TABLES", "validate_table", "config_digest"]

SCHEMA_VERSION = 3  # 3: manifest source, threshold, lam, penalised_rule, exchange, model_class (2 is migrated)
READABLE_VERSIONS = (2, 3)  # 2: branch and task columns, manifest branches/tasks (multitask); 1 is not read
SOURCES = ("trained", "observed", "imported")

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
    "forecasts": {"step": "int64", "budget": "int64", "now": "float64", "predicted": "float64", "low": "float64",
                  "high": "float64", "state": "str", "step_90": "int64"},
}
_MANIFEST_KEYS = ("schema_version", "status", "seed", "modalities", "tasks", "branches", "outputs", "last_step",
                  "total_steps", "source", "threshold", "lam", "penalised_rule", "exchange", "layers")


def config_digest(settings: Any) -> str:
    """SHA-256 of a run's config (``config.json`` parsed): of its JSON with sorted keys and no spaces, so that the
    digest does not depend on how the file was indented."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
            f"{list(READABLE_VERSIONS)}); another cen_lab wrote it. Delete {path} or train it again with "
            + said("train(..., overwrite=True)", "cen-lab train --overwrite") + "; notebooks and reports then retrain it"
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
