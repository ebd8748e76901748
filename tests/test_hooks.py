import pytest
import torch

from cen_lab.config import ModelConfig
from cen_lab.network.hooks import record_bn_output_grad_norms
from cen_lab.network.architectures import CENNet


def _net():
    torch.manual_seed(0)
    return CENNet(2, 3, 4, "seg", ModelConfig(widths=(4, 4), strides=(1, 1)))


def test_hooks_record_norms_and_are_removed():
    net = _net()
    with record_bn_output_grad_norms(net.cen_layers()) as norms:
        assert all(len(bn._forward_hooks) == 1 for _, bn in net.cen_layers())
        net(torch.randn(2, 3, 3, 6, 6)).logits.sum().backward()
    assert set(norms) == {"blocks.0.bn", "blocks.1.bn"} and norms["blocks.0.bn"].shape == (2, 4)
    assert all(len(bn._forward_hooks) == 0 for _, bn in net.cen_layers())


def test_hooks_are_removed_on_error():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"):
        with record_bn_output_grad_norms(net.cen_layers()):
            raise RuntimeError("boom")
    assert all(len(bn._forward_hooks) == 0 for _, bn in net.cen_layers())


@pytest.mark.parametrize("stacked", [True, False])
def test_norms_equal_the_gradient_of_the_bn_output_either_way(stacked):
    from cen_lab.network.architectures import ModalBatchNorm2d

    torch.manual_seed(1)
    bn = ModalBatchNorm2d(2, 3)
    x = torch.randn(2, 4, 3, 5, 5)
    weight = torch.randn(2, 4, 3, 5, 5)
    with record_bn_output_grad_norms([("bn", bn)]) as norms:
        out = bn(x, stacked=stacked)
        y = out if stacked else torch.stack(out)
        (y * weight).sum().backward()
    # d(sum(y * weight))/dy = weight, so the norm per (branch, channel) is that of weight
    torch.testing.assert_close(norms["bn"], weight.pow(2).sum(dim=(1, 3, 4)).sqrt())
