"""The run directory: what a run is on disk, and everything that writes or reads one.

What lives here
---------------
- ``schema``: the tables, their columns and dtypes, the manifest's keys and versions (the written schema);
- ``writer``: ``RunWriter``, the one writer of every source (atomic Parquet parts, manifest, config);
- ``checkpoints``: ``checkpoints/step-*.pt``, saved and loaded with ``weights_only=True``;
- ``reader``: ``load_run`` and ``Run``;
- ``lock``: one writer per run directory (an OS lock);
- ``observer``: ``Observer``, which logs gammas, exchange maps, metrics and gradients of a live model;
- ``exchange_maps``: which branch each logged channel's value comes from;
- ``attach``: ``observe(model, out_dir, ...)``, an observer on any model;
- ``importer``: ``import_checkpoints``, a run from another codebase's checkpoint files.

What it may import: the network and everything below it (``cen_lab.network``, ``config``, ``data``, ``errors``,
``_util``); never experiments, theory or views.
"""

from .attach import IdleObserver, observe
from .checkpoints import CHECKPOINT_FORMAT, checkpoint_path, load_checkpoint, save_checkpoint
from .exchange_maps import CENExchange, ExchangeFn, ExchangeMap, MeanExchange, NoExchange
from .importer import STEP_KEYS, WRAPPER_KEYS, import_checkpoints, read_state_dict, skeleton
from .lock import LOCK_NAME, RunLock
from .observer import (PENALISED_RULES, BNLayer, Observer, alternate_halves, find_bn_layers, penalised_masks,
                       resolve_layers)
from .reader import Run, load_run
from .schema import READABLE_VERSIONS, SCHEMA_VERSION, SOURCES, TABLES, validate_table
from .writer import RunWriter

__all__ = ["observe", "IdleObserver", "CHECKPOINT_FORMAT", "checkpoint_path", "load_checkpoint", "save_checkpoint", "CENExchange",
           "ExchangeFn", "ExchangeMap", "MeanExchange", "NoExchange", "STEP_KEYS", "WRAPPER_KEYS",
           "import_checkpoints", "read_state_dict", "skeleton", "LOCK_NAME", "RunLock", "PENALISED_RULES", "BNLayer",
           "Observer", "alternate_halves", "find_bn_layers", "penalised_masks", "resolve_layers", "Run", "load_run",
           "READABLE_VERSIONS", "SCHEMA_VERSION", "SOURCES", "TABLES", "validate_table", "RunWriter"]
