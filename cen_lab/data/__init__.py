"""Toy multimodal data: the scene generator, the dataset format, and the canonical datasets."""

from __future__ import annotations

import dataclasses

from ..config import DataConfig
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
    """The dataset a ``DataConfig`` names, restricted to its modalities (see ``DataConfig.source``)."""
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
        inputs = {m: arrays[m].astype("float32") / 255.0 for m in made}
        ds = MultimodalDataset(
            tuple(made), inputs, arrays["labels"].astype("int64"), arrays["split"],
            p.task, p.num_classes, tuple(class_names(p.num_classes)), manifest,
        )
        return ds.select(cfg.modalities)
    return load_dataset(cfg.source, cfg.modalities)
