"""Exchange rules beyond the paper's two-modality mean: cyclic, random, and groups of modality x task branches."""

import pytest
import torch

from cen_lab.network.exchange import BranchGrid, channel_exchange, donor_matrix, exchange_keep, exchange_sources


def _column(values):  # [B] values -> x [B, N=1, C, 1] with channel c of branch b = values[b] * (c + 1)
    v = torch.tensor(values, dtype=torch.float64)
    return v.view(-1, 1, 1, 1) * torch.tensor([1.0, 2.0], dtype=torch.float64).view(1, 1, 2, 1)


def test_cyclic_three_modalities_hand_computed():
    # modality m receives from (m + 1) % 3: 0 <- 1, 1 <- 2, 2 <- 0
    x = _column([1.0, 10.0, 100.0])
    gamma = torch.tensor([[0.0, 1.0], [1.0, 0.01], [0.001, 0.001]])
    y = channel_exchange(x, gamma, 0.02, mode="cyclic")
    expected = torch.tensor([[10.0, 2.0], [10.0, 200.0], [1.0, 2.0]], dtype=torch.float64)
    assert torch.equal(y[:, 0, :, 0], expected)
    assert exchange_sources(gamma, 0.02, mode="cyclic").tolist() == [[1, 0], [1, 2], [0, 0]]
    # the mean rule differs for M = 3: modality 0's channel 0 gets (10 + 100) / 2
    assert channel_exchange(x, gamma, 0.02, mode="mean")[0, 0, 0, 0] == 55.0


def test_cyclic_equals_mean_for_two_modalities():
    x = torch.randn(2, 3, 4, 5, 5)
    gamma = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    assert torch.equal(channel_exchange(x, gamma, 0.02, mode="cyclic"), channel_exchange(x, gamma, 0.02, mode="mean"))


def test_random_exchanges_as_many_channels_as_the_gamma_rule():
    gamma = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    rank = torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3]])
    keep = exchange_keep(gamma, 0.02, "random", rank)
    # modality 0 exchanges 2 channels, those ranked 0 and 1 (channels 3 and 2); modality 1 one channel (0)
    assert keep.tolist() == [[True, True, False, False], [False, True, True, True]]


def test_multitask_one_modality_three_tasks_mean_hand_computed():
    # M = 1, T = 3: the branches are the tasks and exchange among themselves, as modalities do
    grid = BranchGrid(1, 3, "tasks")
    x = _column([1.0, 10.0, 100.0])
    gamma = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    y = channel_exchange(x, gamma, 0.02, grid=grid)
    # branch 0 channel 0: (10 + 100) / 2; branch 2 channel 1: (2 + 20) / 2
    expected = torch.tensor([[55.0, 2.0], [10.0, 20.0], [100.0, 11.0]], dtype=torch.float64)
    assert torch.equal(y[:, 0, :, 0], expected)
    assert exchange_sources(gamma, 0.02, grid=grid).tolist() == [[-1, 0], [1, 1], [2, -1]]


# M = 2 modalities x T = 2 tasks; branch b = m * 2 + t: 0 = (m0, t0), 1 = (m0, t1), 2 = (m1, t0), 3 = (m1, t1)
@pytest.mark.parametrize("between, donors", [
    ("modalities", [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]]),  # same task, other modality
    ("tasks", [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]),  # same modality, other task
    ("both", [[0, .5, .5, 0], [.5, 0, 0, .5], [.5, 0, 0, .5], [0, .5, .5, 0]]),  # either, never the diagonal one
])
def test_modality_task_grid_donors_hand_computed(between, donors):
    grid = BranchGrid(2, 2, between)
    assert donor_matrix("mean", grid).tolist() == donors
    x = _column([1.0, 10.0, 100.0, 1000.0])
    gamma = torch.zeros(4, 2)  # every channel exchanged
    y = channel_exchange(x, gamma, 0.02, grid=grid)
    expected = torch.tensor(donors, dtype=torch.float64) @ torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=torch.float64)
    assert torch.allclose(y[:, 0, 0, 0], expected) and torch.allclose(y[:, 0, 1, 0], 2 * expected)
    single = [row.index(1) if 1 in row else -1 for row in donors]
    assert exchange_sources(gamma, 0.02, grid=grid)[:, 0].tolist() == single


def test_cyclic_within_task_groups_of_three_modalities():
    grid = BranchGrid(3, 2, "modalities")  # branch m * 2 + t receives from ((m + 1) % 3) * 2 + t
    d = donor_matrix("cyclic", grid)
    assert [int(row.argmax()) for row in d] == [2, 3, 4, 5, 0, 1]
    assert d.sum(1).tolist() == [1.0] * 6


def test_grouped_exchange_gradient_reaches_the_donor():
    grid = BranchGrid(2, 2, "tasks")
    x = torch.randn(4, 3, 2, 4, 4, requires_grad=True)
    gamma = torch.tensor([[1.0, 0.0]] + [[1.0, 1.0]] * 3)  # branch 0 takes channel 1 from branch 1 (its other task)
    channel_exchange(x, gamma, 0.02, grid=grid)[0, :, 1].sum().backward()
    assert x.grad[1, :, 1].eq(1).all() and x.grad[0].eq(0).all() and x.grad[2:].eq(0).all()


@pytest.mark.parametrize("grid, mode, match", [
    (BranchGrid(2, 2, "both"), "cyclic", "cyclic"),
    (BranchGrid(2, 3, "modalities"), "mean", "2 x 3 branches"),
    (BranchGrid(2, 2, "diagonal"), "mean", "between"),
])
def test_bad_grids(grid, mode, match):
    with pytest.raises(ValueError, match=match):
        channel_exchange(torch.zeros(4, 1, 2, 1), torch.zeros(4, 2), 0.02, mode=mode, grid=grid)
