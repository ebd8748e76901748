"""cen_lab.observe on the reference translation U-Net's layout: per-domain affine InstanceNorm children
``insnorm_0 ... insnorm_{M-1}`` of a module named ``insnorm_conv``, followed by the exchange (issue 24, first part:
observing; cen_lab's own InstanceNorm networks and the translation scenario are not built yet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cen_lab
from cen_lab.errors import ObserveError
from cen_lab.runs import find_bn_layers


class InstanceNorm2dParallel(nn.Module):
    """The reference's per-domain InstanceNorm: children ``insnorm_0 ... insnorm_{M-1}``."""

    def __init__(self, channels: int, m: int = 2, affine: bool = True):
        super().__init__()
        for i in range(m):
            setattr(self, f"insnorm_{i}", nn.InstanceNorm2d(channels, affine=affine, track_running_stats=True))
        self.m = m

    def forward(self, xs):
        return [getattr(self, f"insnorm_{i}")(x) for i, x in enumerate(xs)]


class EncoderBlock(nn.Module):
    """A shared stride-2 4x4 conv, the per-domain InstanceNorm, the exchange (M = 2), LeakyReLU."""

    def __init__(self, cin: int, cout: int, threshold: float, affine: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1)
        self.insnorm_conv = InstanceNorm2dParallel(cout, affine=affine)
        self.threshold = threshold

    def forward(self, xs):
        ys = self.insnorm_conv([self.conv(x) for x in xs])
        g = [self.insnorm_conv.insnorm_0.weight.abs(), self.insnorm_conv.insnorm_1.weight.abs()]
        keep = [(gi >= self.threshold)[None, :, None, None] for gi in g]
        out = [torch.where(keep[0], ys[0], ys[1]), torch.where(keep[1], ys[1], ys[0])]
        return [nn.functional.leaky_relu(o, 0.2) for o in out]


class TinyTranslator(nn.Module):
    def __init__(self, threshold: float = 0.5, affine: bool = True):
        super().__init__()
        self.enc = nn.ModuleList([EncoderBlock(3, 6, threshold, affine), EncoderBlock(6, 8, threshold, affine)])
        self.dec = nn.Sequential(nn.ConvTranspose2d(8, 3, 4, 4), nn.Tanh())

    def forward(self, xs):
        for block in self.enc:
            xs = block(xs)
        return [self.dec(x) for x in xs]


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(2)], torch.randn(4, 3, 8, 8, generator=g)


def test_instance_norm_children_form_a_layer():
    layers = find_bn_layers(TinyTranslator())
    assert [layer.name for layer in layers] == ["enc.0.insnorm_conv", "enc.1.insnorm_conv"]
    assert all(layer.num_branches == 2 for layer in layers)


def test_observe_reads_gammas_exchange_and_gradients_of_instance_norms(tmp_path):
    torch.manual_seed(0)
    model = TinyTranslator(threshold=0.5)
    obs = cen_lab.observe(model, tmp_path / "run", layers="*.insnorm_conv", threshold=0.5,
                          penalised="alternate-halves", modality_names=["shade", "texture"])
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    penalised = [p for n, p in model.named_parameters() if "insnorm_conv" in n and n.endswith("weight")]
    seen = {}
    for step in range(6):
        xs, target = _batch(step)
        with obs.grads(step):
            opt.zero_grad()
            loss = sum(nn.functional.l1_loss(y, target) for y in model(xs))
            loss.backward()
        expected_grad = model.enc[0].insnorm_conv.insnorm_1.weight.grad.clone()
        for k, p in enumerate(penalised):  # the reference's alternating halves, lamda 0.05
            half = slice(None, len(p) // 2) if k % 2 == 0 else slice(len(p) // 2, None)
            p.grad[half] += 0.05 * p.detach()[half].sign()
        obs.log(step, metrics={"loss/l1": loss.item()})
        seen[step] = model.enc[0].insnorm_conv.insnorm_1.weight.detach().clone()
        opt.step()
    obs.close()
    run = cen_lab.load_run(tmp_path / "run")
    g = run.gammas[(run.gammas["layer"] == "enc.0.insnorm_conv") & (run.gammas["branch"] == 1)]
    for step, weight in seen.items():
        np.testing.assert_array_equal(g[g["step"] == step].sort_values("channel")["gamma"], weight.numpy())
    # the data gradient of the last step, before the penalty was added
    d = run.grads[(run.grads["layer"] == "enc.0.insnorm_conv") & (run.grads["branch"] == 1) & (run.grads["step"] == 5)]
    np.testing.assert_allclose(d.sort_values("channel")["dgamma"], expected_grad.numpy(), rtol=1e-6)
    assert (run.grads["dxprime_norm"] > 0).all()
    # the reference's alternate halves: modality 0 the first half, modality 1 the second, per layer
    pen = run.gammas[run.gammas["step"] == 0].set_index(["layer", "branch", "channel"])["penalised"]
    assert pen.loc[("enc.0.insnorm_conv", 0)].tolist() == [True] * 3 + [False] * 3
    assert pen.loc[("enc.0.insnorm_conv", 1)].tolist() == [False] * 3 + [True] * 3
    # the exchange map follows |gamma| < threshold, and the diagnosis reads the run
    last = run.gammas[run.gammas["step"] == 5].merge(run.exchange[run.exchange["step"] == 5],
                                                     on=["step", "layer", "branch", "channel"])
    assert (last["exchanged"] == (last["gamma"].abs() < 0.5)).all()
    assert cen_lab.diagnose(run).state in cen_lab.experiments.diagnosis.STATES


def test_instance_norm_without_affine_is_refused(tmp_path):
    with pytest.raises(ObserveError, match="InstanceNorm2d has no affine gamma"):
        cen_lab.observe(TinyTranslator(affine=False), tmp_path / "run", layers="*.insnorm_conv",
                        penalised="none")
