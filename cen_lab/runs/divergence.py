"""Divergence: a run whose loss grows by orders of magnitude, or whose gammas blow up, says so.

A loop with a learning rate far too large can run to its end with every number finite: the loss at 4e18 and a
gamma at 5e10 are still numbers, so nothing stops it, and its status would be ``complete``. The observer (and so
``cen_lab.train``) watches what it logs: the first time the train loss ``loss/total`` exceeds ``LOSS_FACTOR``
times its first logged value, or a gamma's magnitude exceeds ``GAMMA_LIMIT`` (BN scaling factors start near 1),
it warns (``RunDivergedWarning``) and records ``manifest["diverged"] = {"step", "reason"}``; ``Run.diverged``
reads it. A NaN or infinite gamma is a divergence too (a live model's; an imported file with one is refused
instead): the reason counts them, and the gammas table keeps the values as they were. The run keeps its status:
what it logged is kept and still readable.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import numpy as np

from ..errors import RunDivergedWarning

log = logging.getLogger(__name__)

__all__ = ["LOSS_FACTOR", "GAMMA_LIMIT", "DivergenceWatch"]

LOSS_FACTOR = 1e3  # three orders of magnitude above the first logged train loss
GAMMA_LIMIT = 1e3  # |gamma| above this: the BN scale has blown up
LOSS_NAME = "loss/total"


class DivergenceWatch:
    """Watches the logged gammas and train loss of one run; ``record`` is the first divergence seen, or None."""

    def __init__(self, where: str, manifest: dict[str, Any]):
        self.where, self.manifest = where, manifest  # the run's manifest: the record goes there
        self.record = manifest.get("diverged")  # a resumed run that diverged before says it once only
        self.first_loss: float | None = None

    def _found(self, step: int, reason: str) -> None:
        if self.record is not None:
            return  # said once
        self.record = self.manifest["diverged"] = {"step": int(step), "reason": reason}
        msg = f"{self.where}: the run diverged at step {step}: {reason}. Lower the learning rate or lam"
        log.warning(msg)
        warnings.warn(msg, RunDivergedWarning, stacklevel=4)

    def gammas(self, step: int, gamma: np.ndarray) -> None:
        if not gamma.size:
            return
        finite = np.isfinite(gamma)
        if not finite.all():  # the gammas table keeps them as they were (NaN, inf); the record says how many
            nan = int(np.isnan(gamma).sum())
            parts = [f"{nan} NaN" if nan else "", f"{int((~finite).sum()) - nan} infinite" if nan < (~finite).sum() else ""]
            self._found(step, f"{' and '.join(p for p in parts if p)} gamma(s) of {gamma.size}")
            return
        peak = float(np.max(np.abs(gamma)))
        if peak > GAMMA_LIMIT:
            self._found(step, f"a gamma reached {peak:.3g} (|gamma| > {GAMMA_LIMIT:g})")

    def metrics(self, step: int, split: str, values: Mapping[str, float]) -> None:
        value = values.get(LOSS_NAME)
        if split != "train" or value is None or not np.isfinite(value):
            return
        if self.first_loss is None:
            self.first_loss = abs(value)
        elif abs(value) > LOSS_FACTOR * max(self.first_loss, 1e-12):
            self._found(step, f"{LOSS_NAME} reached {value:.3g}, {abs(value) / max(self.first_loss, 1e-12):.3g} "
                              f"times its first logged value {self.first_loss:.3g}")
