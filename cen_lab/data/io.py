"""The multimodal dataset format, its writer and its validating loader.

Format (``format = "cen_lab.multimodal"``, ``format_version = 1``)
------------------------------------------------------------------
A dataset is an ``.npz`` file with a JSON manifest beside it (same stem, ``.json``):

``<stem>.npz``
    - one array per modality, named by the modality (for example ``rgb``, ``depth``), shape
      ``[N, C_m, H, W]``; dtype ``uint8`` (intensity = value / 255) or a float dtype (used as is; must be finite);
    - ``labels``: integer ``[N, H, W]`` (segmentation) or ``[N]`` (classification), values in
      ``0 .. num_classes - 1``;
    - ``split``: ``uint8`` ``[N]``, 0 = train, 1 = validation.

``<stem>.json`` (optional for users' own files; required keys when present: ``format``, ``format_version``)
    ``task`` ("seg" or "cls"), ``num_classes``, ``class_names``, ``modalities`` (name -> channels),
    ``n_train``, ``n_val``, ``image_size``, ``generator`` (the ``SceneParams`` used, or null), and
    ``sha256``, a hash of the arrays' contents (names, dtypes, shapes and bytes) that the loader verifies.

Without a manifest the task is read from the label shape and ``num_classes`` from the largest label.
Files written by ``save_dataset`` are byte-identical for identical arrays (fixed zip timestamps).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .._util.atomic import atomic_write_bytes
from ..errors import DataFormatError

__all__ = ["MultimodalDataset", "save_dataset", "load_dataset", "content_sha256", "FORMAT", "FORMAT_VERSION"]

FORMAT = "cen_lab.multimodal"
FORMAT_VERSION = 1
_RESERVED = ("labels", "split")


def content_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Hash of the arrays' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class MultimodalDataset:
    """A validated dataset held in memory.

    Attributes
    ----------
    inputs : dict of str -> numpy.ndarray
        float32 ``[N, C_m, H, W]`` per modality, in ``modalities`` order, intensities in [0, 1] for uint8 files.
    labels : numpy.ndarray
        int64 ``[N, H, W]`` (``task="seg"``) or ``[N]`` (``task="cls"``).
    split : numpy.ndarray
        uint8 ``[N]``, 0 = train, 1 = validation.
    """

    modalities: tuple[str, ...]
    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray
    task: str
    num_classes: int
    class_names: tuple[str, ...]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> dict[str, int]:
        return {m: int(self.inputs[m].shape[1]) for m in self.modalities}

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.inputs[self.modalities[0]].shape[2:])  # type: ignore[return-value]

    def select(self, modalities: Sequence[str]) -> "MultimodalDataset":
        """The same data restricted to (and ordered by) ``modalities``."""
        missing = [m for m in modalities if m not in self.inputs]
        if missing:
            raise DataFormatError(f"dataset has no modality {missing[0]!r}; it has {list(self.modalities)}")
        return MultimodalDataset(
            tuple(modalities), {m: self.inputs[m] for m in modalities}, self.labels, self.split,
            self.task, self.num_classes, self.class_names, self.manifest,
        )

    def stacked(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs of one split stacked over modalities, zero-padded to the widest modality.

        Returns ``x`` float32 ``[M, N, C_max, H, W]`` and ``y`` int64 labels of that split. Padding lets the
        first convolution be shared by all modalities (the reference code feeds depth as 3-channel HHA).
        """
        rows = self.split == split
        c_max = max(self.channels.values())
        first = self.inputs[self.modalities[0]]
        x = np.zeros((len(self.modalities), int(rows.sum()), c_max, *first.shape[2:]), np.float32)
        for m, name in enumerate(self.modalities):
            a = self.inputs[name][rows]
            x[m, :, : a.shape[1]] = a
        return x, self.labels[rows]

    def concatenated(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs of one split concatenated along channels (early fusion): ``x`` float32
        ``[1, N, sum C_m, H, W]`` and ``y``."""
        rows = self.split == split
        x = np.concatenate([self.inputs[m][rows] for m in self.modalities], axis=1)[None]
        return np.ascontiguousarray(x, dtype=np.float32), self.labels[rows]


def save_dataset(path: str | Path, arrays: Mapping[str, np.ndarray], manifest: Mapping[str, Any]) -> Path:
    """Write ``arrays`` to ``path`` (.npz) and ``manifest`` plus the content hash to ``path.with_suffix('.json')``.

    Both files are written atomically; identical inputs give byte-identical files.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise DataFormatError(f"{path}: dataset files end in .npz")
    _validate_arrays(dict(arrays), str(path), manifest)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    atomic_write_bytes(path, buf.getvalue())
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "sha256": content_sha256(arrays)}
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
    return path


def load_dataset(path: str | Path, modalities: Sequence[str] | None = None) -> MultimodalDataset:
    """Load and validate a dataset file (see the module docstring for the format).

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file; its manifest ``.json`` beside it is read when present.
    modalities : sequence of str, optional
        Keep only these modalities, in this order. Default: all, in file order.

    Raises
    ------
    DataFormatError
        Naming the file and the problem: missing keys, mismatched shapes, non-finite values, labels out of
        range, a manifest that disagrees with the arrays, or a failed checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such dataset file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError for pickled arrays, OSError ...
        raise DataFormatError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None

    manifest: dict[str, Any] = {}
    mpath = path.with_suffix(".json")
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{mpath}: manifest is not valid JSON ({e})") from None
        if manifest.get("format") != FORMAT:
            raise DataFormatError(f"{mpath}: 'format' must be {FORMAT!r}, got {manifest.get('format')!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise DataFormatError(
                f"{mpath}: format_version {manifest.get('format_version')!r} is not supported "
                f"(this cen_lab reads {FORMAT_VERSION})"
            )
        if "sha256" in manifest and manifest["sha256"] != content_sha256(arrays):
            raise DataFormatError(f"{path}: arrays do not match the sha256 in {mpath.name} (file changed or corrupt)")

    task, num_classes = _validate_arrays(arrays, str(path), manifest)
    names = tuple(k for k in arrays if k not in _RESERVED)
    if "modalities" in manifest:
        order = tuple(manifest["modalities"])
        if set(order) != set(names):
            raise DataFormatError(f"{path}: manifest lists modalities {list(order)} but the file holds {list(names)}")
        names = order
    if modalities is not None:
        missing = [m for m in modalities if m not in names]
        if missing:
            raise DataFormatError(f"{path}: dataset has no modality {missing[0]!r}; it has {list(names)}")
    inputs = {}
    for m in names if modalities is None else modalities:  # only what is asked for becomes float32
        a = arrays[m]
        inputs[m] = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    class_names = tuple(manifest.get("class_names") or [f"class {i}" for i in range(num_classes)])
    return MultimodalDataset(
        tuple(inputs), inputs, arrays["labels"].astype(np.int64), arrays["split"].astype(np.uint8),
        task, num_classes, class_names, manifest,
    )


def _validate_arrays(arrays: dict[str, np.ndarray], where: str, manifest: Mapping[str, Any]) -> tuple[str, int]:
    """Check the arrays against the format; return (task, num_classes)."""
    for key in _RESERVED:
        if key not in arrays:
            raise DataFormatError(f"{where}: missing key {key!r} (found {sorted(arrays)})")
    names = [k for k in arrays if k not in _RESERVED]
    if not names:
        raise DataFormatError(f"{where}: no modality arrays (found only {sorted(arrays)})")
    first = arrays[names[0]]
    for m in names:
        a = arrays[m]
        if a.ndim != 4:
            raise DataFormatError(f"{where}: modality {m!r} must have shape [N, C, H, W], got {a.shape}")
        if a.shape[0] != first.shape[0] or a.shape[2:] != first.shape[2:]:
            raise DataFormatError(
                f"{where}: modality {m!r} has shape {a.shape}, which does not match {names[0]!r} {first.shape} "
                "in N, H or W"
            )
        if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
            raise DataFormatError(f"{where}: modality {m!r} must be uint8 or float, got {a.dtype}")
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            raise DataFormatError(f"{where}: modality {m!r} contains NaN or infinite values")
    n, h, w = first.shape[0], first.shape[2], first.shape[3]
    labels, split = arrays["labels"], arrays["split"]
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{where}: 'labels' must be integers, got {labels.dtype}")
    if labels.shape == (n, h, w):
        task = "seg"
    elif labels.shape == (n,):
        task = "cls"
    else:
        raise DataFormatError(f"{where}: 'labels' must have shape [N, H, W] = {(n, h, w)} or [N] = {(n,)}, got {labels.shape}")
    if split.shape != (n,) or not np.isin(split, (0, 1)).all():
        raise DataFormatError(f"{where}: 'split' must be [N] = {(n,)} with values 0 (train) or 1 (val)")
    if not (split == 0).any() or not (split == 1).any():
        raise DataFormatError(f"{where}: 'split' must mark at least one train (0) and one validation (1) sample")
    if labels.min() < 0:
        raise DataFormatError(f"{where}: 'labels' has negative values")
    num_classes = int(manifest.get("num_classes", int(labels.max()) + 1))
    if labels.max() >= num_classes:
        raise DataFormatError(f"{where}: 'labels' has value {int(labels.max())} >= num_classes = {num_classes}")
    if "task" in manifest and manifest["task"] != task:
        raise DataFormatError(f"{where}: manifest says task {manifest['task']!r} but labels have shape {labels.shape}")
    return task, num_classes
