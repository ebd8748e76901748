"""Toy multimodal data: the scene generator, the dataset format, and the canonical datasets."""

from __future__ import annotations

import dataclasses

from ..config import DataConfig
from ..errors import DataFormatError
from .canonical import CANONICAL, canonical_path, load_canonical, write_canonical
from .io import MultimodalDataset, content_sha256, load_dataset, save_dataset
from .scenes import MODALITY_CHANNELS, TARGET_CHANNELS, class_names, generate_scenes

__all__ = [
    "CANONICAL",
    "MultimodalDataset",
    "canonical_path",
    "class_names",
    "content_sha256",
    "generate_scenes",
    "load_canonical",
    "load_data",
    "load_dataset",
    "save_dataset",
    "write_canonical",
]


def load_data(cfg: DataConfig) -> MultimodalDataset:
    """The dataset a ``DataConfig`` names, restricted to its modalities (see ``DataConfig.source``).

    With ``cfg.train_pool > 0`` the training split is that many fresh scenes from the source's generator
    (``cen_lab.data.pool``) and the validation split the source's. ``manifest["seen"]`` says what each split is:
    ``{"train": {...}, "val": {...}}``, each with its ``kind`` (``"split"`` of the source or ``"pool"``), its number
    of scenes and its hash or generator parameters; a trained run copies it into its manifest as ``data``.
    """
    ds = _load_source(cfg)
    n_val = int((ds.split == 1).sum())
    source = {"source": cfg.source, "sha256": ds.manifest.get("sha256"), "generator": ds.manifest.get("generator")}
    val = {"kind": "split", "scenes": n_val, **source}
    if cfg.train_pool:
        from .pool import load_pool, pool_dataset, pool_path, source_generator

        params = source_generator(cfg.source, cfg.scene)
        if params.image_size != ds.image_size[0] or params.task != ds.task:
            raise DataFormatError(f"data.train_pool: the source's generator makes {params.task!r} scenes of "
                                  f"{params.image_size} pixels, but {cfg.source} holds {ds.task!r} scenes of "
                                  f"{ds.image_size[0]}")
        pool = load_pool(params, cfg.train_pool, ds.modalities)
        ds = pool_dataset(ds, pool)
        train = {"kind": "pool", "scenes": cfg.train_pool, "sha256": pool.manifest.get("sha256"),
                         "generator": dataclasses.asdict(params), "cache": str(pool_path(params, cfg.train_pool))}
    else:
        train = {"kind": "split", "scenes": int((ds.split == 0).sum()), **source}
    return dataclasses.replace(ds, manifest={**ds.manifest, "seen": {"train": train, "val": val}})


def _load_source(cfg: DataConfig) -> MultimodalDataset:
    """The dataset ``cfg.source`` names, as it is (no pool)."""
    if cfg.source in CANONICAL:
        return load_canonical(cfg.source, cfg.modalities)
    if cfg.source == "generate":
        p = cfg.scene
        arrays = generate_scenes(p)
        made = {**MODALITY_CHANNELS, **TARGET_CHANNELS}
        unknown = [m for m in cfg.modalities if m not in made]
        if unknown:
            from ..errors import ConfigError

            raise ConfigError(f"data.modalities: the generator makes {list(made)}, not {unknown[0]!r}")
        manifest = {"task": p.task, "num_classes": p.num_classes, "generator": dataclasses.asdict(p)}
        inputs = {m: arrays[m].astype("float32") / 255.0 for m in cfg.modalities}
        return MultimodalDataset(
            tuple(cfg.modalities), inputs, arrays["labels"].astype("int64"), arrays["split"],
            p.task, p.num_classes, tuple(class_names(p.num_classes)), manifest,
        )
    return load_dataset(cfg.source, cfg.modalities)
