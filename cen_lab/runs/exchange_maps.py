"""Exchange maps: which branch each logged channel's value comes from, given the logged gammas.

The observer logs an ``exchange`` table row per channel: ``exchanged`` where the map's keep rule says so, and the
``source`` branch. ``MeanExchange`` is the paper's rule, ``NoExchange`` a network that does not exchange,
``CENExchange`` each block's rule of cen_lab's own ``CENNet``, and a callable
``fn(layer_name, gamma, threshold) -> source`` any other rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..errors import ObserveError
from ..network.exchange import exchange_keep, exchange_sources
from ..network.layouts import BNLayer

if TYPE_CHECKING:
    from ..network.architectures import CENNet

__all__ = ["ExchangeFn", "ExchangeMap", "MeanExchange", "NoExchange", "CENExchange"]

ExchangeFn = Callable[[str, np.ndarray, float], np.ndarray]


class ExchangeMap:
    """Each channel's source given the logged gammas: its donor where ``keep`` is False, itself where True.

    Subclasses give the donors (fixed per layer) and, where the keep rule is not ``|gamma| >= threshold``, a
    ``keep`` of their own. ``name`` goes into the manifest.
    """

    name = "custom"

    def donors(self, layer: BNLayer, index: int) -> np.ndarray:  # int [M, C]
        raise NotImplementedError

    def keep(self, index: int, gamma: np.ndarray, threshold: float) -> np.ndarray | None:
        """bool ``[M, C]``, or None for ``|gamma| >= threshold`` (the usual rule, computed for all layers at once)."""
        return None


class MeanExchange(ExchangeMap):
    """The paper's rule: an exchanged channel takes the mean of the other branches (M = 2: the other one)."""

    name = "mean"

    def donors(self, layer: BNLayer, index: int) -> np.ndarray:
        m, c = layer.num_branches, layer.num_channels
        return exchange_sources(torch.zeros(m, c), 1.0, "mean").numpy()  # |0| < 1: every channel exchanged


class NoExchange(ExchangeMap):
    """A network that does not exchange: every channel is its own."""

    name = "none"

    def donors(self, layer: BNLayer, index: int) -> np.ndarray:
        return np.repeat(np.arange(layer.num_branches), layer.num_channels).reshape(layer.num_branches, -1)


class _CallableExchange(ExchangeMap):
    def __init__(self, fn: ExchangeFn, layers: Sequence[BNLayer]):
        self.fn, self.layers = fn, layers
        self.name = getattr(fn, "__qualname__", type(fn).__name__)

    def donors(self, layer: BNLayer, index: int) -> np.ndarray:
        return NoExchange().donors(layer, index)  # unused: sources come from fn

    def sources(self, index: int, gamma: np.ndarray, threshold: float) -> np.ndarray:
        layer = self.layers[index]
        out = np.asarray(self.fn(layer.name, gamma, threshold))
        if out.shape != gamma.shape or not np.issubdtype(out.dtype, np.integer):
            raise ObserveError(f"exchange rule {self.name}: expected int sources of shape {list(gamma.shape)} for "
                               f"layer {layer.name!r}, got {out.dtype} {list(out.shape)}")
        return out


def _exchange_map(exchange: str | ExchangeFn | ExchangeMap, layers: Sequence[BNLayer]) -> ExchangeMap:
    if isinstance(exchange, ExchangeMap):
        return exchange
    if exchange == "mean":
        return MeanExchange()
    if exchange == "none":
        return NoExchange()
    if callable(exchange):
        return _CallableExchange(exchange, layers)
    raise ObserveError(f"exchange must be 'mean', 'none' or a callable (layer, gamma, threshold) -> source, "
                       f"got {exchange!r}")


class CENExchange(ExchangeMap):
    """The exchange map of a ``CENNet`` for ``cen_lab.runs.observer.Observer``: each CEN block's rule (mean, cyclic,
    random, none) on its branch grid, computed by ``exchange_sources``, so the logged sources match the forward
    pass."""

    def __init__(self, model: "CENNet"):
        cen = set(model.config.cen_blocks)
        self.blocks = [blk for b, blk in enumerate(model.blocks) if b in cen]  # aligned with model.cen_layers()
        # the random rule's channel orders, on the host once (fixed buffers: no device sync per logged step)
        self.ranks = [None if blk.exchange_rank is None else blk.exchange_rank.cpu() for blk in self.blocks]
        self.name = model.config.exchange

    def donors(self, layer: BNLayer, index: int) -> np.ndarray:
        # each channel's donor if it is exchanged: exchange_sources with every channel exchanged (|0| < 1). Per
        # logged step only the keep mask changes
        blk = self.blocks[index]
        m, c = layer.num_branches, layer.num_channels
        return exchange_sources(torch.zeros(m, c), 1.0, blk.exchange, self.ranks[index], blk.grid).numpy()

    def keep(self, index: int, gamma: np.ndarray, threshold: float) -> np.ndarray | None:
        if self.blocks[index].exchange != "random":
            return None  # |gamma| >= threshold
        return exchange_keep(torch.from_numpy(gamma), threshold, "random", self.ranks[index]).numpy()
