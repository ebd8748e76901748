"""Reuse, across the local check's passes, what zeroing a channel cannot change (issue 22).

The local check makes one forward and backward pass per zeroed channel (group) and minibatch. Everything that does
not depend on the zeroed gammas, the whole model up to their layer above all, computes the same values in every
pass of a minibatch. ``reusing_outputs(model)`` wraps the ``forward`` of every submodule of ``model`` so that,
while it is active:

- only the parameters named ``live`` require grad (the zeroed layers' gammas), so autograd itself marks every tensor
  that depends on them;
- a submodule that holds no live parameter, is given no module that holds one (as the reference's exchange is
  given the BatchNorms whose gammas it reads), and whose tensor inputs all do not require grad (so they do not
  depend on the zeroed gammas) returns the output it gave for equal inputs earlier in the same minibatch (the inputs are
  compared by identity, else with ``torch.equal``), and computes it, then keeps it, the first time;
- everything else computes as usual.

The numbers are those of full passes, bit for bit (tested; ``make bench`` part ``local_check`` checks them on each
run). Safeguards: a kept tensor that was changed in place since (its ``_version``) is not reused; dropout modules
always compute (their masks are random); the parameters' ``requires_grad`` flags are restored on exit. A module
whose forward has other side effects or randomness would see them once per minibatch instead of once per pass, and
one that reads a gamma through a reference that is neither its child nor an argument (a plain attribute) would not
see it zeroed: pass ``reuse_prefix=False`` to the check for such a model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

__all__ = ["reusing_outputs", "passing"]


def _tensors(obj: Any, out: list, kind: type = torch.Tensor) -> list:
    """The tensors (or other objects of ``kind``) in ``obj`` (nested lists, tuples and dicts), in order."""
    if isinstance(obj, kind):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _tensors(item, out, kind)
    elif isinstance(obj, dict):
        for item in obj.values():
            _tensors(item, out, kind)
    return out


def _same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x is y or (x.shape == y.shape and x.dtype == y.dtype and x.device == y.device
                                                and torch.equal(x, y)) for x, y in zip(a, b))


class _Outputs:
    """The kept outputs of one minibatch and the wrapped modules' switches."""

    def __init__(self) -> None:
        self.entries: dict[nn.Module, list[tuple[list[torch.Tensor], Any, list[int]]]] = {}
        self.live: set[nn.Module] = set()
        self.active = False
        self.reused = 0

    def new_batch(self) -> None:
        """Forget the kept outputs: the next passes run on another minibatch."""
        self.entries = {}

    def call(self, module: nn.Module, forward, args, kwargs):
        if not self.active or module in self.live:
            return forward(*args, **kwargs)
        inputs = _tensors((args, kwargs), [])
        if not inputs or any(t.requires_grad for t in inputs) or any(
                m in self.live for m in _tensors((args, kwargs), [], nn.Module)):  # e.g. the BNs an exchange reads
            return forward(*args, **kwargs)
        for kept_inputs, output, versions in self.entries.get(module, ()):
            if _same(inputs, kept_inputs) and [t._version for t in kept_inputs + _tensors(output, [])] == versions:
                self.reused += 1
                return output
        output = forward(*args, **kwargs)
        versions = [t._version for t in inputs + _tensors(output, [])]
        self.entries.setdefault(module, []).append((inputs, output, versions))
        return output


@contextlib.contextmanager
def reusing_outputs(model: nn.Module) -> Iterator[_Outputs]:
    """Wrap ``model``'s submodules (not ``model`` itself, whose parameters it always holds); yields the switch.

    Use: ``state.new_batch()`` per minibatch, and per pass ``with passing(state, model, live):``. The wrappers are
    removed, and the ``requires_grad`` flags restored, on exit.
    """
    state = _Outputs()
    wrapped = []
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for module in model.modules():
            if module is model or isinstance(module, nn.modules.dropout._DropoutNd) or "forward" in vars(module):
                continue
            forward = module.forward

            def wrapper(*args, _module=module, _forward=forward, **kwargs):
                return state.call(_module, _forward, args, kwargs)

            module.forward = wrapper
            wrapped.append(module)
        yield state
    finally:
        for module in wrapped:
            del module.forward
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def passing(state: _Outputs, model: nn.Module, live: Sequence[torch.Tensor]) -> Iterator[None]:
    """One pass in which only the ``live`` parameters require grad and the rest of ``model`` may be reused."""
    ids = {id(t) for t in live}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    state.live = {m for m in model.modules() if any(id(p) in ids for p in m.parameters(recurse=True))}
    state.active = True
    try:
        yield
    finally:
        state.active = False
