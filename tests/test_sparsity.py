import numpy as np
import pytest
import torch

from cen_lab import sparsity_mask
from cen_lab.sparsity import add_l1_subgradient, apply_l1_proximal, l1_penalty


def test_two_modalities_split_in_halves():
    mask = sparsity_mask(6, 2)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True] * 3 + [False] * 3, [False] * 3 + [True] * 3]


@pytest.mark.parametrize("m, c", [(2, 7), (3, 10), (4, 10), (4, 4)])
def test_disjoint_chunks_cover_all_channels_once(m, c):
    mask = sparsity_mask(c, m).numpy()
    assert mask.shape == (m, c)
    assert (mask.sum(0) == 1).all()  # disjoint and covering
    chunks = np.array_split(np.arange(c), m)
    for i in range(m):
        assert np.flatnonzero(mask[i]).tolist() == chunks[i].tolist()  # contiguous, array_split sizes


def test_all_and_none_schemes():
    assert sparsity_mask(5, 3, "all").all()
    assert not sparsity_mask(5, 3, "none").any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="scheme must be one of"):
        sparsity_mask(4, 2, "half")
    with pytest.raises(ValueError, match="at least one channel per modality"):
        sparsity_mask(2, 3)


def test_penalty_gradient_only_on_masked_gammas():
    w = torch.tensor([[0.5, -0.2, 0.3, 0.0], [0.4, -0.1, -0.6, 0.2]], requires_grad=True)
    mask = sparsity_mask(4, 2)
    lam = 0.1
    l1_penalty([w], [mask], lam).backward()
    expected = lam * torch.sign(w.detach()) * mask
    assert torch.equal(w.grad, expected)
    assert torch.all(w.grad[~mask] == 0)
    # the in-place rule used during training adds exactly the same
    w2 = w.detach().clone().requires_grad_(True)
    add_l1_subgradient([w2], [mask], lam)
    assert torch.equal(w2.grad, expected)


def test_proximal_gives_exact_zeros_and_leaves_free_gammas():
    w = torch.nn.Parameter(torch.tensor([[0.05, -0.5, 0.9, 0.01], [0.3, 0.2, -0.02, 0.5]]))
    mask = sparsity_mask(4, 2)
    apply_l1_proximal([w], [mask], step=0.1)
    torch.testing.assert_close(w.detach(), torch.tensor([[0.0, -0.4, 0.9, 0.01], [0.3, 0.2, 0.0, 0.4]]))
    assert w[0, 0].item() == 0.0 and w[1, 2].item() == 0.0
