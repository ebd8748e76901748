import numpy as np
import pytest
import torch

from cen_lab import sparsity_mask
from cen_lab.network.penalty import add_l1_subgradient, apply_l1_proximal, l1_penalty


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


def test_alternate_halves_is_the_reference_rule_layer_after_layer():
    # M = 3: tensors in parameter order k = 0, 1, 2 | 3, 4, 5; even k first half, odd k second half
    first = sparsity_mask(6, 3, "alternate-halves", layer_index=0).int().tolist()
    second = sparsity_mask(6, 3, "alternate-halves", layer_index=1).int().tolist()
    assert first == [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert second == [[0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]
    # M = 2 and even C: the same as the paper's disjoint halves; odd C: C // 2 first, as the reference slices
    assert torch.equal(sparsity_mask(8, 2, "alternate-halves", 3), sparsity_mask(8, 2, "disjoint"))
    assert sparsity_mask(5, 2, "alternate-halves").int().tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]]


def test_a_trained_network_penalises_what_the_reference_name_filter_picks(tiny):
    from cen_lab.network.layouts import alternate_halves
    from cen_lab.network.architectures import build_model

    cfg = tiny.override({"data.modalities": ("rgb", "depth", "edges"), "train.sparsity": "alternate-halves"})
    model = build_model(cfg.model, 3, 3, 5, "seg", cfg.train.sparsity)
    layers = [bn for _, bn in model.cen_layers()]
    # the reference meets bn_0.weight, bn_1.weight, bn_2.weight of each layer in turn
    order = [(li, m) for li in range(len(layers)) for m in range(3)]
    expected = alternate_halves(order, [tuple(bn.weight.shape) for bn in layers])
    assert [bn.penalty_mask.numpy().tolist() for bn in layers] == [e.tolist() for e in expected]


def test_the_per_output_penalty_is_exactly_m_plus_one_times_the_once_per_step_one(tiny, tmp_path):
    from cen_lab import train

    # one plain SGD step from the same weights and minibatch: the gamma updates differ only by the penalty
    base = tiny.override({"train.steps": 1, "train.optimizer": "sgd", "train.lr_schedule": "constant", "train.lr": 0.05,
                          "train.momentum": 0.0, "train.l1_rule": "subgradient",
                          "train.ckpt_every": 1, "train.lam": 0.01})
    gammas = {}
    for name, over in {"none": {"train.lam": 0.0}, "once": {}, "per_output": {"train.l1_per_output": True}}.items():
        run = train(base.override(over), tmp_path / name, progress=False)
        model = run.load_model(1)
        gammas[name] = torch.stack([bn.weight.detach() for _, bn in model.cen_layers()])
        masks = torch.stack([bn.penalty_mask for _, bn in model.cen_layers()])
        if name == "per_output":
            assert run.lam_per_step == pytest.approx(0.03) and run.lam == 0.01  # M + 1 = 3 outputs
        elif name == "once":
            assert run.lam_per_step == run.lam == 0.01
    lr = base.train.lr
    once = (gammas["none"] - gammas["once"])[masks] / lr  # lam * sign(gamma) = 0.01 (gammas start at 1)
    per_output = (gammas["none"] - gammas["per_output"])[masks] / lr
    assert torch.allclose(once, torch.full_like(once, 0.01), atol=1e-5)
    assert torch.allclose(per_output, 3 * once, atol=1e-5)
    assert torch.equal(gammas["none"][~masks], gammas["per_output"][~masks])  # unpenalised gammas untouched
