"""Exceptions raised by cen_lab.

Every error names the field, key or file at fault so that a user can act on the message alone.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

# which interface the current call came through: messages that advise an option name it as that interface spells it
_INTERFACE: contextvars.ContextVar[str] = contextvars.ContextVar("cen_lab_interface", default="python")


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within this block, messages advise the command line's flags (``cen-lab`` runs its commands in it)."""
    token = _INTERFACE.set("cli")
    try:
        yield
    finally:
        _INTERFACE.reset(token)


def said(python: str, cli: str) -> str:
    """``python`` or ``cli``: the advice as the interface of the current call spells it."""
    return cli if _INTERFACE.get() == "cli" else python


def option(name: str) -> str:
    """A boolean option as the current interface spells it: ``overwrite=True`` from Python, ``--overwrite`` from
    ``cen-lab``. Every message that advises an option names it through this, so that it never names one the
    interface lacks."""
    return said(f"{name}=True", f"--{name.replace('_', '-')}")


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


class RunDivergedWarning(UserWarning):
    """A run's train loss grew by orders of magnitude, or a gamma blew up (``cen_lab.runs.divergence``)."""
