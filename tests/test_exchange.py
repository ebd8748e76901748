import itertools

import pytest
import torch

from cen_lab.network.exchange import BranchGrid, channel_exchange, exchange_sources


def test_two_modalities_hand_computed():
    # x: [M=2, N=1, C=3, 1]; channel values encode (modality, channel)
    x = torch.tensor([[[[10.0], [11.0], [12.0]]], [[[20.0], [21.0], [22.0]]]])
    gamma = torch.tensor([[0.5, 0.01, 0.02], [-0.001, 0.3, -0.5]])  # 0.02 sits exactly on the threshold
    y = channel_exchange(x, gamma, threshold=0.02)
    expected = torch.tensor([[[[10.0], [21.0], [12.0]]], [[[10.0], [21.0], [22.0]]]])
    assert torch.equal(y, expected)
    assert exchange_sources(gamma, 0.02).tolist() == [[0, 1, 0], [0, 1, 1]]


def test_three_modalities_mean_of_others():
    x = torch.tensor([[[[1.0], [2.0]]], [[[4.0], [8.0]]], [[[16.0], [32.0]]]])  # [3, 1, 2, 1]
    gamma = torch.tensor([[0.0, 1.0], [1.0, 0.02], [1.0, 0.019]])
    y = channel_exchange(x, gamma, threshold=0.02)
    expected = torch.tensor([[[[10.0], [2.0]]], [[[4.0], [8.0]]], [[[16.0], [5.0]]]])
    assert torch.equal(y, expected)
    assert exchange_sources(gamma, 0.02).tolist() == [[-1, 0], [1, 1], [2, -1]]


def test_mode_none_returns_input_and_sources_are_own():
    x = torch.randn(2, 3, 4, 5, 5)
    gamma = torch.zeros(2, 4)
    assert channel_exchange(x, gamma, 0.02, mode="none") is x
    assert exchange_sources(gamma, 0.02, mode="none").tolist() == [[0] * 4, [1] * 4]


def test_gradient_flows_to_the_supplying_branch():
    x = torch.randn(2, 2, 2, 3, 3, requires_grad=True)
    gamma = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # modality 0, channel 1 receives modality 1's channel 1
    channel_exchange(x, gamma, 0.02).sum().backward()
    g = x.grad
    assert torch.all(g[0, :, 0] == 1) and torch.all(g[0, :, 1] == 0)
    assert torch.all(g[1, :, 0] == 1) and torch.all(g[1, :, 1] == 2)  # used by itself and by modality 0


@pytest.mark.parametrize(
    "x_shape, gamma_shape, mode, match",
    [((2, 1, 3, 4), (2, 4), "mean", "gamma must have shape"),
     ((1, 1, 3, 4), (1, 3), "mean", "M >= 2"),
     ((2, 1, 3, 4), (2, 3), "swap", "mode must be one of")],
)
def test_bad_arguments(x_shape, gamma_shape, mode, match):
    with pytest.raises(ValueError, match=match):
        channel_exchange(torch.zeros(x_shape), torch.zeros(gamma_shape), 0.02, mode=mode)


def _straightforward(x, gamma, threshold):
    """The plain definition: every channel from its source, by explicit indexing."""
    m = x.shape[0]
    keep = gamma.abs() >= threshold
    outs = []
    for i in range(m):
        others = torch.stack([x[j] for j in range(m) if j != i]).mean(0)
        outs.append(torch.stack([x[i][:, c] if keep[i, c] else others[:, c] for c in range(x.shape[2])], dim=1))
    return torch.stack(outs)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_fast_exchange_equals_the_straightforward_one_in_values_and_gradients(m):
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, 3, 6, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    gamma = torch.where(torch.rand(m, 6, generator=gen) < 0.4, 0.0, 1.0).double()
    gamma[0] = 0.0  # one modality exchanges everything
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    fast = channel_exchange(x, gamma, 0.02)
    (g_fast,) = torch.autograd.grad(fast, x, grad)
    slow = _straightforward(x, gamma, 0.02)
    (g_slow,) = torch.autograd.grad(slow, x, grad)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(g_fast, g_slow)
    assert torch.autograd.gradcheck(lambda t: channel_exchange(t, gamma, 0.02), (x[:, :1, :, :2, :2].detach().requires_grad_(),))


@pytest.mark.parametrize("rule, grid", [
    ("mean", BranchGrid(2)), ("mean", BranchGrid(3)), ("cyclic", BranchGrid(3)), ("mean", BranchGrid(4)),
    ("mean", BranchGrid(1, 3, "tasks")), ("mean", BranchGrid(2, 2, "modalities")), ("mean", BranchGrid(2, 2, "tasks")),
    ("mean", BranchGrid(2, 2, "both")), ("cyclic", BranchGrid(3, 2, "modalities")),
], ids=str)
def test_run_path_matches_the_definition_on_every_keep_pattern(rule, grid, monkeypatch):
    from cen_lab import exchange
    from cen_lab.network.exchange import _donor_terms, _donors, _ExchangeRuns, _ExchangeTwo, _keep_runs

    b = grid.size
    gen = torch.Generator().manual_seed(b)
    # every keep column once, in runs of one and of two channels (so a run ends at every kind of change)
    patterns = [col for i, col in enumerate(itertools.product([True, False], repeat=b)) for _ in range(1 + i % 2)]
    keep = torch.tensor(patterns).T  # [B, C]
    c = keep.shape[1]
    x = torch.randn(b, 3, c, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    runs = _keep_runs(keep.tolist())
    assert len(runs) == 2 ** b and runs[0][:2] == (0, 1) and runs[-1][1] == c
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    definition = torch.where(keep.view(b, 1, c, 1, 1), x, _donors(x, rule, grid))
    (g_def,) = torch.autograd.grad(definition, x, grad)
    outs = [_ExchangeRuns.apply(runs, _donor_terms(rule, grid), *x.unbind(0))]
    for min_elements, path in ((1, "_ExchangeRuns"), (10**9, "_ExchangeTwo" if b == 2 else "Where")):
        # channel_exchange takes the run path only when the runs are long enough to pay (here: forced)
        monkeypatch.setattr(exchange, "_RUN_MIN_ELEMENTS", min_elements)
        outs.append(channel_exchange(list(x.unbind(0)), keep.double(), 0.02, rule, grid=grid))
        assert type(outs[-1].grad_fn).__name__.startswith(path)
    if b == 2:
        outs.append(_ExchangeTwo.apply(x, keep.view(2, 1, c, 1, 1)))
    for out in outs:
        (g,) = torch.autograd.grad(out, x, grad)
        torch.testing.assert_close(out, definition)
        torch.testing.assert_close(g, g_def)
