"""cen_lab: study Channel-Exchanging Networks (CEN) on toy multimodal data.

>>> import cen_lab
>>> cfg = cen_lab.ExperimentConfig.preset("tiny")
>>> run = cen_lab.train(cfg, out_dir="runs/demo")          # doctest: +SKIP
>>> run = cen_lab.load_run("runs/demo")                    # doctest: +SKIP
>>> run.gammas, run.exchange, run.metrics, run.grads       # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import exchange
from .config import ExperimentConfig
from .errors import (CenLabError, ConfigError, DataFormatError, NonFiniteLossError, ObserveError, RunExistsError,
                     RunFormatError)
from .importer import import_checkpoints
from .observer import Observer, observe
from .runlog import Run, load_run
from .sparsity import sparsity_mask
from .sweeps import sweep
from .training import train

__all__ = [
    "__version__",
    "CenLabError",
    "ConfigError",
    "DataFormatError",
    "ExperimentConfig",
    "NonFiniteLossError",
    "ObserveError",
    "Observer",
    "Run",
    "RunExistsError",
    "RunFormatError",
    "exchange",
    "import_checkpoints",
    "load_run",
    "observe",
    "sparsity_mask",
    "sweep",
    "train",
]
