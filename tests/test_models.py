import pytest
import torch
import torch.nn.functional as F

from cen_lab.config import ModelConfig
from cen_lab.network.architectures import CENNet, ModalBatchNorm2d
from cen_lab.experiments.training import data_losses


def _net(task="seg", m=2, **kw):
    torch.manual_seed(0)
    return CENNet(m, 3, 5, task, ModelConfig(widths=(6, 6), strides=(1, 2), **kw))


def test_convolutions_shared_batchnorm_private():
    net = _net()
    assert len(net.blocks[0].conv.convs) == 1 and len(net.heads[0].convs) == 1
    bn = net.blocks[0].bn
    assert bn.weight.shape == (2, 6) and bn.running_mean.shape == (2, 6)
    x = torch.randn(2, 4, 3, 8, 8)
    x[1] = x[1] * 5 + 3  # modality 1 has other statistics
    net(x)
    assert not torch.allclose(bn.running_mean[0], bn.running_mean[1])  # statistics kept per modality
    unshared = _net(share_convs=False)
    assert len(unshared.blocks[0].conv.convs) == 2


def test_shared_conv_equals_one_kernel_on_each_modality():
    net = _net()
    x = torch.randn(2, 3, 3, 8, 8)
    y = net.blocks[0].conv(x)
    conv = net.blocks[0].conv.convs[0]
    assert torch.allclose(y[0], conv(x[0]), atol=1e-6) and torch.allclose(y[1], conv(x[1]), atol=1e-6)


def test_modal_batchnorm_matches_one_batchnorm_per_modality():
    bn = ModalBatchNorm2d(2, 3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.1, 0.0]]))
    x = torch.randn(2, 4, 3, 5, 5)
    y = bn(x)
    for m in range(2):
        ref = F.batch_norm(x[m], None, None, bn.weight[m], bn.bias[m], training=True)
        assert torch.allclose(y[m], ref, atol=1e-6)


@pytest.mark.parametrize("task, shape", [("seg", (2, 3, 5, 8, 8)), ("cls", (2, 3, 5))])
def test_output_shapes_and_ensemble(task, shape):
    net = _net(task)
    out = net(torch.randn(2, 3, 3, 8, 8))
    assert tuple(out.logits.shape) == shape and tuple(out.ensemble.shape) == shape[1:]
    w = torch.softmax(net.alpha[0], 0)
    assert torch.allclose(out.ensemble, w[0] * out.logits[0] + w[1] * out.logits[1], atol=1e-6)


def test_ensemble_loss_trains_alpha_only():
    net = _net()
    out = net(torch.randn(2, 3, 3, 8, 8))
    y = torch.randint(0, 5, (3, 8, 8))
    _, ens = data_losses(out.logits, out.ensemble, y)
    ens.backward()
    assert net.alpha.grad is not None and net.alpha.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in net.named_parameters() if n != "alpha")


def test_exchange_switches_in_forward_and_no_exchange_variant_does_not():
    x = torch.randn(2, 3, 3, 8, 8)
    outs = {}
    for mode in ("mean", "none"):
        net = _net(exchange=mode)
        with torch.no_grad():
            net.blocks[0].bn.weight[0, :3] = 0.0  # below the threshold: modality 0 takes modality 1's channels
        outs[mode] = net(x).logits
    assert not torch.allclose(outs["mean"], outs["none"])


def test_penalty_masks_follow_the_scheme():
    net = _net()
    assert net.blocks[0].bn.penalty_mask.tolist() == [[True] * 3 + [False] * 3, [False] * 3 + [True] * 3]
    net = CENNet(2, 3, 5, "seg", ModelConfig(widths=(6, 6), strides=(1, 1), exchange_blocks=(1,)), "all")
    assert not net.blocks[0].bn.penalty_mask.any() and net.blocks[1].bn.penalty_mask.all()
    assert [name for name, _ in net.cen_layers()] == ["blocks.1.bn"]
    assert net.blocks[0].exchange == "none" and net.blocks[1].exchange == "mean"
