"""Exceptions raised by cen_lab.

Every error names the field, key or file at fault so that a user can act on the message alone.
"""

from __future__ import annotations


class CenLabError(Exception):
    """Base class of every error cen_lab raises on purpose."""


class ConfigError(CenLabError, ValueError):
    """An invalid configuration value or an unknown configuration key."""


class DataFormatError(CenLabError, ValueError):
    """A dataset file that does not follow the documented format (see ``cen_lab.data.io``)."""


class RunFormatError(CenLabError, ValueError):
    """A run directory, table or checkpoint that is corrupt or was not written by cen_lab."""


class RunExistsError(CenLabError, FileExistsError):
    """The output directory already holds a run that this call would overwrite."""


class NonFiniteLossError(CenLabError, FloatingPointError):
    """Training produced a NaN or infinite loss; everything logged before it is kept."""


class ObserveError(CenLabError, ValueError):
    """A model, layer, mask, step or metric that ``cen_lab.observe`` or ``cen_lab.import_checkpoints`` cannot
    use; nothing already logged is lost."""


class RunLockedError(CenLabError, RuntimeError):
    """Another process is writing this run directory (it holds the run's lock)."""


class RunWriteError(CenLabError, OSError):
    """A run file could not be written (disk full, read-only folder, file size limit); the message names it.
    Everything written before stays readable, and ``resume`` continues the run once the cause is gone."""
