"""GroupNorm and LayerNorm layouts (issue 24, item 4): observed and imported like BatchNorm ones, with the same layer
names, and every malformed layer refused with a message that says what is wrong."""

import numpy as np
import pytest
import torch
from torch import nn

import cen_lab
from cen_lab.errors import ObserveError


class Parallel(nn.Module):
    """M private norms as children ``<prefix>_0 ...`` (or an nn.ModuleList), applied one per branch."""

    def __init__(self, norms, prefix=None):
        super().__init__()
        if prefix is None:
            self.norms = nn.ModuleList(norms)
            self._names = None
        else:
            for i, n in enumerate(norms):
                setattr(self, f"{prefix}_{i}", n)
            self._names = [f"{prefix}_{i}" for i in range(len(norms))]

    def forward(self, xs):
        mods = list(self.norms) if self._names is None else [getattr(self, n) for n in self._names]
        return [m(x) for m, x in zip(mods, xs)]


class TwoNorms(nn.Module):
    """conv -> GroupNorm pair (children gn_0, gn_1) -> conv -> channel-last LayerNorm pair (an nn.ModuleList)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = Parallel([nn.GroupNorm(2, 8) for _ in range(2)], prefix="gn")
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.ln = Parallel([nn.LayerNorm(6) for _ in range(2)])

    def forward(self, xs):
        ys = self.gn([self.conv1(x) for x in xs])
        zs = [self.conv2(torch.relu(y)).permute(0, 2, 3, 1) for y in ys]  # channels last for the LayerNorm
        return [o.permute(0, 3, 1, 2) for o in self.ln(zs)]


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 6, 6, generator=g) for _ in range(2)]


def test_group_and_layer_norms_are_observed_with_their_gammas_and_gradients(tmp_path):
    torch.manual_seed(0)
    model = TwoNorms()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs = cen_lab.observe(model, tmp_path / "run", penalised="alternate-halves", threshold=0.95)
    assert obs.writer.manifest["layers"] == ["gn", "ln.norms"]  # children gn_0, gn_1; an nn.ModuleList
    xs = _batch()
    outs, saved = None, {}
    with obs.grads(0):
        outs = model(xs)
        acts = [o for o in outs]
        for a in acts:
            a.retain_grad()
        sum((o ** 2).mean() for o in outs).backward()
    obs.log(0)
    obs.close()
    run = cen_lab.load_run(tmp_path / "run")
    for layer, mods in (("gn", [model.gn.gn_0, model.gn.gn_1]), ("ln.norms", list(model.ln.norms))):
        for b, mod in enumerate(mods):
            g = run.gammas.query("layer == @layer and branch == @b").sort_values("channel")
            np.testing.assert_array_equal(g["gamma"].to_numpy(), mod.weight.detach().numpy())
            d = run.grads.query("layer == @layer and branch == @b").sort_values("channel")
            np.testing.assert_allclose(d["dgamma"].to_numpy(), mod.weight.grad.numpy(), rtol=1e-5, atol=1e-7)
    # the LayerNorm's ||dL/dx'|| is per channel of its last dimension: the output's gradient, channels last
    want = acts[1].grad.permute(0, 2, 3, 1).pow(2).sum(dim=(0, 1, 2)).sqrt().numpy()
    got = run.grads.query("layer == 'ln.norms' and branch == 1").sort_values("channel")["dxprime_norm"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ex = run.exchange.merge(run.gammas, on=["step", "layer", "branch", "channel"])
    np.testing.assert_array_equal(ex["exchanged"], ex["gamma"].abs() < 0.95)


def test_observe_and_import_name_group_and_layer_norms_alike_with_a_dataparallel_prefix(tmp_path):
    torch.manual_seed(1)
    model = TwoNorms()
    wrapped = nn.DataParallel(model)
    torch.save({"state_dict": wrapped.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    imported = cen_lab.import_checkpoints(tmp_path / "ckpt.pth", tmp_path / "imported", penalised="alternate-halves",
                                          progress=False)
    live = cen_lab.observe(wrapped, tmp_path / "live", penalised="alternate-halves")
    live.log(3)
    live.close()
    observed = cen_lab.load_run(tmp_path / "live")
    assert imported.manifest["layers"] == observed.manifest["layers"] == ["gn", "ln.norms"]
    keys = ["layer", "branch", "channel"]
    a = imported.gammas.sort_values(keys).reset_index(drop=True)
    b = observed.gammas.sort_values(keys).reset_index(drop=True)
    np.testing.assert_array_equal(a["gamma"].to_numpy(), b["gamma"].to_numpy())
    np.testing.assert_array_equal(a["penalised"].to_numpy(), b["penalised"].to_numpy())
    assert observed.manifest["model_class"].endswith("TwoNorms")  # the inner model's class, not DataParallel


@pytest.mark.parametrize("norms, match", [
    ([nn.GroupNorm(2, 8, affine=False), nn.GroupNorm(2, 8, affine=False)], r"GroupNorm has no affine gamma/beta \(affine=False\)"),
    ([nn.LayerNorm(8, elementwise_affine=False), nn.LayerNorm(8, elementwise_affine=False)], r"has no affine gamma/beta \(elementwise_affine=False\)"),
    ([nn.LayerNorm([8, 4, 4]), nn.LayerNorm([8, 4, 4])], "not one gamma per channel"),
    ([nn.BatchNorm2d(8), nn.GroupNorm(2, 8)], r"norms of different types \['BatchNorm2d', 'GroupNorm'\]"),
    ([nn.GroupNorm(2, 8), nn.GroupNorm(2, 6)], "differ in size"),
    ([nn.GroupNorm(2, 8)], "M = 1 branch"),
])
def test_malformed_norm_layers_are_refused_with_what_is_wrong(tmp_path, norms, match):
    model = nn.Module()
    model.layer = Parallel(norms, prefix="ln")
    with pytest.raises(ObserveError, match=match):
        cen_lab.observe(model, tmp_path / "run", layers="layer", penalised="none")
    assert not (tmp_path / "run" / "manifest.json").exists()


@pytest.mark.parametrize("channels", [16, 6])
def test_model_norm_group_is_groupnorm_per_branch(channels):
    from cen_lab.network.blocks import ModalBatchNorm2d, group_count

    torch.manual_seed(0)
    bn = ModalBatchNorm2d(3, channels)
    bn.norm = "group"
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    x = torch.randn(3, 4, channels, 5, 5) * 3 + 1
    ref = [nn.GroupNorm(group_count(channels), channels) for _ in range(3)]
    for m, r in enumerate(ref):
        with torch.no_grad():
            r.weight.copy_(bn.weight[m]), r.bias.copy_(bn.bias[m])
    want = torch.stack([r(x[m]) for m, r in enumerate(ref)])
    torch.testing.assert_close(bn.train()(x), want)
    torch.testing.assert_close(bn.eval()(x), want)  # no running statistics: eval is the same
    assert group_count(channels) == {16: 8, 6: 2}[channels]


def test_a_cen_with_group_norm_trains_and_exchanges(tmp_path):
    cfg = cen_lab.ExperimentConfig.preset("tiny").override({"model.norm": "group", "model.gamma_init": 0.04,
                                                            "train.lam": 0.05})
    run = cen_lab.train(cfg, tmp_path / "g", progress=False)
    assert run.complete and run.exchange["exchanged"].any()
    from cen_lab.experiments.regime import architecture
    from cen_lab.network.blocks import ModalBatchNorm2d

    norms = [m for m in run.load_model().modules() if isinstance(m, ModalBatchNorm2d)]
    assert norms and all(m.norm == "group" for m in norms)
    assert "group norm" in architecture(run.config)


def test_a_reference_lamda_on_norms_of_neither_reference_code_needs_the_code_named(tmp_path):
    with pytest.raises(ObserveError, match=r"norms \(GroupNorm, LayerNorm\) are neither the reference segmentation "
                                           r"code's BatchNorms nor its translation code's InstanceNorms; say which"):
        cen_lab.observe(TwoNorms(), tmp_path / "run", penalised="none", reference_lamda=1e-3)
    assert not (tmp_path / "run").exists()
    obs = cen_lab.observe(TwoNorms(), tmp_path / "run", penalised="none", reference_lamda=1e-3,
                          reference_code="segmentation")
    obs.close()
    assert cen_lab.load_run(tmp_path / "run").lam_per_step == pytest.approx(3e-3)
