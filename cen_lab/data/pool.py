"""Training data that does not run out: a large pool of fresh scenes, generated once, cached and verified.

The canonical toy has 512 training scenes: a 10,000-step run at batch 32 sees each one 625 times and memorises
them. ``data.train_pool = N`` trains instead on ``N`` scenes drawn from the same generator parameters as the
source (a canonical dataset, or ``data.scene`` for ``"generate"``), while validation stays the source's own split,
so that scores compare with runs on the source.

Which form, and why (measured by ``make bench``, part ``data``): drawing fresh scenes inline for every batch costs
a large fraction of a CEN step on 2 cores (the generator is a Python loop over scenes), far over the 10% allowed;
a pool generated once and kept on disk costs a gather per step, like the canonical data, plus a one-time
generation shared by every run that uses the same pool.

Determinism. The pool is drawn in chunks of ``CHUNK`` scenes; chunk ``k`` comes from its own generator,
``default_rng(SeedSequence(generator seed, spawn_key=(POOL_KEY, k)))``, independent of the source's own stream
(spawn key ``()``) and of how many processes draw the chunks. The same config therefore gives the same pool, and
the same batches, on every machine, in every sweep backend and under resume.

The cache. ``<cache>/pool-<key>.npz`` with its manifest (``cen_lab.data.io`` format), ``<key>`` a hash of the
generator parameters, the pool's size and ``POOL_VERSION``. Loading verifies the arrays' sha256; a file that does
not match is reported (``PoolCacheWarning``) and generated again. Files are written atomically, so two processes
building the same pool at once leave one whole file.

Checks. A pool scene that equals (in its inputs) a validation scene of the source is refused
(``DataFormatError``): the validation split would no longer be held out. A source file without generator
parameters cannot give a pool (``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
import numpy as np

from ..config import SceneParams
from ..errors import ConfigError, DataFormatError
from .canonical import CANONICAL, DATA_DIR
from .io import MultimodalDataset, load_dataset, save_dataset
from .scenes import MODALITY_CHANNELS, TARGET_CHANNELS, class_names, draw_scenes

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "POOL_KEY", "POOL_VERSION", "PoolCacheWarning", "cache_dir", "pool_path", "draw_pool",
           "build_pool", "load_pool", "pool_dataset", "source_generator"]

CHUNK = 1024  # scenes per independently seeded chunk
POOL_KEY = 1  # the spawn key's first entry: the pool's streams, apart from the source's (spawn key ())
POOL_VERSION = 1  # bump when the drawing changes, so that old cache files are not taken for new pools


class PoolCacheWarning(UserWarning):
    """A cached pool did not match its hash and is generated again."""


def cache_dir() -> Path:
    """Where pools are cached: ``$CEN_LAB_CACHE`` when set, else ``data/cache`` of the checkout."""
    return Path(os.environ.get("CEN_LAB_CACHE") or DATA_DIR / "cache")


def _key(params: SceneParams, n: int) -> str:
    text = json.dumps({"generator": dataclasses.asdict(params), "n": n, "version": POOL_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pool_path(params: SceneParams, n: int, directory: str | Path | None = None) -> Path:
    """The cache file of the ``n``-scene pool of generator ``params``."""
    return Path(directory or cache_dir()) / f"pool-{_key(params, n)}.npz"


def _chunk(params: SceneParams, k: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=(POOL_KEY, k)))
    return draw_scenes(params, n, rng)


def draw_pool(params: SceneParams, n: int, *, n_jobs: int = 1, progress: bool = False) -> dict[str, np.ndarray]:
    """Draw the ``n``-scene pool of generator ``params`` (uint8 arrays as ``generate_scenes``, every scene in split
    0). The same result for any ``n_jobs``; ``n_jobs > 1`` draws chunks in joblib workers."""
    from .._util.progress import progress_bar

    if n < 1:
        raise ValueError(f"a pool needs at least one scene, got {n}")
    sizes = [min(CHUNK, n - start) for start in range(0, n, CHUNK)]
    if n_jobs > 1 and len(sizes) > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=n_jobs)(delayed(_chunk)(params, k, size) for k, size in enumerate(sizes))
    else:
        bar = progress_bar(total=n, desc=f"pool of {n} scenes", unit="scene", disable=not progress, leave=False)
        parts = []
        for k, size in enumerate(sizes):
            parts.append(_chunk(params, k, size))
            bar.update(size)
        bar.close()
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    arrays["split"] = np.zeros(n, np.uint8)
    return arrays


def build_pool(params: SceneParams, n: int, directory: str | Path | None = None, *, n_jobs: int = 1,
               progress: bool = False) -> Path:
    """Draw the pool and write it to the cache (atomically); returns its path."""
    arrays = draw_pool(params, n, n_jobs=n_jobs, progress=progress)
    # the format wants a validation sample; the pool's last scene is marked 1 in the file only, and read back as 0
    arrays["split"][-1] = 1
    manifest = {"name": "pool", "task": params.task, "num_classes": params.num_classes,
                "class_names": class_names(params.num_classes),
                "modalities": list(MODALITY_CHANNELS) + list(TARGET_CHANNELS), "n_train": n, "n_val": 0,
                "image_size": params.image_size, "generator": dataclasses.asdict(params),
                "pool": {"scenes": n, "chunk": CHUNK, "key": [POOL_KEY, "k"], "version": POOL_VERSION}}
    return save_dataset(pool_path(params, n, directory), arrays, manifest)


def load_pool(params: SceneParams, n: int, modalities, directory: str | Path | None = None, *,
              progress: bool = True) -> MultimodalDataset:
    """The pool from the cache, built first when absent (with a progress bar: 65,536 scenes take a minute or two
    on one core), built again (with a ``PoolCacheWarning``) when the file does not match its hash. Every scene is
    in split 0."""
    path = pool_path(params, n, directory)
    if path.is_file():
        try:
            ds = load_dataset(path, modalities)
        except DataFormatError as e:
            warnings.warn(f"the cached pool {path} is not valid ({e}); generating it again", PoolCacheWarning,
                          stacklevel=2)
            build_pool(params, n, directory, progress=progress)
            ds = load_dataset(path, modalities)
    else:
        log.info("generating the %d-scene training pool into %s", n, path)
        build_pool(params, n, directory, progress=progress)
        ds = load_dataset(path, modalities)
    return dataclasses.replace(ds, split=np.zeros(n, np.uint8))


def source_generator(source: str, scene: SceneParams) -> SceneParams:
    """The generator parameters behind ``data.source``: a canonical dataset's, ``scene`` for ``"generate"``, or
    those a dataset file's manifest records; a file without them cannot give a pool."""
    if source in CANONICAL:
        return CANONICAL[source]
    if source == "generate":
        return scene
    mpath = Path(source).with_suffix(".json")
    generator = json.loads(mpath.read_text(encoding="utf-8")).get("generator") if mpath.is_file() else None
    if not generator:
        raise ConfigError(f"data.train_pool draws fresh scenes from the source's generator, but {source} records "
                          f"none (no 'generator' in {mpath.name}): it cannot be regenerated. Use a canonical "
                          "dataset or 'generate', or set data.train_pool=0 to train on the file's own split")
    try:
        return SceneParams(**generator)
    except TypeError as e:
        raise ConfigError(f"{mpath}: its 'generator' is not a set of scene parameters ({e})") from None


def _scene_digests(ds: MultimodalDataset, rows: np.ndarray) -> set[bytes]:
    """A digest of each selected scene's inputs (every modality), to compare scenes across splits."""
    arrays = [ds.inputs[m][rows] for m in ds.modalities]
    return {hashlib.blake2b(b"".join(np.ascontiguousarray(a[i]).tobytes() for a in arrays), digest_size=16).digest()
            for i in range(int(rows.sum()))}


def pool_dataset(source: MultimodalDataset, pool: MultimodalDataset) -> MultimodalDataset:
    """``pool`` as the training split and ``source``'s validation split, in ``source``'s modalities (the manifest is
    ``source``'s). Refuses a pool scene whose inputs equal a validation scene's."""
    mods = source.modalities
    val = source.split == 1
    pool = pool.select(mods)
    shared = _scene_digests(pool, np.ones(len(pool.split), bool)) & _scene_digests(source, val)
    if shared:
        raise DataFormatError(f"{len(shared)} scene(s) of the training pool equal validation scenes of the source: "
                              "the validation split would be trained on. The pool's generator must differ from the "
                              "source's stream (it does by construction; was the cache file replaced?)")
    inputs = {m: np.concatenate([pool.inputs[m], source.inputs[m][val]]) for m in mods}
    labels = np.concatenate([pool.labels, source.labels[val]])
    split = np.concatenate([np.zeros(len(pool.split), np.uint8), np.ones(int(val.sum()), np.uint8)])
    return MultimodalDataset(mods, inputs, labels, split, source.task, source.num_classes, source.class_names,
                             dict(source.manifest))
