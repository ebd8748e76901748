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

import numpy as np

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

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
