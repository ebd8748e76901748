"""cen_lab: study Channel-Exchanging Networks (CEN) on toy multimodal data.

>>> import cen_lab
>>> cfg = cen_lab.ExperimentConfig.preset("tiny")
>>> run = cen_lab.train(cfg, out_dir="runs/demo")          # doctest: +SKIP
>>> run = cen_lab.load_run("runs/demo")                    # doctest: +SKIP
>>> run.gammas, run.exchange, run.metrics, run.grads       # doctest: +SKIP

The package follows the flow of data (see "How the code is organised" in the README): ``config`` -> ``network``
-> ``experiments`` (the training loop) or your own loop -> ``runs`` (observer, run directory) -> analyses
(``experiments``, ``theory``) -> ``views`` (figures, explorer, report). The names below are the front of it; the
flat module paths of before (``cen_lab.runs``, ``cen_lab.fusion``, ...) stay importable (``cen_lab._moved``).
"""

from __future__ import annotations

import importlib

from . import _moved
from ._version import __version__

_moved.install()  # the old module paths, e.g. cen_lab.plots -> cen_lab.views.plots (no module is imported by it)

from .config import ExperimentConfig  # noqa: E402  (no torch: the command line's help and config need only this)
from .errors import (CenLabError, ConfigError, DataFormatError, NonFiniteLossError, ObserveError,  # noqa: E402
                     RunExistsError, RunFormatError)

# the rest of the front, imported on first use (PEP 562): `import cen_lab` costs no more than torch's own import
_LAZY = {"diagnose": "experiments.diagnosis", "sweep": "experiments.sweeps", "train": "experiments.training",
         "exchange": "network", "sparsity_mask": "network.penalty", "Observer": "runs", "Run": "runs",
         "import_checkpoints": "runs", "load_run": "runs", "observe": "runs", "predict_exchange": "theory.lambda_choice",
         "forecast": "theory.forecast"}

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
    "diagnose",
    "exchange",
    "forecast",
    "import_checkpoints",
    "load_run",
    "observe",
    "predict_exchange",
    "sparsity_mask",
    "sweep",
    "train",
]


_SUBMODULES = ("config", "data", "network", "runs", "experiments", "theory", "views", "zoo", "cli", "errors")


def __getattr__(name: str):
    """The front's names (``cen_lab.train``, ``cen_lab.Run``, ...) and ``cen_lab.<module>`` without importing them
    first (``cen_lab.models.CENNet``, ``cen_lab.plots``), as when the flat package imported most of its modules at
    once: each is imported on first use, and kept."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if f"{__name__}.{name}" in _moved.MOVED or name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
