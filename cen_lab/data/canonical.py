"""The canonical datasets committed in ``data/`` and how they are regenerated.

``cen-lab data regenerate`` (or ``make data``) rewrites them from the parameters below; the result is
byte-identical to the committed files (a test checks the content hash).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import CANONICAL_SCENES, SceneParams

log = logging.getLogger(__name__)

__all__ = ["CANONICAL", "DATA_DIR", "canonical_path", "write_canonical", "load_canonical"]

DATA_DIR = Path(__file__).resolve().parents[2] / "data"

CANONICAL: dict[str, SceneParams] = CANONICAL_SCENES  # name -> generator parameters (kept in cen_lab.config)


def canonical_path(name: str, data_dir: str | Path | None = None) -> Path:
    """Path of the ``.npz`` file of canonical dataset ``name``."""
    if name not in CANONICAL:
        raise KeyError(f"unknown canonical dataset {name!r}; choose one of {sorted(CANONICAL)}")
    return Path(data_dir or DATA_DIR) / f"{name}.npz"


def write_canonical(name: str, data_dir: str | Path | None = None) -> Path:
    """Generate canonical dataset ``name`` and write it (arrays and manifest) into ``data_dir``."""
    from .io import save_dataset
    from .scenes import MODALITY_CHANNELS, TARGET_CHANNELS, class_names, generate_scenes

    import dataclasses

    params = CANONICAL[name]
    arrays = generate_scenes(params)
    manifest = {
        "name": name,
        "task": params.task,
        "num_classes": params.num_classes,
        "class_names": class_names(params.num_classes),
        "modalities": list(MODALITY_CHANNELS) + list(TARGET_CHANNELS),
        "channels": {**MODALITY_CHANNELS, **TARGET_CHANNELS},
        "n_train": params.n_train,
        "n_val": params.n_val,
        "image_size": params.image_size,
        "generator": dataclasses.asdict(params),
    }
    return save_dataset(canonical_path(name, data_dir), arrays, manifest)


def load_canonical(name: str, modalities=None, data_dir: str | Path | None = None):
    """Load canonical dataset ``name`` from ``data/``; regenerate it in memory when the file is absent
    (e.g. a non-editable install that does not ship ``data/``)."""
    from .io import load_dataset

    path = canonical_path(name, data_dir)
    if path.is_file():
        return load_dataset(path, modalities)
    log.warning("%s not found; regenerating canonical dataset %r in memory", path, name)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_dataset(write_canonical(name, tmp), modalities)
