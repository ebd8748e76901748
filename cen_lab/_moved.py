"""The module paths of the flat cen_lab of before 2026-12-04, kept importable.

cen_lab's modules were grouped into subpackages (``network``, ``runs``, ``experiments``, ``theory``, ``views``).
Each old path is an alias of the module that now holds its contents: ``import cen_lab.runlog`` gives
``cen_lab.runs`` itself, not a copy, so attributes set on it (monkeypatching) and ``isinstance`` checks behave as
before. The documented short names (``cen_lab.exchange``, ``cen_lab.plots``, ``cen_lab.theorem``, ``cen_lab.export``,
...) are the same aliases and stay public.

The aliases are served by one finder on ``sys.meta_path`` that answers only for the names in ``MOVED``; it is
installed when ``cen_lab`` is imported, and installing it twice is a no-op.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module path -> the module that holds its contents now
MOVED: dict[str, str] = {
    # network
    "cen_lab.exchange": "cen_lab.network.exchange",
    "cen_lab.sparsity": "cen_lab.network.penalty",
    "cen_lab.layouts": "cen_lab.network.layouts",
    "cen_lab.hooks": "cen_lab.network.hooks",
    "cen_lab.tasks": "cen_lab.network.tasks",
    "cen_lab.models": "cen_lab.network.architectures",
    # the run directory
    "cen_lab.runlog": "cen_lab.runs",
    "cen_lab.observer": "cen_lab.runs",
    "cen_lab.importer": "cen_lab.runs.importer",
    "cen_lab._lock": "cen_lab.runs.lock",
    # experiments
    "cen_lab.training": "cen_lab.experiments.training",
    "cen_lab.sweeps": "cen_lab.experiments.sweeps",
    "cen_lab.precision": "cen_lab.experiments.precision",
    "cen_lab.regime": "cen_lab.experiments.regime",
    "cen_lab.fusion": "cen_lab.experiments.fusion",
    "cen_lab.learning_curves": "cen_lab.experiments.learning_curves",
    "cen_lab.analysis": "cen_lab.experiments.analysis",
    # theory (cen_lab.theory is the package, whose names are the formula's)
    "cen_lab.theorem": "cen_lab.theory.local_checks",
    "cen_lab.theorem_runs": "cen_lab.theory.networks",
    "cen_lab.theorem_verdicts": "cen_lab.theory.verdicts",
    "cen_lab.theorem_regimes": "cen_lab.theory.regimes",
    "cen_lab.miscalibration": "cen_lab.theory.miscalibration",
    "cen_lab.corollary": "cen_lab.theory.corollary",
    # views
    "cen_lab.plots": "cen_lab.views.plots",
    "cen_lab.plots._common": "cen_lab.views.plots._common",
    "cen_lab.plots.curves": "cen_lab.views.plots.curves",
    "cen_lab.plots.exchange": "cen_lab.views.plots.exchange",
    "cen_lab.plots.fusion": "cen_lab.views.plots.fusion",
    "cen_lab.plots.gammas": "cen_lab.views.plots.gammas",
    "cen_lab.plots.learning": "cen_lab.views.plots.learning",
    "cen_lab.plots.miscalibration": "cen_lab.views.plots.miscalibration",
    "cen_lab.plots.regimes": "cen_lab.views.plots.regimes",
    "cen_lab.plots.theory": "cen_lab.views.plots.theory",
    "cen_lab.widgets": "cen_lab.views.widgets",
    "cen_lab.app": "cen_lab.views.app",
    "cen_lab.reports": "cen_lab.views.reports",
    "cen_lab.notebook_runner": "cen_lab.views.notebooks",
    "cen_lab.display": "cen_lab.views.display",
    # short public names of modules inside the subpackages (new since the grouping)
    "cen_lab.export": "cen_lab.runs.export",
    # helpers
    "cen_lab._io": "cen_lab._util.atomic",
    "cen_lab._progress": "cen_lab._util.progress",
    "cen_lab._malloc": "cen_lab._util.malloc",
}


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of ``MOVED`` and loads each as the module it moved to."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return None  # a placeholder, replaced in sys.modules by exec_module

    def exec_module(self, module) -> None:
        # the import system returns what sys.modules holds under the name after this call: the target itself
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (once): before the path finder, so that an old submodule
    path (``cen_lab.plots.gammas``) is never loaded a second time from the moved package's folder."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
