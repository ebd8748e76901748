"""cen_lab.theory.prefix_cache: the local check computes what a zeroed channel cannot change once per minibatch,
with the numbers of full passes (issue 22)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cen_lab.runs import penalised_masks, resolve_layers
from cen_lab.theory.prefix_cache import passing, reusing_outputs
from cen_lab.theory.zeroing import _zeroed_gradients
from cen_lab.theory.foreign import set_attribute
from cen_lab.zoo import ReferenceStyleCEN, segmentation_loss, without_exchange

from benchmarks.local_check import reference_rows


def _zoo(batches=2):
    torch.manual_seed(0)
    model = without_exchange(ReferenceStyleCEN(3, 4, stem=8, planes=(4, 8))).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bn" in name:
                p.add_(0.3 * torch.rand(p.shape))
    gen = torch.Generator().manual_seed(1)
    data = [([torch.randn(4, 3, 16, 16, generator=gen) for _ in range(2)], torch.randint(0, 4, (4, 16, 16),
                                                                                       generator=gen))
            for _ in range(batches)]
    return model, data


def test_the_local_check_reuses_the_prefix_with_the_numbers_of_full_passes():
    model, batches = _zoo()
    layers = resolve_layers(model, "*.bn2")
    _, masks = penalised_masks(layers, "alternate-halves", model)
    groups = [[(li, int(m), int(c))] for li, mask in enumerate(masks) for m, c in zip(*np.nonzero(mask))]
    flags = [p.requires_grad for p in model.parameters()]
    full = _zeroed_gradients(model, layers, groups, batches, segmentation_loss, stop_at_layer=False)
    reused = _zeroed_gradients(model, layers, groups, batches, segmentation_loss)
    assert reused == full  # every g and ||dL/dx'||, bit for bit
    # and those of the passes as they were first written (every branch hooked, a full backward), on the model whose
    # exchange stays in place at threshold 0
    in_place = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 8)).train()
    in_place.load_state_dict(model.state_dict())
    set_attribute("threshold", 0.0)(in_place)
    assert reference_rows(in_place, resolve_layers(in_place, "*.bn2"), groups, batches, segmentation_loss) == full
    assert all(np.isfinite(r[-1]) and r[-1] > 0 for r in full)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not any("forward" in vars(m) for m in model.modules())  # the wrappers are gone


def test_outputs_that_cannot_depend_on_the_live_gammas_are_computed_once():
    model, batches = _zoo(1)
    gamma = model.layers[1][0].bn2.bn_0.weight
    with reusing_outputs(model) as state:
        state.new_batch()
        outs = []
        for _ in range(3):
            with passing(state, model, [gamma]):
                outs.append(segmentation_loss(model, batches[0]))
        assert state.reused > 0
        first = state.reused
        with passing(state, model, [model.layers[0][0].bn2.bn_0.weight]):  # an earlier layer: a shorter prefix,
            segmentation_loss(model, batches[0])  # and the other branch, computed before, reused as a whole
        assert state.reused > first
    plain = segmentation_loss(model, batches[0])
    assert all(torch.equal(o.detach(), plain.detach()) for o in outs) and outs[0].requires_grad


def _batch_norm_calls(monkeypatch) -> list:
    """The weights of every BatchNorm computed from now on, in call order."""
    calls, plain = [], F.batch_norm

    def counting(x, *args, **kwargs):
        calls.append(kwargs["weight"] if "weight" in kwargs else args[2] if len(args) > 2 else None)
        return plain(x, *args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", counting)
    return calls


@pytest.mark.parametrize("taken_out", [True, False])
def test_the_other_branch_is_computed_once_per_batch_when_the_exchange_is_taken_out(monkeypatch, taken_out):
    model, batches = _zoo(1)
    if not taken_out:  # the exchange left in place at threshold 0 links the branches after the zeroed layer
        model = ReferenceStyleCEN(3, 4, stem=8, planes=(4, 8)).train()
        model.load_state_dict(_zoo(1)[0].state_dict())
        set_attribute("threshold", 0.0)(model)
    layers = resolve_layers(model, "*.bn2")
    groups = [[(0, 0, c)] for c in range(3)]  # three channels of branch 0 in the first bottleneck
    calls = _batch_norm_calls(monkeypatch)
    _zeroed_gradients(model, layers, groups, batches, segmentation_loss)
    other = model.layers[1][0].bn2.bn_1.weight  # branch 1, after the zeroed layer
    own = model.layers[1][0].bn2.bn_0.weight
    assert sum(w is own for w in calls) == 3  # the zeroed branch: once per pass
    assert sum(w is other for w in calls) == (1 if taken_out else 3)


class _InPlace(nn.Module):
    """A forward that changes a submodule's output in place after the fact, as ``out += residual`` would."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x):
        y = self.a(x)
        y.mul_(2.0)
        return self.b(y).sum()


def test_a_kept_output_changed_in_place_is_computed_again():
    torch.manual_seed(0)
    model, x = _InPlace(), torch.randn(5, 3)
    expected = model(x).item()
    with reusing_outputs(model) as state:
        state.new_batch()
        values = []
        for _ in range(3):
            with passing(state, model, [model.b.weight]):
                values.append(model(x).item())
        assert state.reused == 0  # a's kept output was doubled in place: never handed out again
    assert values == [expected] * 3


def test_dropout_is_never_reused_and_an_error_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 1))
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with reusing_outputs(model) as state:
            assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
            with passing(state, model, [model[2].weight]):
                assert [p.requires_grad for p in model.parameters()] == [False, False, True, False]
                raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags


class _ReadsAGamma(nn.Module):
    """A module that reads another module's gamma, passed to it, as the reference's exchange reads its BNs'."""

    def forward(self, x, bn):
        return x * bn.weight.abs().sum()


class _Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.bn, self.reader = nn.Linear(3, 3), nn.BatchNorm1d(3), _ReadsAGamma()

    def forward(self, x):
        y = self.lin(x)
        return (self.bn(y).sum() + self.reader(y, self.bn).sum())


def test_a_module_given_a_live_module_is_always_computed():
    torch.manual_seed(0)
    model, x = _Outer().train(), torch.randn(6, 3)
    with reusing_outputs(model) as state:
        state.new_batch()
        with passing(state, model, [model.bn.weight]):
            model(x)
        with torch.no_grad():
            model.bn.weight[0] = 0.0  # zeroed: what the reader returns changes though its tensor input does not
        with passing(state, model, [model.bn.weight]):
            got = model(x)
    assert torch.equal(got.detach(), model(x).detach())
