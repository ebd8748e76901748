"""Which observed norms the model's forward applies: a layer that exists but is never run exchanges nothing.

The reference's translation generator builds an ``insnorm_conv`` in every encoder block but applies it only in
those built with ``instance_norm=True``: the first and last blocks' norms have gammas, which the L1 filter picks by
name and the penalty alone shrinks, yet no output passes through them. Read from their gammas, they would seem to
exchange. ``ForwardWatch`` counts the forward calls of each observed layer's norms between two logged steps; a
layer with none while another ran is *unapplied* at that step (the observer then logs its rows as not exchanged,
records ``manifest["unapplied_layers"] = {layer: first step}`` and warns once, and ``cen_lab.diagnose`` leaves
the layer out). Its hooks are removed when the observer closes.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ForwardWatch"]


class ForwardWatch:
    """Counts forward calls of each layer's norm modules (``BNLayer.modules``) between ``check`` calls."""

    def __init__(self, layers):
        self.names = [la.name for la in layers]
        self.calls = np.zeros(len(self.names), np.int64)
        self.idle = np.zeros(len(self.names), bool)  # per layer: unapplied in the last interval in which any ran
        self.unapplied: dict[str, int] = {}  # layer -> the first step at which it was found unapplied
        self._handles = [mod.register_forward_hook(functools.partial(self._hit, i))
                         for i, la in enumerate(layers) for mod in la.modules]

    def _hit(self, i: int, *_) -> None:
        self.calls[i] += 1

    def check(self, step: int) -> list[str]:
        """Update ``idle`` from the calls since the last check (kept as it was when no layer ran: a log without a
        forward between, or a model that is never run, such as an import's); returns the layers newly found
        unapplied."""
        calls, self.calls = self.calls, np.zeros_like(self.calls)
        if not calls.any():
            return []
        self.idle = calls == 0
        new = [n for n, idle in zip(self.names, self.idle) if idle and n not in self.unapplied]
        self.unapplied.update({n: int(step) for n in new})
        return new

    def keep_unapplied(self, step: int, source: np.ndarray, own: np.ndarray, rows: list[slice], where: str) -> bool:
        """``check``, then set the ``source`` rows (the exchange table's, ``rows[i]`` those of layer i) of every idle
        layer to their ``own`` branch: not exchanged. Warns once per layer found unapplied; True when one was."""
        new = self.check(step)
        for idle, r in zip(self.idle, rows):
            if idle:
                source[r] = own[r]
        if new:
            msg = (f"{where}: layers {new} got no forward call before step {step}: the model's forward does not apply "
                   "their norms, so they exchange nothing. They are logged as not exchanged, listed in "
                   "manifest['unapplied_layers'], and left out by cen_lab.diagnose; observe the applied layers only "
                   "with layers=[...]")
            log.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=5)
        return bool(new)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
